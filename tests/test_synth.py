"""Synthetic OR problems: gold programs vs an independent reference, statement numbers, determinism,
trajectories, the committed tiny set and benchmark overlap."""

from __future__ import annotations

import ast
import filecmp
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from storm_jax.data.format import Segment, code_blocks, render, split_segments
from storm_jax.data.synth.augment import unit_convert
from storm_jax.data.synth.families import FAMILIES
from storm_jax.data.synth.generate import SynthConfig, generate, make_instance, questions
from storm_jax.data.synth.runner import LocalRunner, answers_match
from storm_jax.execution.answers import answer_from_text

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "storm_jax" / "resources" / "tiny"


@pytest.fixture(scope="module")
def runner():
    with LocalRunner() as r:
        yield r


def _check_family(runner, name: str, count: int, seed: int) -> None:
    fam = FAMILIES[name]
    for k in range(count):
        rng = random.Random(f"test/{seed}/{name}/{k}")
        size = k % (min(fam.max_size, 2) + 1)
        inst = fam.build(rng, size, fam.supports_infeasible and k % 5 == 4, f"t{k}")
        res = runner.run(inst.program)
        assert res.status == "ok", (name, res.output)
        ref = inst.form.solve_scipy()
        assert answers_match(res.answer, ref), (name, k, res.answer, ref)
        # brute force where the instance is small enough (pure integer, bounded)
        bf = inst.form.brute_force()
        if bf is not None:
            assert answers_match(res.answer, bf), (name, k, res.answer, bf)
        if hasattr(fam, "reference") and ref != "infeasible":
            assert answers_match(res.answer, fam.reference(inst.params)), (name, k)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gold_program_matches_independent_reference(runner, name):
    _check_family(runner, name, 20, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_gold_program_matches_independent_reference_200(runner, name):
    _check_family(runner, name, 200, seed=1)


def test_brute_force_is_exercised():
    """The brute-force reference really applies to the small integer families (not vacuously skipped)."""
    for name in ("knapsack", "assignment", "set_cover", "arith"):
        fam = FAMILIES[name]
        hits = 0
        for k in range(10):
            inst = fam.build(random.Random(f"bf/{name}/{k}"), 0, False, "x")
            hits += inst.form.brute_force() is not None or hasattr(fam, "reference")
        assert hits >= 5, name


_NUM = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def _program_literals(program: str) -> set[float]:
    # the solve footer's rounding/tolerance constants are not data
    body = re.split(r"^(?:result = )?pyo\.SolverFactory", program, flags=re.MULTILINE)[0]
    tree = ast.parse(body)
    return {
        float(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool)
    }


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_statement_states_every_number_of_the_model(name):
    fam = FAMILIES[name]
    for k in range(15):
        rng = random.Random(f"nums/{name}/{k}")
        p = fam.sample(rng, k % (fam.max_size + 1), False)
        if k % 3 == 0:
            p = unit_convert(fam, p, rng) or p
        inst = fam.instance(p, rng, "x", 0)
        stated = {float(x) for x in _NUM.findall(inst.question.replace(",", ""))}
        allowed = (
            {0.0, 1.0}
            | {float(f) for f in inst.unit_factors}
            | {round(1 / f) for f in inst.unit_factors if f < 1}
        )
        missing = _program_literals(inst.program) - stated - allowed
        assert not missing, (name, sorted(missing), inst.question)


def test_determinism_and_distinct_seeds(tmp_path):
    def cli(seed, out):
        cmd = [
            sys.executable,
            "-m",
            "storm_jax.cli",
            "synth",
            "--n",
            "16",
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--runner",
            "local",
            "--no-progress",
            "--recovery-frac",
            "0.5",
        ]
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)

    cli(5, tmp_path / "a")
    cli(5, tmp_path / "b")
    cli(6, tmp_path / "c")
    names = [
        "train.problems.jsonl",
        "heldout.problems.jsonl",
        "train.sft_chat.jsonl",
        "train.sft_traj.jsonl",
        "stats.json",
    ]
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(names)
    qa = {json.loads(x)["question"] for x in open(tmp_path / "a" / "train.problems.jsonl")}
    qc = {json.loads(x)["question"] for x in open(tmp_path / "c" / "train.problems.jsonl")}
    assert qa and not (qa & qc)


def test_no_duplicate_questions_small():
    qs = questions(SynthConfig(seed=11), range(600))
    assert len(set(qs)) == len(qs)


@pytest.mark.slow
def test_no_duplicate_questions_10000():
    qs = questions(SynthConfig(seed=12), range(10_000))
    assert len(set(qs)) == len(qs)


def test_trajectories_are_real_and_round_trip(runner):
    cfg = SynthConfig(
        n=30, seed=3, recovery_frac=0.6, thinking_frac=0.4, heldout_frac=0.0, infeasible_frac=0.3
    )
    out = generate(cfg, runner)
    assert out.stats["verified"] + sum(out.stats["dropped"].values()) == cfg.n
    styles = {t["meta"]["style"] for t in out.sft_traj}
    assert {"plain", "thinking"} <= {s.split("+")[0] for s in styles} and any("recovery" in s for s in styles)
    problems = {p["id"]: p for p in out.train_problems}
    for chat, traj in zip(out.sft_chat, out.sft_traj):
        segs = [Segment.from_json(s) for s in traj["segments"]]
        text = render(segs)
        assert chat["messages"][-1]["content"] == text and chat["messages"][:-1] == traj["messages"]
        assert [s.to_json() for s in split_segments(text)] == [s.to_json() for s in segs if s.kind != "hint"]
        # every code block's recorded output is what running it really prints
        codes = code_blocks(segs)
        outs = [s.text for s in segs if s.kind == "output"]
        assert len(codes) == len(outs)
        for code, shown in zip(codes, outs):
            assert runner.run(code).output.rstrip("\n") in shown
        if "recovery" in traj["meta"]["style"]:
            assert "Traceback" in outs[0] and "Traceback" not in outs[-1]
        if traj["meta"]["style"].startswith("thinking"):
            assert text.startswith("<think>\n") and "</think>" in text
        boxed = answer_from_text(text)
        gold = problems[traj["id"]]
        if gold["answer"] is None:
            assert gold["answer_status"] == "infeasible" and boxed == "infeasible"
        else:
            assert answers_match(boxed, gold["answer"])


def test_unit_conversion_is_re_solved(runner):
    fam = FAMILIES["transportation"]
    for k in range(4):
        rng = random.Random(f"unit/{k}")
        p = fam.sample(rng, 1, False)
        base = runner.run(fam.instance(p, rng, "b", 1).program).answer
        q = unit_convert(fam, p, rng)
        conv = fam.instance(q, rng, "c", 1, augmentation="unit")
        got = runner.run(conv.program).answer
        assert answers_match(got, base * q["answer_unit"]["factor"])
        assert q["answer_unit"]["ask"] in conv.question


def test_infeasible_share_is_labelled(runner):
    cfg = SynthConfig(
        families=("production", "transportation", "lot_sizing"),
        n=12,
        seed=4,
        infeasible_frac=0.5,
        heldout_frac=0.0,
        augment_frac=0.0,
    )
    out = generate(cfg, runner)
    statuses = [p.get("answer_status") for p in out.train_problems]
    assert 2 <= statuses.count("infeasible") <= 10
    for p in out.train_problems:
        assert (p["answer"] is None) == (p.get("answer_status") == "infeasible")


def test_make_instance_varies_by_index_not_order():
    cfg = SynthConfig(seed=9)
    assert make_instance(cfg, 7).question == make_instance(cfg, 7).question
    assert make_instance(cfg, 7).question != make_instance(cfg, 7 + len(cfg.families)).question


# ---------------------------------------------------------------------------------------------------------
# committed tiny set
# ---------------------------------------------------------------------------------------------------------


def test_tiny_set_is_small_and_well_formed():
    files = [p for p in TINY.rglob("*") if p.is_file()]
    # arith + mixed ~1.4 MB; cart (the main job's 894 trajectories and its tokenizer) ~1.4 MB
    assert sum(p.stat().st_size for p in files) < 3_500_000
    readme = (TINY / "README.md").read_text()
    for sub in ("arith", "mixed", "cart"):
        assert f"--out storm_jax/resources/tiny/{sub}" in readme
        rows = [json.loads(x) for x in open(TINY / sub / "train.sft_traj.jsonl")]
        held = [json.loads(x) for x in open(TINY / sub / "heldout.problems.jsonl")]
        assert len(rows) >= 60 and len(held) >= 10
        train_q = {json.loads(x)["question"] for x in open(TINY / sub / "train.problems.jsonl")}
        assert not train_q & {h["question"] for h in held}
    arith = [json.loads(x) for x in open(TINY / "arith" / "train.sft_chat.jsonl")]
    plain = [r["messages"][-1]["content"] for r in arith if "Traceback" not in r["messages"][-1]["content"]]
    # ~4 characters per token: the plain arith trajectories stay well under ~200 tokens
    assert max(len(t) for t in plain) < 800


@pytest.mark.slow
def test_tiny_set_regenerates_byte_for_byte(tmp_path):
    readme = (TINY / "README.md").read_text()
    cmds = re.findall(r"^(storm-jax synth .*)$", readme, re.MULTILINE)
    assert len(cmds) == 3
    for cmd in cmds:
        args = cmd.split()[2:]
        sub = args[args.index("--out") + 1].rsplit("/", 1)[1]
        args[args.index("--out") + 1] = str(tmp_path / sub)
        subprocess.run(
            [sys.executable, "-m", "storm_jax.cli", "synth", *args, "--no-progress"],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        # every bundled file (the cart bundle leaves out train.sft_chat.jsonl, which its recipe does not read)
        names = sorted(str(p.relative_to(TINY / sub)) for p in (TINY / sub).rglob("*") if p.is_file())
        _, mismatch, errors = filecmp.cmpfiles(TINY / sub, tmp_path / sub, names, shallow=False)
        assert mismatch == [] and errors == [], (sub, mismatch, errors)


# ---------------------------------------------------------------------------------------------------------
# benchmark overlap
# ---------------------------------------------------------------------------------------------------------


def _bench_dir() -> Path:
    return Path(os.environ.get("STORM_DATA_DIR", ROOT.parent / "shared" / "benchmarks"))


@pytest.mark.skipif(not _bench_dir().is_dir(), reason="benchmark directory not available")
def test_no_long_ngram_shared_with_benchmarks():
    from storm_jax.data.synth.overlap import benchmark_questions, ngram_set, words

    bench10 = ngram_set(benchmark_questions(str(_bench_dir())), 10)
    qs = questions(SynthConfig(seed=21), range(150))
    for q in qs:
        w = words(q)
        assert not any(tuple(w[i : i + 10]) in bench10 for i in range(len(w) - 9)), q
