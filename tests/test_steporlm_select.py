"""Best-of-N through `storm-jax score --select`: a simulated weak policy on synthetic problems (real pool), the
programmatic critic standing in for the GenPRM beats pass@1; selectors on a hand-made table."""

import json
import sys
from pathlib import Path

import pytest

from storm_jax.eval.scoring import SampleResult
from storm_jax.eval.select import best_of_n, pick

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _r(pid, i, correct, answer, status="ok", src="execution"):
    return SampleResult(pid, i, "synth.arith", answer, src, correct, None if correct else "wrong_objective",
                        status, 0, 1, 0.0)  # fmt: skip


def test_selectors_on_a_table():
    rs = [_r("p", 0, False, 1.0, status="error", src=None), _r("p", 1, False, 2.0), _r("p", 2, True, 3.0),
          _r("p", 3, True, 3.0)]  # fmt: skip
    assert pick("first", rs).sample_index == 0
    assert pick("majority", rs).sample_index == 2  # 3.0 twice
    assert pick("solver", rs).sample_index == 1  # first that ran and printed an objective
    assert pick("genprm", rs, {0: 1.0, 1: 0.5, 2: None, 3: 0.75}).sample_index == 0
    assert pick("genprm", rs, {0: None, 1: 0.5, 2: None, 3: 0.5}).sample_index == 1  # tie -> earliest
    rep = best_of_n(rs, {("p", 0): 0.2, ("p", 1): 0.3, ("p", 2): None, ("p", 3): 0.9}, ["first", "genprm"])
    assert rep["synth.arith"] == {"problems": 1, "samples_per_problem": {"min": 4, "max": 4}, "pass@1": 0.5,
                                  "first": 0.0, "genprm": 1.0}  # fmt: skip


def test_critic_best_of_4_beats_pass_at_1_on_a_weak_policy(tmp_path, capsys):
    import steporlm_best_of_n as bon

    assert bon.main(["--out", str(tmp_path), "--limit", "16", "--n", "4", "--p-flaw", "0.6"]) == 0
    rep = json.loads((tmp_path / "critic" / "select.json").read_text())["datasets"]["synth.arith"]
    print(rep)
    assert rep["problems"] == 16
    assert rep["critic"] > rep["pass@1"] + 0.2, rep
    assert rep["critic"] >= rep["majority"] and rep["critic"] >= rep["solver"], rep
    assert "best-of-N (critic)" in capsys.readouterr().out


def test_select_genprm_needs_a_checkpoint(tmp_path, capsys):
    import steporlm_best_of_n as bon

    from storm_jax.eval.score import main

    comp = tmp_path / "c.jsonl"
    bon.write_completions(str(bon.RES / "train.problems.jsonl"), str(bon.RES / "train.sft_traj.jsonl"), str(comp),
                          2, 0.5, 0, 1)  # fmt: skip
    args = ["--completions", str(comp), "--benchmark", str(bon.RES / "train.problems.jsonl"), "--out",
            str(tmp_path / "o"), "--answer-from", "execution", "--no-progress", "--select", "genprm"]  # fmt: skip
    assert main(args) == 2
    assert "--select genprm needs --genprm DIR" in capsys.readouterr().err
    assert main([*args, "--genprm", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["x.jsonl"])
def test_unknown_benchmark_file_is_one_line(tmp_path, capsys, bad):
    from storm_jax.eval.score import main

    comp = tmp_path / "c.jsonl"
    comp.write_text('{"id": "a", "completion": "x"}\n')
    assert main(["--completions", str(comp), "--benchmark", bad, "--out", str(tmp_path / "o")]) == 2
