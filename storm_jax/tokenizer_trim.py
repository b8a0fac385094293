"""The Qwen3 tokenizer trimmed to the tokens a corpus uses: the vocabulary of the tiny CPU default.

Why: a ~10M-parameter model over the full 151,936-row vocabulary spends ~98 % of a training step in the
vocabulary projection and its softmax, and at that cost a CPU default never trains long enough for the
model to learn to copy numbers from the question (docs/design.md, "The tiny default's vocabulary"). Trimmed
to the few hundred tokens the bundled family uses, the same model takes ~20x less time per step.

What is kept:
- every token the full tokenizer produces on the corpus (given as full-tokenizer id sequences),
- every single-byte token, so any text still encodes (an unseen word falls back to smaller pieces),
- the merges that build the kept tokens, in their original rank order: BPE then applies, on any corpus text,
  exactly the merges the full tokenizer applies, so the corpus tokenizes into the same token strings,
- every added token (chat template markers, `<think>`, tool tokens), so the chat template is unchanged.

Ids are dense: the kept BPE tokens in their Qwen3 order, then the added tokens in theirs. Normalizer,
pre-tokenizer and decoder are the full tokenizer's. The result is an ordinary `PreTrainedTokenizerFast`
that `storm_jax.tokenizer.save_tokenizer` writes and `load_tokenizer(dir)` reads back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any


def _merge_pairs(merges: list) -> list[tuple[str, str]]:
    # tokenizers writes merges as "a b" strings (older files) or [a, b] pairs (newer ones)
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in merges]


def trim_tokenizer(tok: Any, id_seqs: Iterable[Sequence[int]]) -> Any:
    """A tokenizer over the tokens of `id_seqs` (ids of `tok`), all single bytes and all added tokens."""
    from tokenizers import Tokenizer

    from storm_jax.tokenizer import wrap_backend

    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"trim_tokenizer needs a BPE tokenizer, got {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    added = sorted(spec.get("added_tokens", []), key=lambda t: t["id"])
    added_ids = {t["id"] for t in added}
    id_to_str = {i: s for s, i in vocab.items()}

    keep = {s for s in vocab if len(s) == 1}  # the byte-level alphabet: 256 one-character strings
    for seq in id_seqs:
        for i in seq:
            i = int(i)
            if i in added_ids:
                continue
            if i not in id_to_str:
                raise ValueError(f"token id {i} is not in the tokenizer's vocabulary")
            keep.add(id_to_str[i])
    pairs = _merge_pairs(model["merges"])
    made_by: dict[str, list[tuple[str, str]]] = {}
    for a, b in pairs:
        made_by.setdefault(a + b, []).append((a, b))
    stack = list(keep)
    while stack:  # the parts of every merge that builds a kept token are kept too
        for a, b in made_by.get(stack.pop(), ()):
            for part in (a, b):
                if part not in keep:
                    keep.add(part)
                    stack.append(part)
    kept = sorted(keep, key=vocab.__getitem__)
    new_vocab = {s: i for i, s in enumerate(kept)}
    model["vocab"] = new_vocab
    new_merges = [(a, b) for a, b in pairs if a in keep and b in keep and a + b in keep]
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)  # keep the file's own format
    model["merges"] = [f"{a} {b}" for a, b in new_merges] if as_strings else [[a, b] for a, b in new_merges]
    for k, t in enumerate(added):
        t["id"] = len(kept) + k
    spec["added_tokens"] = added
    backend = Tokenizer.from_str(json.dumps(spec))
    return wrap_backend(backend)


def corpus_ids(tok: Any, sft_paths: Sequence[str], problem_paths: Sequence[str], *, system_prompt: str = "",
               enable_thinking: bool = False) -> list[list[int]]:  # fmt: skip
    """Full-tokenizer ids of a corpus as training and rollouts see it: SFT rows rendered as the trainer
    renders them, and each problem's prompt (chat template, generation prompt) as GRPO and scoring encode it."""
    from storm_jax import verify
    from storm_jax.data.benchmarks import read_rows as read_problems
    from storm_jax.data.sft import read_rows, tokenize_row
    from storm_jax.tokenizer import encode_prompt

    out: list[list[int]] = []
    for path in sft_paths:
        for row in read_rows(path)[0]:
            out.append(tokenize_row(row, tok, enable_thinking=enable_thinking).ids)
    for path in problem_paths:
        for p in read_problems(path):
            msgs = verify.problem_messages(p.question, system_prompt)
            out.append(encode_prompt(tok, msgs, enable_thinking=enable_thinking))
    return out
