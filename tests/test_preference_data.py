"""Preference rows: TRL text rows through the chat template, token rows kept exactly, pair batches, errors."""

import json
import math

import numpy as np
import pytest

from storm_jax.data.format import split_segments
from storm_jax.data.preference import (
    PreferenceDataConfig,
    eval_batches,
    load_pairs,
    make_pair_dataset,
    make_preference_iterator,
    pairs_from_rows,
    write_token_rows,
)
from storm_jax.tokenizer import IM_END, encode_assistant_segments, encode_prompt, load_tokenizer

RESPONSE = "Model it.\n```python\nprint(4)\n```\n```output\n4\n```\nSo \\boxed{4}"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def expected_side(tok, prompt_msgs, response):
    """Independent path: generation prompt + the response's segments (what a rollout produces)."""
    p = encode_prompt(tok, prompt_msgs)
    ids, mask = encode_assistant_segments(tok, split_segments(response), close_turn=True)
    return p + ids, [0] * len(p) + mask


def test_text_row_tokens_and_masks(tok):
    row = {"prompt": "What is 2 + 2?", "chosen": RESPONSE, "rejected": [{"role": "assistant", "content": "\\boxed{5}"}],
           "weight": 0.25}  # fmt: skip
    (pair,), stats = pairs_from_rows([row], tok)
    user = [{"role": "user", "content": "What is 2 + 2?"}]
    for ex, text in ((pair.chosen, RESPONSE), (pair.rejected, "\\boxed{5}")):
        ids, mask = expected_side(tok, user, text)
        assert ex.ids.tolist() == ids
        assert ex.mask.tolist() == mask
    assert pair.weight == 0.25 and stats.pairs == 1
    # The output block is context: its tokens carry no loss, the text around it does; im_end is trained.
    trained = tok.decode(pair.chosen.ids[pair.chosen.mask == 1].tolist())
    assert "```output" not in trained and "print(4)" in trained and trained.endswith("<|im_end|>")
    assert pair.chosen.ids[-1] == IM_END


def test_multi_turn_prompt_assistant_turns_are_context(tok):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
              {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]  # fmt: skip
    (pair,), _ = pairs_from_rows([{"prompt": prompt, "chosen": "4", "rejected": "5"}], tok)
    ids, mask = expected_side(tok, prompt, "4")
    assert pair.chosen.ids.tolist() == ids and pair.chosen.mask.tolist() == mask
    assert tok.decode(pair.chosen.ids[pair.chosen.mask == 1].tolist()) == "4<|im_end|>"
    assert pair.weight == 1.0  # default


def token_row(i, prompt_len=4, c_len=6, r_len=5, weight=1.0, **extra):
    """Ids encode the row index so batches can be traced back to their pair."""
    base = 1000 * (i + 1)
    row = {
        "prompt_ids": [base + k for k in range(prompt_len)],
        "chosen_ids": [base + 100 + k for k in range(c_len)],
        "chosen_mask": [1, 1, 0, 0, 1, 1][:c_len] + [1] * max(0, c_len - 6),
        "rejected_ids": [base + 200 + k for k in range(r_len)],
        "rejected_mask": [1] * r_len,
        "weight": weight,
    }
    row.update(extra)
    return row


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_token_rows_kept_exactly_and_features(tmp_path):
    row = token_row(0, weight=0.7)
    (pair,), _ = load_pairs(write_jsonl(tmp_path / "t.jsonl", [row]))
    assert pair.chosen.ids.tolist() == row["prompt_ids"] + row["chosen_ids"]
    assert pair.chosen.mask.tolist() == [0] * 4 + row["chosen_mask"]
    assert pair.rejected.ids.tolist() == row["prompt_ids"] + row["rejected_ids"]
    assert pair.source.endswith("t.jsonl:1")
    batch, n = next(eval_batches([pair], seq_len=12, batch_pairs=2))
    assert n == 1 and batch["tokens"].shape == (2, 2, 12) and batch["weight"].shape == (2,)
    ids = row["prompt_ids"] + row["chosen_ids"]
    m = [0] * 4 + row["chosen_mask"]
    # Next-token features: tokens = ids[:-1], targets = ids[1:], loss_mask = mask of the TARGET.
    assert batch["tokens"][0, 0, :9].tolist() == ids[:-1]
    assert batch["targets"][0, 0, :9].tolist() == ids[1:]
    assert batch["loss_mask"][0, 0, :9].tolist() == m[1:]
    assert batch["segment_ids"][0, 0].tolist() == [1] * 9 + [0] * 3
    assert batch["positions"][0, 0, :9].tolist() == list(range(9))
    assert batch["tokens"][0, 1, :8].tolist() == (row["prompt_ids"] + row["rejected_ids"])[:-1]
    np.testing.assert_allclose(batch["weight"], [0.7, 0.0])  # second pair is padding
    assert batch["loss_mask"][1].sum() == 0 and batch["segment_ids"][1].sum() == 0


def test_batches_keep_pairs_together_every_epoch_and_resume(tmp_path):
    rows = [token_row(i, c_len=6 + i % 3, r_len=4 + i % 2, weight=0.1 * (i + 1)) for i in range(10)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = PreferenceDataConfig(path=path, seq_len=16, batch_size=4, seed=3, num_epochs=2)
    it = make_preference_iterator(cfg, process_index=0, process_count=1)
    seen = []
    for batch in it:
        assert batch["tokens"].shape == (4, 2, 16)
        for p in range(4):
            c, r = batch["tokens"][p, 0, 0], batch["tokens"][p, 1, 0]
            assert c == r  # same prompt: the pair's two rows come from one row
            i = c // 1000 - 1
            assert batch["targets"][p, 0, 3] == 1000 * (i + 1) + 100  # chosen response of that row
            assert batch["targets"][p, 1, 3] == 1000 * (i + 1) + 200  # rejected response of that row
            # the row's float64 weight, stored once as float32 (JSON round trip is exact): equal, not close
            assert batch["weight"][p] == np.float32(0.1 * (i + 1))
            seen.append(int(i))
    # 2 epochs of 10 pairs, batches of 4 with the remainder dropped: 5 batches; no pair twice per epoch.
    assert len(seen) == 20
    assert len(set(seen[:10])) == 10
    # Resume: the state after 2 batches gives exactly the batches that followed.
    it = make_preference_iterator(cfg, process_index=0, process_count=1)
    next(it), next(it)
    state = it.get_state()
    json.dumps(state)
    after = [next(it) for _ in range(2)]
    it2 = make_preference_iterator(cfg, process_index=0, process_count=1)
    it2.set_state(state)
    for a in after:
        b = next(it2)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_process_shards_are_disjoint(tmp_path):
    rows = [token_row(i) for i in range(6)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    got = [load_pairs(path, process_index=i, process_count=2)[0] for i in (0, 1)]
    firsts = [{int(p.chosen.ids[0]) for p in g} for g in got]
    assert firsts[0] == {1000, 3000, 5000} and firsts[1] == {2000, 4000, 6000}
    # A global batch of 2 pairs is 1 pair per process.
    cfg = PreferenceDataConfig(path=path, seq_len=16, batch_size=2, shuffle=False, num_epochs=1)
    b = next(make_preference_iterator(cfg, process_index=1, process_count=2))
    assert b["tokens"].shape == (1, 2, 16) and b["tokens"][0, 0, 0] == 2000


def test_overlong_drop_and_truncate_counts(tmp_path):
    rows = [
        token_row(0),  # 4 + 6 = 10 ids: fits seq_len 9 (10 <= 9 + 1)
        token_row(1, c_len=12),  # chosen 16 ids: too long
        token_row(2, r_len=12),  # rejected too long
        token_row(3, prompt_len=11, c_len=2, r_len=2),  # the prompt alone fills the window
    ]
    path = write_jsonl(tmp_path / "o.jsonl", rows)
    pairs, st = load_pairs(path, seq_len=9, overlong="drop")
    assert [int(p.chosen.ids[0]) for p in pairs] == [1000]
    assert (st.dropped_overlong, st.truncated, st.dropped_no_loss, st.pairs) == (3, 0, 0, 1)
    pairs, st = load_pairs(path, seq_len=9, overlong="truncate")
    assert (st.dropped_overlong, st.truncated, st.dropped_no_loss, st.pairs) == (0, 3, 1, 3)
    by_row = {int(p.chosen.ids[0]) // 1000 - 1: p for p in pairs}
    assert set(by_row) == {0, 1, 2}
    # Truncation keeps the first seq_len + 1 ids of the too-long side only; the other side is untouched.
    assert by_row[1].chosen.ids.tolist() == (rows[1]["prompt_ids"] + rows[1]["chosen_ids"])[:10]
    assert by_row[1].rejected.ids.tolist() == rows[1]["prompt_ids"] + rows[1]["rejected_ids"]
    assert by_row[1].truncated and not by_row[0].truncated
    assert len(by_row[2].rejected) == 10
    # Every kept pair fits the batch layout.
    for b, _ in eval_batches(pairs, seq_len=9, batch_pairs=3):
        assert b["tokens"].shape == (3, 2, 9)


BAD = [
    ({"weight": -0.5}, "weight", "must be >= 0"),
    ({"weight": float("nan")}, "weight", "must be finite"),  # json writes NaN, Python's json reads it back
    ({"weight": float("inf")}, "weight", "must be finite"),
    ({"weight": "1"}, "weight", "must be a number"),
    ({"chosen_mask": [1, 1]}, "chosen_mask", "has 2 entries for 6 ids"),
    ({"rejected_mask": [1, 2, 1, 1, 1]}, "rejected_mask", "flags must be 0 or 1"),
    ({"chosen_ids": [1, -3, 2]}, "chosen_ids", "is not a token id"),
    ({"prompt_ids": []}, "prompt_ids", "non-empty"),
    ({"ref_chosen_logp": -3.0}, "ref_rejected_logp", "both"),
    ({"extra": 1}, "extra", "unknown field"),
    ({"prompt": "hi"}, "prompt_ids", "not both"),
]


@pytest.mark.parametrize("change,field,message", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_token_row_names_file_line_and_field(tmp_path, change, field, message):
    row = token_row(1)
    row.update(change)
    path = write_jsonl(tmp_path / "bad.jsonl", [token_row(0), "", row])  # the bad row is on line 3
    with pytest.raises(ValueError) as e:
        load_pairs(path)
    assert str(e.value).startswith(f"{path}:3: {field}: ")
    assert message in str(e.value)


def test_bad_text_rows_and_skip_mode(tmp_path, tok):
    rows = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        '{"prompt": "q", "chosen": ',  # invalid JSON
        {"prompt": "q", "chosen": "a"},  # missing rejected
        {
            "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
            "chosen": "a",
            "rejected": "b",
        },  # fmt: skip
        {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "b", "weight": True},
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    expect = [
        (2, "row", "invalid JSON"),
        (3, "rejected", "missing"),
        (4, "prompt", "end with a user turn"),
        (5, "chosen", "[0].role = 'user'"),
        (6, "weight", "must be a number"),
    ]
    with pytest.raises(ValueError) as e:
        load_pairs(path, tok)
    assert str(e.value).startswith(f"{path}:2: row: invalid JSON")
    pairs, st = load_pairs(path, tok, on_bad_row="skip")
    assert len(pairs) == 1 and st.bad_rows == 5 and st.rows_read == 6
    for msg, (line, field, what) in zip(st.bad_row_messages, expect):
        assert msg.startswith(f"{path}:{line}: {field}: ") and what in msg, msg
    with pytest.raises(TypeError, match="need a tokenizer"):
        load_pairs(path, None, on_bad_row="skip")


def test_nan_weight_from_json_text(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", ['{"prompt_ids": [1], "chosen_ids": [2], "chosen_mask": [1], '
                                              '"rejected_ids": [3], "rejected_mask": [1], "weight": NaN}'])  # fmt: skip
    with pytest.raises(ValueError, match=r"n\.jsonl:1: weight: must be finite, got nan"):
        load_pairs(path)


def test_write_token_rows_round_trip_with_reference(tmp_path, tok):
    rows = [{"prompt": "q", "chosen": RESPONSE, "rejected": "\\boxed{5}", "weight": 0.3},
            {"prompt": "r", "chosen": "<think>mine</think>\n\\boxed{1}", "rejected": "\\boxed{2}"}]  # fmt: skip
    pairs, _ = pairs_from_rows(rows, tok)
    import dataclasses

    pairs = [
        dataclasses.replace(p, ref_chosen_logp=-1.5 - i, ref_rejected_logp=-7.25) for i, p in enumerate(pairs)
    ]
    # The second chosen opens its own think block: its prompt has no think prefix, so the two sides'
    # prompts differ and the shared prompt_ids written below is shorter than either prompt.
    first_trained = [int(np.argmax(ex.mask)) for ex in (pairs[1].chosen, pairs[1].rejected)]
    assert first_trained[0] < first_trained[1]
    out = tmp_path / "tok.jsonl"
    write_token_rows(out, pairs)
    back, _ = load_pairs(str(out))
    for a, b in zip(pairs, back):
        assert (
            a.chosen.ids.tolist() == b.chosen.ids.tolist()
            and a.chosen.mask.tolist() == b.chosen.mask.tolist()
        )
        assert a.rejected.ids.tolist() == b.rejected.ids.tolist()
        assert a.rejected.mask.tolist() == b.rejected.mask.tolist()
        assert (a.weight, a.ref_chosen_logp, a.ref_rejected_logp) == (
            b.weight,
            b.ref_chosen_logp,
            b.ref_rejected_logp,
        )
    batch = next(iter(make_pair_dataset(back, seq_len=128, batch_pairs=2, shuffle=False, num_epochs=1)))
    np.testing.assert_allclose(batch["ref_logps"], [[-1.5, -7.25], [-2.5, -7.25]])
    # Mixed presence of reference log-probs is refused, not silently batched.
    with pytest.raises(ValueError, match="some pairs carry reference"):
        make_pair_dataset([back[0], dataclasses.replace(back[1], ref_chosen_logp=None, ref_rejected_logp=None)],
                          seq_len=128, batch_pairs=2)  # fmt: skip
    assert math.isclose(back[0].weight, 0.3)
