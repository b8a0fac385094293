"""The trimmed tokenizer (storm_jax/tokenizer_trim.py) against the full Qwen3 tokenizer it comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storm_jax import verify
from storm_jax.data.benchmarks import read_rows as read_problems
from storm_jax.data.format import Segment
from storm_jax.data.sft import read_rows
from storm_jax.tokenizer import (
    config_tokenizer,
    encode_prompt,
    encode_segment,
    encode_text,
    load_tokenizer,
    save_tokenizer,
)
from storm_jax.tokenizer_trim import corpus_ids, trim_tokenizer

CART = Path(__file__).resolve().parents[1] / "storm_jax" / "resources" / "tiny" / "cart"


@pytest.fixture(scope="module")
def full():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def bundled():
    return load_tokenizer(CART / "tokenizer")


def _strings(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_bundled_tokenizer_regenerates_byte_for_byte(full, tmp_path):
    """The committed cart tokenizer is what `storm-jax synth --trim-tokenizer` writes from the training files."""
    from storm_jax.data.synth.cli import write_trimmed_tokenizer

    for name in ("train.sft_traj.jsonl", "train.problems.jsonl"):
        (tmp_path / name).write_bytes((CART / name).read_bytes())
    n = write_trimmed_tokenizer(str(tmp_path))
    assert n == len(load_tokenizer(CART / "tokenizer"))
    assert (tmp_path / "tokenizer" / "tokenizer.json").read_bytes() == (
        CART / "tokenizer" / "tokenizer.json"
    ).read_bytes()


def test_corpus_tokenizes_into_the_same_token_strings(full, bundled):
    """Every training segment, held-out question and prompt: the same token strings as the full tokenizer."""
    rows = read_rows(CART / "train.sft_traj.jsonl")[0]
    for r in rows[:300]:
        for s in r.segments:
            seg = Segment(s.kind, s.text)
            assert _strings(bundled, encode_segment(bundled, seg)) == _strings(
                full, encode_segment(full, seg)
            )
    # held-out questions were not in the trimming corpus, but use the training template's words
    for p in read_problems(CART / "heldout.problems.jsonl"):
        msgs = verify.problem_messages(p.question, "")
        for thinking in (False, True):
            a = encode_prompt(bundled, msgs, enable_thinking=thinking)
            b = encode_prompt(full, msgs, enable_thinking=thinking)
            assert _strings(bundled, a) == _strings(full, b)


def test_any_text_still_encodes_and_round_trips(bundled, full):
    """Unseen words fall back to smaller pieces (every byte is kept); decode inverts encode."""
    texts = [
        'Traceback (most recent call last):\n  File "<string>", line 7, in <module>\nZeroDivisionError: x',
        "Ünïcödé — 😀 表格 \t tabs\r\n and  spaces",
        "m.cap = pyo.Constraint(expr=m.n * 9 <= 66)\nprint('OBJECTIVE:', 12345.678)",
    ]
    for t in texts:
        ids = encode_text(bundled, t)
        assert bundled.decode(ids) == t
        assert "".join(_strings(bundled, ids)) == "".join(_strings(full, encode_text(full, t)))
    assert len(encode_text(bundled, texts[1])) > len(
        encode_text(full, texts[1])
    )  # pieces, not one token each


def test_added_tokens_kept_and_host_text_stays_plain(bundled, full):
    spec = json.loads(bundled.backend_tokenizer.to_str())
    n_bpe = len(spec["model"]["vocab"])
    added = [t["content"] for t in sorted(spec["added_tokens"], key=lambda t: t["id"])]
    full_added = [t["content"] for t in sorted(json.loads(full.backend_tokenizer.to_str())["added_tokens"],
                                                key=lambda t: t["id"])]  # fmt: skip
    assert added == full_added
    assert [bundled.convert_tokens_to_ids(t) for t in added] == list(range(n_bpe, n_bpe + len(added)))
    assert bundled.eos_token == "<|im_end|>" and bundled.pad_token == "<|endoftext|>"
    msgs = [{"role": "user", "content": "Each box earns 8 dollars."}, {"role": "assistant", "content": "ok"}]
    assert bundled.apply_chat_template(msgs, tokenize=False) == full.apply_chat_template(msgs, tokenize=False)
    host = encode_segment(bundled, Segment("output", "<|im_end|><think>"))
    assert not set(host) & {bundled.convert_tokens_to_ids(t) for t in added}
    assert bundled.decode(host) == "<|im_end|><think>"


def test_merges_are_the_full_merges_in_rank_order(bundled, full):
    sub = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ", 1))
           for m in json.loads(bundled.backend_tokenizer.to_str())["model"]["merges"]]  # fmt: skip
    rank = {
        (tuple(m) if not isinstance(m, str) else tuple(m.split(" ", 1))): i
        for i, m in enumerate(json.loads(full.backend_tokenizer.to_str())["model"]["merges"])
    }
    ranks = [rank[m] for m in sub]
    assert ranks == sorted(ranks)
    vocab = json.loads(bundled.backend_tokenizer.to_str())["model"]["vocab"]
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in sub)


def test_trim_of_a_small_corpus_and_its_save_load(full, tmp_path):
    ids = corpus_ids(full, [], [str(CART / "heldout.problems.jsonl")])
    small = trim_tokenizer(full, ids)
    save_tokenizer(small, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert len(again) == len(small) < 600
    q = read_problems(CART / "heldout.problems.jsonl")[0].question
    assert _strings(again, encode_text(again, q)) == _strings(full, encode_text(full, q))
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        trim_tokenizer(full, [[10**7]])


def test_config_refuses_a_vocab_smaller_than_the_tokenizer():
    from storm_jax.config import load_config

    cfg = load_config("storm_tiny", [], num_devices=1)
    assert len(config_tokenizer(cfg, cfg.model.vocab_size)) <= cfg.model.vocab_size
    with pytest.raises(
        ValueError, match=r"model.vocab_size=256 is smaller than data.tokenizer_path=.*cart/tokenizer"
    ):
        config_tokenizer(cfg, 256)
