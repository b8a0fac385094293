"""SFT data pipeline: row parsing, loss masks, packing, truncation, bad rows, determinism, resume, sharding.

References are computed independently of the code under test: masks are checked by decoding each run of
equal mask values and comparing it with the texts the row was built from (and the whole document with the
tokenizer's own Jinja chat template); packed rows are checked against the documents' raw ids with numpy.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections import Counter

import numpy as np
import pytest

from storm_jax.data.format import Segment
from storm_jax.data.packing import packing_efficiency
from storm_jax.data.pipeline import SFTDataConfig, make_sft_dataset, make_sft_iterator
from storm_jax.data.sft import (
    SFTRow,
    example_features,
    fit_length,
    load_rows,
    parse_row,
    read_rows,
    tokenize_row,
)
from storm_jax.tokenizer import IM_END, IM_START, load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _runs(tok, ids, mask):
    """[(mask value, decoded text)] of the maximal runs of equal mask values."""
    out = []
    start = 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or mask[t] != mask[start]:
            out.append((int(mask[start]), tok.decode(list(ids[start:t]), skip_special_tokens=False)))
            start = t
    return out


def _traj_row(i: int, rng: np.random.Generator) -> dict:
    words = " ".join(f"w{int(x)}" for x in rng.integers(0, 1000, size=int(rng.integers(2, 30))))
    return {
        "id": f"p{i}",
        "messages": [{"role": "user", "content": f"Problem {i}: minimize {words}."}],
        "segments": [
            {"kind": "text", "text": f"Plan {i}. "},
            {"kind": "code", "text": f"```python\nprint({i} * 2)\n```"},
            {"kind": "output", "text": f"\n```output\n{2 * i}\n```\n"},
            {"kind": "text", "text": f"</think>\n\n\\boxed{{{2 * i}}}"},
        ],
        "answer": 2 * i,
    }


def _chat_row(i: int, rng: np.random.Generator) -> dict:
    reply = " ".join(f"r{int(x)}" for x in rng.integers(0, 1000, size=int(rng.integers(1, 25))))
    return {
        "messages": [
            {"role": "system", "content": "You are an optimization expert."},
            {"role": "user", "content": f"Question {i}?"},
            {"role": "assistant", "content": f"Answer {i}: {reply}"},
        ]
    }


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def fixture_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = [_traj_row(i, rng) if i % 2 else _chat_row(i, rng) for i in range(40)]
    return _write(tmp_path_factory.mktemp("sft") / "rows.jsonl", rows)


# ----------------------------------------------------------------------------------------------------------
# Masks


def test_trajectory_row_masks(tok):
    messages = [
        {"role": "system", "content": "Solve with code."},
        {"role": "user", "content": "Maximize 3x + 2y s.t. x + y <= 4."},
    ]
    segs = [
        ("text", "Let me model it. "),
        ("code", "```python\nprint(12)\n```"),
        ("output", "\n```output\n12\n```\n"),
        ("hint", "Hint: check the bound on y. "),
        ("text", "</think>\n\nThe optimum is \\boxed{12}."),
    ]
    row = parse_row({"messages": messages, "segments": [{"kind": k, "text": t} for k, t in segs]}, "x:1")
    ex = tokenize_row(row, tok, enable_thinking=True)
    prompt_text = tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert prompt_text.endswith("<|im_start|>assistant\n<think>\n")
    assert _runs(tok, ex.ids, ex.mask) == [
        (0, prompt_text),  # prompt masked
        (1, segs[0][1] + segs[1][1]),  # text + code trained
        (0, segs[2][1] + segs[3][1]),  # output + hint masked
        (1, segs[4][1] + "<|im_end|>"),  # final text and the end of turn trained
    ]
    assert ex.ids[-1] == IM_END and ex.mask[-1] == 1
    # Loss weight of position t is the flag of its TARGET token t + 1.
    f = example_features(ex)
    np.testing.assert_array_equal(f["tokens"], ex.ids[:-1])
    np.testing.assert_array_equal(f["targets"], ex.ids[1:])
    np.testing.assert_array_equal(f["loss_mask"], ex.mask[1:].astype(np.float32))
    assert f["targets"][-1] == IM_END and f["loss_mask"][-1] == 1.0
    assert (
        f["loss_mask"][len(tok.encode(prompt_text, add_special_tokens=False)) - 2] == 0.0
    )  # predicts prompt
    assert (
        f["loss_mask"][len(tok.encode(prompt_text, add_special_tokens=False)) - 1] == 1.0
    )  # predicts 1st answer token


def test_chat_row_masks(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And with code?"},
        {"role": "assistant", "content": "Sure.```python\nprint(2+2)\n```\n```output\n4\n```\nIt is 4."},
    ]
    ex = tokenize_row(parse_row({"messages": messages}, "x:1"), tok, enable_thinking=True)
    full = tok.apply_chat_template(messages, tokenize=False, enable_thinking=True)
    assert tok.decode(list(ex.ids), skip_special_tokens=False) == full
    turn1_prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    between = tok.apply_chat_template(messages[:4], tokenize=False, add_generation_prompt=True)[
        len(tok.apply_chat_template(messages[:3], tokenize=False)) - 1 :
    ]
    assert _runs(tok, ex.ids, ex.mask) == [
        (0, turn1_prompt),
        (1, "Four.<|im_end|>"),
        (0, between),  # "\n" after <|im_end|>, the user turn, the next generation prompt
        (1, "Sure.```python\nprint(2+2)\n```"),
        (0, "\n```output\n4\n```\n"),
        (1, "It is 4.<|im_end|>"),
        (0, "\n"),
    ]


# ----------------------------------------------------------------------------------------------------------
# Packing against an independent per-document reference


def _check_rows_against_docs(batches, docs: list[tuple[np.ndarray, np.ndarray]], seq_len: int) -> Counter:
    """Check every packed row against the raw documents; returns how often each document was seen."""
    by_ids = {tuple(int(x) for x in ids): (ids, mask) for ids, mask in docs}
    seen: Counter = Counter()
    for b in batches:
        assert set(b) == {"tokens", "targets", "loss_mask", "segment_ids", "positions"}
        for row in range(b["tokens"].shape[0]):
            tokens, targets, lm = b["tokens"][row], b["targets"][row], b["loss_mask"][row]
            seg, pos = b["segment_ids"][row], b["positions"][row]
            assert tokens.shape == (seq_len,) and tokens.dtype == np.int32 and lm.dtype == np.float32
            pad = seg == 0
            assert (
                not tokens[pad].any() and not targets[pad].any() and not lm[pad].any() and not pos[pad].any()
            )
            ids_in_row = [s for s in np.unique(seg) if s != 0]
            assert ids_in_row == list(range(1, len(ids_in_row) + 1))
            for s in ids_in_row:
                where = np.flatnonzero(seg == s)
                assert np.array_equal(where, np.arange(where[0], where[0] + len(where)))  # contiguous
                np.testing.assert_array_equal(pos[where], np.arange(len(where)))  # positions restart at 0
                doc = tuple(int(x) for x in tokens[where]) + (int(targets[where[-1]]),)
                assert doc in by_ids, "packed segment is not a document"
                ids, mask = by_ids[doc]
                # Reference: position t of a document predicts id t + 1 with the flag of that id.
                np.testing.assert_array_equal(targets[where], ids[1:])
                np.testing.assert_array_equal(lm[where], mask[1:].astype(np.float32))
                seen[doc] += 1
            # Within a document the target is the next input; no loss ever predicts another document's
            # first token (every document starts with <|im_start|>, which no trained target is).
            same = (seg[:-1] == seg[1:]) & (seg[:-1] != 0)
            np.testing.assert_array_equal(targets[:-1][same], tokens[1:][same])
            assert not ((targets == IM_START) & (lm > 0)).any()
    return seen


def test_packing_rows_match_documents(tok, fixture_file):
    seq_len = 192
    cfg = SFTDataConfig(
        path=fixture_file, seq_len=seq_len, batch_size=1, seed=3, num_epochs=1, num_packing_bins=4
    )
    ds, stats = make_sft_dataset(cfg, tok, process_index=0, process_count=1)
    batches = list(ds)
    rows, _ = read_rows(fixture_file)
    docs = [(ex.ids, ex.mask) for ex in (tokenize_row(r, tok) for r in rows)]
    assert all(len(ids) <= seq_len + 1 for ids, _ in docs)  # nothing truncated in this test
    seen = _check_rows_against_docs(batches, docs, seq_len)
    # One epoch, batch 1: every document exactly once.
    assert sorted(seen.values()) == [1] * len(docs) and len(seen) == len(docs)
    n_tokens = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    assert n_tokens == stats.tokens == sum(len(ids) - 1 for ids, _ in docs)
    assert stats.loss_tokens == sum(int(b["loss_mask"].sum()) for b in batches)
    eff = n_tokens / (len(batches) * seq_len)
    assert packing_efficiency({"segment_ids": np.concatenate([b["segment_ids"] for b in batches])}) == eff
    # Several documents share rows: packing beats one document per row on this data.
    assert len(batches) < len(docs) and eff > 0.6


def test_unpacked_rows_and_epochs(tok, fixture_file):
    seq_len = 192
    cfg = SFTDataConfig(path=fixture_file, seq_len=seq_len, batch_size=2, seed=0, pack=False, num_epochs=2)
    batches = list(make_sft_iterator(cfg, tok, process_index=0, process_count=1))
    rows, _ = read_rows(fixture_file)
    docs = [(ex.ids, ex.mask) for ex in (tokenize_row(r, tok) for r in rows)]
    seen = _check_rows_against_docs(batches, docs, seq_len)
    assert all(int(b["segment_ids"].max(axis=1).min()) == 1 for b in batches)  # one document per row
    assert len(batches) == len(docs) and set(seen.values()) == {2}  # 2 epochs x 40 docs / 2 per batch
    first = [tuple(b["tokens"][r][:8]) for b in batches[:20] for r in range(2)]
    second = [tuple(b["tokens"][r][:8]) for b in batches[20:] for r in range(2)]
    assert first != second  # each epoch is shuffled anew


# ----------------------------------------------------------------------------------------------------------
# Over-long rows


def test_truncate_and_drop_counts(tok, tmp_path):
    rng = np.random.default_rng(1)
    rows = [_traj_row(i, rng) for i in range(12)]
    rows.append(
        {
            "messages": [{"role": "user", "content": "long " * 300}],
            "segments": [{"kind": "text", "text": "x"}],
        }
    )
    path = _write(tmp_path / "long.jsonl", rows)
    full = [tokenize_row(r, tok) for r in read_rows(path)[0]]
    lengths = np.array([len(ex) for ex in full])
    seq_len = int(np.median(lengths[:-1]))
    over = lengths - 1 > seq_len
    # A truncated document keeps a loss token only if its first seq_len + 1 ids include a trained one
    # after the first.
    keeps_loss = np.array([ex.mask[1 : seq_len + 1].any() for ex in full])
    assert over[-1] and not keeps_loss[-1]  # the long prompt leaves nothing to train on
    assert 2 <= over[:-1].sum() <= 10

    exs, st = load_rows(path, tok, seq_len=seq_len, overlong="truncate")
    assert st.truncated == over.sum() and st.dropped_overlong == 0
    assert st.dropped_no_loss == (over & ~keeps_loss).sum() == 1
    assert st.examples == len(exs) == len(full) - 1
    for ex, ref in zip(exs, [f for f, k in zip(full, keeps_loss | ~over) if k], strict=True):
        assert len(ex) == min(len(ref), seq_len + 1) and ex.truncated == (len(ref) > seq_len + 1)
        np.testing.assert_array_equal(ex.ids, ref.ids[: seq_len + 1])
        np.testing.assert_array_equal(ex.mask, ref.mask[: seq_len + 1])

    exs, st = load_rows(path, tok, seq_len=seq_len, overlong="drop")
    assert st.dropped_overlong == over.sum() and st.truncated == 0 and st.dropped_no_loss == 0
    assert [e.source for e in exs] == [f.source for f, o in zip(full, over, strict=True) if not o]
    assert fit_length(full[0], len(full[0]) - 1, "drop") is full[0]  # n ids fit seq_len n - 1
    assert fit_length(full[0], len(full[0]) - 2, "drop") is None

    # The pipeline yields rows of exactly seq_len either way.
    cfg = SFTDataConfig(path=path, seq_len=seq_len, batch_size=2, num_epochs=1)
    for b in make_sft_iterator(cfg, tok, process_index=0, process_count=1):
        assert b["tokens"].shape == (2, seq_len)


# ----------------------------------------------------------------------------------------------------------
# Bad rows


def test_bad_rows_raise_with_file_and_line(tmp_path):
    rng = np.random.default_rng(2)
    lines = [
        json.dumps(_chat_row(0, rng)),  # 1 ok
        '{"messages": [',  # 2 invalid JSON
        "",  # 3 blank: ignored
        json.dumps({"segments": [{"kind": "text", "text": "a"}]}),  # 4 no messages
        json.dumps(
            {"messages": [{"role": "user", "content": "q"}], "segments": [{"kind": "thought", "text": "a"}]}
        ),
        json.dumps(
            {"messages": [{"role": "tool", "content": "q"}, {"role": "assistant", "content": "a"}]}
        ),  # 6
        json.dumps({"messages": [{"role": "user", "content": "q"}]}),  # 7 nothing to train on
        json.dumps(
            {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]}
        ),  # 8
        json.dumps(_traj_row(1, rng)),  # 9 ok
    ]
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}:2: invalid JSON"):
        read_rows(path)
    expected = {
        2: "invalid JSON",
        4: "'messages' must be a non-empty list",
        5: r"segments\[0\]: unknown segment kind 'thought'",
        6: r"messages\[0\]\.role = 'tool'",
        7: "chat row has no assistant message",
        8: r"messages\[0\]\.content must be a string",
    }
    for lineno, what in expected.items():  # each bad line alone raises with its own location
        only = _write(tmp_path / f"only{lineno}.jsonl", [lines[0]] * (lineno - 1) + [lines[lineno - 1]])
        with pytest.raises(ValueError, match=rf"^{re.escape(only)}:{lineno}: {what}"):
            read_rows(only)
    rows, st = read_rows(path, on_bad_row="skip")
    assert [r.source for r in rows] == [f"{path}:1", f"{path}:9"]
    assert st.rows_read == 8 and st.bad_rows == 6
    assert [m.split(": ", 1)[0] for m in st.bad_row_messages] == [f"{path}:{n}" for n in expected]
    assert rows[1].segments[1] == Segment("code", "```python\nprint(1 * 2)\n```")


def test_pipeline_skip_mode_and_missing_file(tok, tmp_path):
    rng = np.random.default_rng(3)
    path = _write(tmp_path / "mixed.jsonl", [_chat_row(0, rng), "not json", _traj_row(1, rng)])
    cfg = SFTDataConfig(path=path, seq_len=256, batch_size=1, num_epochs=1, on_bad_row="skip")
    ds, st = make_sft_dataset(cfg, tok, process_index=0, process_count=1)
    assert st.bad_rows == 1 and st.examples == 2 and st.bad_row_messages[0].startswith(f"{path}:2: ")
    assert sum(int(b["segment_ids"].max()) for b in ds) == 2
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}:2: invalid JSON"):
        make_sft_iterator(
            SFTDataConfig(path=path, seq_len=256, batch_size=1), tok, process_index=0, process_count=1
        )
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_rows(str(tmp_path / "nothing-here*.jsonl"))


# ----------------------------------------------------------------------------------------------------------
# Determinism, resume, sharding


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def test_determinism_for_a_seed(tok, fixture_file):
    cfg = SFTDataConfig(path=fixture_file, seq_len=128, batch_size=4, seed=7)
    a = _take(make_sft_iterator(cfg, tok, process_index=0, process_count=1), 12)
    b = _take(make_sft_iterator(cfg, tok, process_index=0, process_count=1), 12)
    c = _take(make_sft_iterator(dataclasses.replace(cfg, seed=8), tok, process_index=0, process_count=1), 12)
    assert _same(a, b) and not _same(a, c)
    plain = SFTDataConfig(
        path=fixture_file, seq_len=128, batch_size=4, shuffle=False, num_epochs=1, pack=False
    )
    first = next(make_sft_iterator(plain, tok, process_index=0, process_count=1))
    rows, _ = read_rows(fixture_file)
    np.testing.assert_array_equal(first["tokens"][0][:5], tokenize_row(rows[0], tok).ids[:5])  # file order


@pytest.mark.parametrize("pack", [True, False])
def test_state_restore_continues_identically(tok, fixture_file, pack):
    cfg = SFTDataConfig(path=fixture_file, seq_len=128, batch_size=2, seed=5, pack=pack, num_packing_bins=8)
    for k in (0, 1, 3, 14):  # 8 bins, 2 rows a batch: states inside a pack pass and across epochs
        it = make_sft_iterator(cfg, tok, process_index=0, process_count=1)
        _take(it, k)
        state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
        expected = _take(it, 10)
        resumed = make_sft_iterator(cfg, tok, process_index=0, process_count=1)
        resumed.set_state(state)
        assert _same(_take(resumed, 10), expected), f"resume after {k} batches differs"


def test_process_sharding_disjoint_and_complete(tok, fixture_file):
    rows, _ = read_rows(fixture_file)
    shards = [load_rows(fixture_file, tok, process_index=p, process_count=3)[0] for p in range(3)]
    sources = [[e.source for e in s] for s in shards]
    assert sorted(sum(sources, [])) == sorted(r.source for r in rows)  # complete
    assert all(not set(sources[p]) & set(sources[q]) for p in range(3) for q in range(p + 1, 3))  # disjoint
    assert [len(s) for s in sources] == [14, 13, 13]

    cfg = SFTDataConfig(path=fixture_file, seq_len=192, batch_size=3, pack=False, num_epochs=1)
    seen = []
    for p in range(3):
        batches = list(make_sft_iterator(cfg, tok, process_index=p, process_count=3))
        assert all(b["tokens"].shape == (1, 192) for b in batches)  # local batch = 3 // 3
        seen.append({tuple(b["tokens"][0][b["segment_ids"][0] > 0]) for b in batches})
    all_docs = {tuple(tokenize_row(r, tok).ids[:-1]) for r in rows}
    assert set().union(*seen) == all_docs and sum(len(s) for s in seen) == len(all_docs)
    # Without an explicit layout the pipeline asks JAX (one process in tests).
    default = _take(make_sft_iterator(dataclasses.replace(cfg, batch_size=1), tok), 3)
    assert _same(
        default,
        _take(
            make_sft_iterator(dataclasses.replace(cfg, batch_size=1), tok, process_index=0, process_count=1),
            3,
        ),
    )
    with pytest.raises(ValueError, match="not divisible"):
        make_sft_iterator(
            SFTDataConfig(path=fixture_file, seq_len=192, batch_size=4), tok, process_index=0, process_count=3
        )


def test_state_in_orbax_checkpoint(tok, fixture_file, tmp_path):
    """The trainer stores the iterator with grain's Orbax handler; restoring gives the same continuation."""
    import grain
    import orbax.checkpoint as ocp

    cfg = SFTDataConfig(path=fixture_file, seq_len=128, batch_size=2, seed=11)
    it = make_sft_iterator(cfg, tok, process_index=0, process_count=1)
    _take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = _take(it, 4)
        resumed = make_sft_iterator(cfg, tok, process_index=0, process_count=1)
        mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    assert _same(_take(resumed, 4), expected)


def test_sft_data_command_reports_packing(fixture_file, capsys, tmp_path):
    from storm_jax.data.pipeline import main

    assert main([fixture_file, "--seq-len", "192", "--batch-size", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_read"] == report["examples"] == 40 and report["bad_rows"] == 0
    # Batch 1: every packed row is emitted, so the efficiency is all positions over all rows.
    assert report["rows"] == report["batches"] and report["loss_tokens_in_batches"] == report["loss_tokens"]
    assert report["packing_efficiency"] == pytest.approx(report["tokens"] / (report["rows"] * 192))
    bad = _write(tmp_path / "bad.jsonl", ["{"])
    assert main([bad, "--seq-len", "64"]) == 2  # a usage error, as in every command
    assert f"{bad}:1: invalid JSON" in capsys.readouterr().err


def _assert_chat_traj_parity(tok, chat: SFTRow, traj: SFTRow, enable_thinking: bool) -> None:
    a = tokenize_row(chat, tok, enable_thinking=enable_thinking)
    b = tokenize_row(traj, tok, enable_thinking=enable_thinking)
    # The chat template adds "\n" (mask 0) after the last <|im_end|>; a trajectory response stops at it.
    assert tok.decode([int(a.ids[-1])]) == "\n" and a.mask[-1] == 0
    np.testing.assert_array_equal(a.ids[:-1], b.ids)
    np.testing.assert_array_equal(a.mask[:-1], b.mask)


@pytest.mark.parametrize("enable_thinking", [True, False])
@pytest.mark.parametrize(
    "first", ["<think>\nReason. ", "<think>\n\n</think>\n\nDirect. ", "<think>Odd block. ", "Plain. "]
)
def test_trajectory_and_chat_rows_agree(tok, enable_thinking, first):
    """One conversation as a chat row and as a trajectory row gives the same ids and mask, think prefix
    included (a prefix equal to the generation prompt's belongs to the prompt, another think block is the
    model's)."""
    messages = [{"role": "user", "content": "Min x s.t. x >= 3."}]
    segs = [
        Segment("text", first),
        Segment("code", "```python\nprint(3)\n```"),
        Segment("output", "\n```output\n3\n```\n"),
    ]
    segs.append(Segment("text", "\\boxed{3}"))
    chat = parse_row(
        {"messages": [*messages, {"role": "assistant", "content": "".join(s.text for s in segs)}]}
    )
    traj = parse_row({"messages": messages, "segments": [s.to_json() for s in segs]})
    _assert_chat_traj_parity(tok, chat, traj, enable_thinking)
    ex = tokenize_row(traj, tok, enable_thinking=enable_thinking)
    text = tok.decode(list(ex.ids), skip_special_tokens=False)
    assert text.count("<think>") == 1  # never a doubled think prefix


_TINY = pathlib.Path(__file__).resolve().parents[1] / "storm_jax" / "resources" / "tiny" / "mixed"


@pytest.mark.skipif(not (_TINY / "train.sft_traj.jsonl").is_file(), reason="tiny synthetic set not present")
def test_tiny_synthetic_rows_chat_and_trajectory_agree(tok):
    chat, _ = read_rows(_TINY / "train.sft_chat.jsonl")
    traj, _ = read_rows(_TINY / "train.sft_traj.jsonl")
    assert len(chat) == len(traj) > 0
    for c, t in zip(chat, traj, strict=True):
        _assert_chat_traj_parity(tok, c, t, True)
