"""The StepORLM pair rule against a hand-written table (both correct, both wrong, mixed, ties, caps)."""

import pytest

from storm_jax.steporlm.pairs import Pair, Sample, build_pairs

S = [
    # problem a: mixed outcomes + process scores
    Sample("a", 0, True, 0.5),
    Sample("a", 1, False, 0.9),
    Sample("a", 2, True, 1.0),
    Sample("a", 3, False, 0.9),  # ties sample 1
    # problem b: all wrong, one unscored
    Sample("b", 0, False, 0.2),
    Sample("b", 1, False, 0.6),
    Sample("b", 2, False, None),
]

# Hand-written: every (i < j) pair of each problem and what the rule says.
TABLE_WEIGHTED = [
    Pair("a", 0, 1, 1.0, "outcome"),
    Pair("a", 0, 3, 1.0, "outcome"),
    Pair("a", 2, 1, 1.0, "outcome"),
    Pair("a", 2, 3, 1.0, "outcome"),
    Pair("a", 2, 0, 0.5, "both_correct"),  # 1.0 vs 0.5
    # (a1, a3): both wrong, 0.9 vs 0.9 -> tie, skipped
    Pair("b", 1, 0, 0.4, "both_wrong"),  # 0.6 vs 0.2
    # (b0, b2), (b1, b2): b2 unscored -> skipped
]


def test_weighted_rule_matches_the_table():
    pairs, st = build_pairs(S)
    assert [(p.problem_id, p.chosen, p.rejected, p.kind) for p in pairs] == [
        (p.problem_id, p.chosen, p.rejected, p.kind) for p in TABLE_WEIGHTED
    ]
    assert [p.weight for p in pairs] == pytest.approx([p.weight for p in TABLE_WEIGHTED])
    assert st["by_kind"] == {"outcome": 4, "both_correct": 1, "both_wrong": 1}
    assert st["skipped"] == {"tie": 1, "unscored": 2, "outcome_only": 0, "capped": 0}
    assert st["weight_hist"] == {"<=0.1": 0, "<=0.25": 0, "<=0.5": 2, "<=0.75": 0, "<=1": 4}
    assert st["pairs"] == 6 and st["problems_with_pairs"] == 2


def test_plain_dpo_sets_every_weight_to_one():
    pairs, _ = build_pairs(S, mode="plain")
    assert [(p.chosen, p.rejected) for p in pairs] == [(p.chosen, p.rejected) for p in TABLE_WEIGHTED]
    assert all(p.weight == 1.0 for p in pairs)


def test_outcome_only_drops_process_pairs():
    pairs, st = build_pairs(S, mode="outcome_only")
    assert [p.kind for p in pairs] == ["outcome"] * 4
    assert st["skipped"]["outcome_only"] == 5  # a: (0,2), (1,3); b: three pairs


def test_cap_keeps_outcome_pairs_then_heaviest():
    pairs, st = build_pairs(S, max_pairs_per_problem=2)
    assert [(p.problem_id, p.chosen, p.rejected) for p in pairs] == [("a", 0, 1), ("a", 0, 3), ("b", 1, 0)]
    assert st["skipped"]["capped"] == 3
    s2 = [Sample("c", i, False, x) for i, x in enumerate([0.1, 0.9, 0.5])]
    pairs, _ = build_pairs(s2, max_pairs_per_problem=1)
    assert [(p.chosen, p.rejected, p.weight) for p in pairs] == [(1, 0, pytest.approx(0.8))]


def test_min_delta_ties_and_dict_samples():
    rows = [
        {"problem_id": "d", "sample_index": 0, "correct": True, "score": 0.5},
        {"problem_id": "d", "sample_index": 1, "correct": True, "score": 0.55},
    ]
    assert build_pairs(rows, min_delta=0.1)[0] == []
    assert build_pairs(rows)[0][0].chosen == 1
    with pytest.raises(ValueError, match="mode must be one of"):
        build_pairs(rows, mode="bogus")


@pytest.mark.parametrize(
    "override,key",
    [("evolve.layout=bogus", "evolve.layout"), ("evolve.samples_per_problem=1", "evolve.samples_per_problem"),
     ("evolve.pair_mode=x", "evolve.pair_mode"), ("evolve.max_len=100", "evolve.max_len")],
)  # fmt: skip
def test_evolve_config_errors_are_one_line(override, key, capsys):
    from storm_jax.steporlm.evolve_cli import main

    assert main(["--config=steporlm_evolve:tiny", f"--config.{override}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("storm-jax evolve: config error: ") and f": {key}: " in err and "\n" not in err, err
