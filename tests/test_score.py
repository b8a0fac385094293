"""`storm-jax score`: metrics against independent formulas, failure breakdown, resumability after SIGKILL."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from storm_jax.data import benchmarks as bm
from storm_jax.eval import score as sc
from storm_jax.execution.answers import answer_from_output

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get(bm.ENV_VAR) or REPO.parent / "shared" / "benchmarks")
needs_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"benchmark data not found at {DATA_DIR} (set {bm.ENV_VAR})"
)


# A tiny stand-in for storm_jax.execution.pool (same result fields), used until/unless the pool is present.
@dataclasses.dataclass
class LocalResult:
    status: str
    stdout: str
    stderr: str
    answer: object
    duration_s: float
    returncode: int | None


class LocalExecutor:
    def __init__(self, workers: int = 2, timeout_s: float = 2.0):
        self.timeout_s = timeout_s
        self._tp = concurrent.futures.ThreadPoolExecutor(workers)
        self.calls = 0

    def _run(self, code: str) -> LocalResult:
        t = time.perf_counter()
        try:
            p = subprocess.run(
                [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=self.timeout_s
            )
        except subprocess.TimeoutExpired:
            return LocalResult("timeout", "", "", None, time.perf_counter() - t, None)
        ans = answer_from_output(p.stdout) if p.returncode == 0 else None
        status = "error" if p.returncode != 0 else ("ok" if ans is not None else "no_answer")
        return LocalResult(status, p.stdout, p.stderr, ans, time.perf_counter() - t, p.returncode)

    def map(self, codes):
        self.calls += len(codes)
        return list(self._tp.map(self._run, codes))

    def close(self):
        self._tp.shutdown()


def test_pass_at_k_matches_combinatorial_definition():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # brute force: fraction of k-subsets that contain at least one correct sample
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(i < c for i in s) for s in subsets) / len(subsets)
                assert sc.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
                assert sc.pass_at_k(n, c, k) == pytest.approx(
                    1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12
                )
    with pytest.raises(ValueError):
        sc.pass_at_k(4, 5, 1)


def _res(idx, answer, correct):
    return sc.SampleResult("p", idx, "d", answer, "boxed", correct, None, None, None, 0, 0.0)


def test_majority_vote():
    rs = [
        _res(0, 5.0, False),
        _res(1, 7.0, True),
        _res(2, 7.0000001, True),
        _res(3, None, False),
        _res(4, 5.0, False),
    ]
    # 5.0 and 7.0 both appear twice (7.0000001 == 7.0 at 6 significant digits): tie -> earliest sample (5.0)
    assert sc.majority_answer(rs).answer == 5.0
    assert sc.majority_answer(rs + [_res(5, 7.0, True)]).answer == 7.0
    assert sc.majority_answer([_res(0, None, False)]) is None
    assert sc.majority_answer(
        [_res(0, "infeasible", True), _res(1, 3.0, False), _res(2, "infeasible", True)]
    ).correct


def test_read_completions_errors_and_default_index(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(
        '{"id": "a", "completion": "x"}\n{"id": "a", "completion": "y"}\n{"id": "b", "completion": "z", "sample_index": 3}\n'
    )
    assert [(c.id, c.sample_index) for c in sc.read_completions(f)] == [("a", 0), ("a", 1), ("b", 3)]
    f.write_text('{"id": "a", "completion": "x"}\n{"id": "a"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl:2: key 'completion' must be a string"):
        sc.read_completions(f)
    f.write_text(
        '{"id": "a", "completion": "x", "sample_index": 0}\n{"id": "a", "completion": "x", "sample_index": 0}\n'
    )
    with pytest.raises(ValueError, match=r"c.jsonl:2: duplicate"):
        sc.read_completions(f)


def _code(body: str) -> str:
    return f"```python\n{body}\n```"


@needs_data
def test_score_samples_modes_and_failures():
    rows = bm.load_dataset("nl4opt.sirl", DATA_DIR)
    row = rows[0]  # answer 1160
    infeasible_row = next(r for r in rows if r.answer_status == "infeasible")
    ex = LocalExecutor()
    cases = [
        # (row, completion, mode, expected answer, correct, failure)
        (row, r"... \boxed{1,160}", "boxed", 1160.0, True, None),
        (row, r"\boxed{1160.5}", "boxed", 1160.5, False, "wrong_objective"),
        (row, r"no box", "boxed", None, False, "parse_failure"),
        (row, _code("print('OBJECTIVE: 1160.0')"), "boxed", None, False, "parse_failure"),
        (row, _code("print('OBJECTIVE: 1160.0')"), "execution", 1160.0, True, None),
        (row, "no code here", "execution", None, False, "no_code"),
        (row, _code("raise ValueError('boom')"), "execution", None, False, "code_error"),
        (row, _code("x = 1  # OBJECTIVE: 1160"), "execution", None, False, "parse_failure"),
        (row, _code("while True: pass"), "execution", None, False, "timeout"),
        (row, _code("print('Model is infeasible')"), "execution", "infeasible", False, "infeasible_answer"),
        # last block crashes: the answer is that of the last block that ran
        (row, _code("print('OBJECTIVE: 1160')") + "\n" + _code("1/0"), "execution", 1160.0, True, None),
        # auto: a box wins over code; no box -> code
        (row, _code("print('OBJECTIVE: 5')") + r" \boxed{1160}", "auto", 1160.0, True, None),
        (row, _code("print('OBJECTIVE: 1160')") + " the end", "auto", 1160.0, True, None),
        (infeasible_row, r"\boxed{\text{infeasible}}", "boxed", "infeasible", True, None),
        (infeasible_row, r"\boxed{0}", "boxed", 0.0, False, "wrong_objective"),
    ]
    try:
        for i, (r, text, mode, answer, correct, failure) in enumerate(cases):
            ex1 = LocalExecutor(timeout_s=1.0) if "while" in text else ex
            (res,) = sc.score_samples([(r, sc.Completion(r.id, text, i))], "strict", mode, ex1)
            assert (res.answer, res.correct, res.failure) == (answer, correct, failure), (i, res)
    finally:
        ex.close()


def _make_completions(rows: list[bm.BenchmarkRow], per_problem: int, code_every: int, seed: int = 0):
    """Deterministic synthetic completions and the number of correct ones we built (independent count)."""
    rng = np.random.default_rng(seed)
    comps, n_correct, kinds = [], 0, []
    k = 0
    for row in rows:
        truth = row.answer
        for s in range(per_problem):
            k += 1
            if k % code_every == 0:
                kind = ["code_ok", "code_wrong", "code_err"][rng.integers(0, 3)]
                val = truth if kind == "code_ok" else (truth or 0.0) * 1.01 + 7.0
                body = "raise RuntimeError('x')" if kind == "code_err" else f"print('OBJECTIVE: {val!r}')"
                if truth is None and kind == "code_ok":
                    body = "print('OBJECTIVE: infeasible')"
                text = "Let me model it.\n" + _code(body) + "\nDone."
            else:
                kind = ["box_ok", "box_wrong", "none"][rng.integers(0, 3)]
                if kind == "box_ok":
                    shown = "\\text{infeasible}" if truth is None else f"{truth:,}"
                    text = f"<think>\\boxed{{-1}}</think>The optimum is \\boxed{{{shown}}}."
                elif kind == "box_wrong":
                    text = f"\\boxed{{{(truth or 0.0) * 1.5 + 1}}}"
                else:
                    text = "I could not solve it."
            n_correct += kind in ("box_ok", "code_ok") and row.answer_status != "unknown"
            kinds.append(kind)
            comps.append({"id": row.id, "completion": text, "sample_index": s})
    return comps, n_correct, kinds


def _write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@needs_data
def test_score_completions_summary_and_outputs(tmp_path):
    rows = bm.load_dataset("nl4opt.sirl", DATA_DIR)[:40]
    comps, n_correct, kinds = _make_completions(rows, per_problem=4, code_every=5)
    f = tmp_path / "c.jsonl"
    _write_jsonl(f, comps + [{"id": "not-a-row", "completion": "x"}])
    ex = LocalExecutor()
    try:
        s = sc.score_completions(
            f, "nl4opt.sirl", "strict", "auto", tmp_path / "out", DATA_DIR, executor=ex, progress=False
        )
    finally:
        ex.close()
    e = s["datasets"]["nl4opt.sirl"]
    assert e["n_samples"] == 160 and e["n_scored_problems"] == 40 and s["n_ignored_completions"] == 1
    assert e["pass@1"] == pytest.approx(n_correct / 160)
    assert e["failures"]["code_error"] == kinds.count("code_err")
    # auto mode: no box and no code block -> "no_code"
    assert e["failures"]["no_code"] == kinds.count("none") and e["failures"]["parse_failure"] == 0
    assert e["failures"]["wrong_objective"] == kinds.count("box_wrong") + kinds.count("code_wrong")
    assert e["n_executed"] == sum(k.startswith("code") for k in kinds)
    assert e["exec_error_rate"] == pytest.approx(kinds.count("code_err") / e["n_executed"])
    # pass@k from the per-sample file equals the unbiased formula computed here
    lines = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 160
    by = {}
    for r in lines:
        by.setdefault(r["id"], []).append(r["correct"])
    p4 = np.mean([1.0 if any(v) else 0.0 for v in by.values()])  # with k = n = 4, pass@4 = any correct
    assert e["pass@k"]["4"] == pytest.approx(p4)
    assert e["pass@k"]["1"] == pytest.approx(e["pass@1"])
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| nl4opt.sirl | 40/245 | 4 |" in md and "Partial coverage" in md
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == s
    # another protocol into the same directory is refused
    with pytest.raises(ValueError, match="other settings"):
        sc.score_completions(
            f, "nl4opt.sirl", "orlm", "auto", tmp_path / "out", DATA_DIR, executor=ex, progress=False
        )


def test_load_results_tolerates_torn_line_and_dedupes(tmp_path):
    p = tmp_path / "samples.jsonl"
    r = sc.SampleResult("a", 0, "d", 1.0, "boxed", True, None, None, None, 0, 0.1)
    r2 = dataclasses.replace(r, sample_index=1)
    good = json.dumps(r.to_json()) + "\n" + json.dumps(r2.to_json()) + "\n" + json.dumps(r.to_json()) + "\n"
    p.write_text(good + '{"id": "a", "sample_ind')
    loaded = sc.load_results(p)
    assert [(x.id, x.sample_index) for x in loaded] == [("a", 0), ("a", 1)]
    assert p.read_text() == good  # torn tail cut off so the next append starts on a fresh line


_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
from test_score import LocalExecutor
from storm_jax.eval.score import score_completions
ex = LocalExecutor()
score_completions({comp!r}, {bench!r}, "strict", "auto", {out!r}, {data!r}, executor=ex, batch_size={bs}, progress=False)
ex.close()
"""


def _run_kill_resume(
    tmp_path: Path, n_problems: int, per_problem: int, code_every: int, bs: int, use_cli: bool
):
    nl, ind = bm.load_dataset("nl4opt.sirl", DATA_DIR), bm.load_dataset("industryor.sirl_fixedv2", DATA_DIR)
    rows = nl[: n_problems * 4 // 5] + ind[: n_problems - n_problems * 4 // 5]
    comps, n_correct, _ = _make_completions(rows, per_problem, code_every)
    f = tmp_path / "c.jsonl"
    _write_jsonl(f, comps)
    bench = "nl4opt.sirl,industryor.sirl_fixedv2"
    total = len(comps)

    def runner(out):
        if use_cli:  # the real command line and execution pool
            return [sys.executable, "-m", "storm_jax.eval.score", "--completions", str(f), "--benchmark", bench,
                    "--protocol", "strict", "--answer-from", "auto", "--out", str(out), "--data-dir", str(DATA_DIR),
                    "--batch-size", str(bs), "--workers", "2", "--no-progress"]  # fmt: skip
        code = _RUNNER.format(
            tests=str(Path(__file__).parent),
            comp=str(f),
            bench=bench,
            out=str(out),
            data=str(DATA_DIR),
            bs=bs,
        )
        return [sys.executable, "-c", code]

    # uninterrupted reference run
    ref = tmp_path / "ref"
    subprocess.run(runner(ref), check=True, cwd=REPO, timeout=300, stdout=subprocess.DEVNULL)
    # killed run
    out = tmp_path / "killed"
    proc = subprocess.Popen(runner(out), cwd=REPO)
    samples = out / "samples.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_bytes().count(b"\n") >= total // 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    done = samples.read_bytes().count(b"\n")
    assert total // 2 <= done < total
    assert not (out / "summary.json").exists()
    with samples.open("a") as fh:  # a torn write, as a kill inside write() would leave
        fh.write('{"id": "nl4opt.sirl-0", "sample_in')
    subprocess.run(runner(out), check=True, cwd=REPO, timeout=300, stdout=subprocess.DEVNULL)
    a, b = (ref / "summary.json").read_bytes(), (out / "summary.json").read_bytes()
    assert a == b
    lines = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(lines) == total == len({(r["id"], r["sample_index"]) for r in lines})
    s = json.loads(a)
    assert all(e["n_scored_problems"] > 0 for e in s["datasets"].values())
    got = sum(e["pass@1"] * e["n_scored_problems"] * per_problem for e in s["datasets"].values())
    assert got == pytest.approx(n_correct)


HAVE_POOL = importlib.util.find_spec("storm_jax.execution.pool") is not None


@needs_data
@pytest.mark.skipif(HAVE_POOL, reason="covered by the 2,000-sample CLI run with the real pool")
def test_kill_and_resume_small(tmp_path):
    # fallback runner (score_completions + a subprocess executor) when the execution pool is absent
    _run_kill_resume(tmp_path, n_problems=60, per_problem=4, code_every=8, bs=10, use_cli=False)


@needs_data
def test_kill_and_resume_2000(tmp_path):
    # 2,000 completions (1 in 12 with code), SIGKILL at >= 1,000 results, rerun: same summary.json bytes.
    # ~16 s with the pool through the real CLI on 2 shared cores.
    _run_kill_resume(tmp_path, n_problems=250, per_problem=8, code_every=12, bs=50, use_cli=HAVE_POOL)


# ---------------------------------------------------------------------------------------------------------
# Reruns: nothing stale (edited rows are rescored, exactly those), settings recorded as they took effect
# ---------------------------------------------------------------------------------------------------------


def _edit_comps(rows: list[bm.BenchmarkRow]):
    """Per row: sample 0 prints the truth from code, sample 1 boxes it. All 2*len(rows) samples correct."""
    comps = []
    for row in rows:
        comps.append(
            {"id": row.id, "completion": _code(f"print('OBJECTIVE: {row.answer!r}')"), "sample_index": 0}
        )
        comps.append({"id": row.id, "completion": f"So \\boxed{{{row.answer!r}}}.", "sample_index": 1})
    return comps


def _score(f, out, ex, **kw):
    return sc.score_completions(f, "nl4opt.sirl", "strict", kw.pop("answer_from", "auto"), out, DATA_DIR,
                                executor=ex, progress=False, **kw)  # fmt: skip


def _n_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


@needs_data
def test_rerun_after_edit_rescores_exactly_the_changed_rows(tmp_path):
    rows = bm.load_dataset("nl4opt.sirl", DATA_DIR)[:6]
    assert all(r.answer is not None for r in rows)
    comps = _edit_comps(rows)
    f, out = tmp_path / "c.jsonl", tmp_path / "out"
    _write_jsonl(f, comps)
    ex = LocalExecutor()
    try:
        s0 = _score(f, out, ex)
        assert ex.calls == 6  # one code block per sample 0, boxes need no execution
        assert s0["datasets"]["nl4opt.sirl"]["pass@1"] == 1.0
        # edit two rows: a program (needs one execution) and a box (needs none); both become wrong
        comps[4]["completion"] = _code(f"print('OBJECTIVE: {rows[2].answer + 1.0!r}')")
        comps[9]["completion"] = f"So \\boxed{{{rows[4].answer * 2!r}}}."
        _write_jsonl(f, comps)
        ex.calls = 0
        s1 = _score(f, out, ex)
        assert ex.calls == 1  # exactly the edited program ran again
        assert _n_lines(out / "samples.jsonl") == 12 + 2  # exactly the two edited rows were rescored
        # hand count: rows 2 and 4 have 1 of 2 correct, the four others 2 of 2
        assert s1["datasets"]["nl4opt.sirl"]["pass@1"] == pytest.approx((4 * 1.0 + 2 * 0.5) / 6)
        assert s1["datasets"]["nl4opt.sirl"]["failures"]["wrong_objective"] == 2
        run = json.loads((out / "run.json").read_text())
        assert run["completions"]["path"] == str(f.resolve())
        assert run["completions"]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert run["last_run"] == {"reused": 10, "scored": 2}
        # a fresh run on the edited file gives the same summary, in memory and on disk
        ex_fresh = LocalExecutor()
        try:
            fresh = _score(f, tmp_path / "fresh", ex_fresh)
        finally:
            ex_fresh.close()
        assert s1 == fresh
        assert (out / "summary.json").read_bytes() == (tmp_path / "fresh" / "summary.json").read_bytes()
        # an unchanged rerun scores nothing
        ex.calls = 0
        assert _score(f, out, ex) == fresh and ex.calls == 0
        assert _n_lines(out / "samples.jsonl") == 14
        # editing a row back reuses the result stored for that content
        comps[9]["completion"] = f"So \\boxed{{{rows[4].answer!r}}}."
        _write_jsonl(f, comps)
        s3 = _score(f, out, ex)
        assert _n_lines(out / "samples.jsonl") == 14 and ex.calls == 0
        assert s3["datasets"]["nl4opt.sirl"]["pass@1"] == pytest.approx((5 * 1.0 + 0.5) / 6)
    finally:
        ex.close()


def test_input_hash_covers_completion_and_truth():
    row = bm.BenchmarkRow("d-0", "d", "v", "q?", 10.0, None)
    c = sc.Completion("d-0", r"\boxed{10}", 0)
    h = sc.input_hash(row, c)
    assert len(h) == 64 and h == sc.input_hash(row, sc.Completion("d-0", r"\boxed{10}", 0))
    assert h != sc.input_hash(row, sc.Completion("d-0", r"\boxed{11}", 0))
    assert h != sc.input_hash(row, sc.Completion("d-0", r"\boxed{10}", 1))
    assert h != sc.input_hash(dataclasses.replace(row, answer=11.0), c)  # a corrected truth rescores
    assert h != sc.input_hash(dataclasses.replace(row, answer=None, answer_status="infeasible"), c)
    (res,) = sc.score_samples([(row, c)], "strict", "boxed")
    assert res.input_sha256 == h


def test_results_of_an_older_scorer_load_and_are_never_reused(tmp_path):
    p = tmp_path / "samples.jsonl"
    old = sc.SampleResult("a", 0, "d", 1.0, "boxed", True, None, None, None, 0, 0.0).to_json()
    del old["input_sha256"]  # lines written before results carried a hash
    p.write_text(json.dumps(old) + "\n")
    (r,) = sc.load_results(p)
    assert (r.id, r.sample_index, r.answer, r.input_sha256) == ("a", 0, 1.0, None)
    del old["answer"]
    p.write_text(json.dumps(old) + "\n")
    with pytest.raises(ValueError, match=r"samples.jsonl:1: not a sample result"):
        sc.load_results(p)


@needs_data
def test_max_blocks_zero_is_recorded_as_boxed(tmp_path, capsys):
    rows = bm.load_dataset("nl4opt.sirl", DATA_DIR)[:4]
    f = tmp_path / "c.jsonl"
    _write_jsonl(f, _edit_comps(rows))
    ex = LocalExecutor()
    try:
        s = _score(f, tmp_path / "zero", ex, max_blocks=0)
        assert ex.calls == 0  # nothing executed
        run = json.loads((tmp_path / "zero" / "run.json").read_text())
        assert (run["answer_from"], run["max_blocks"]) == ("boxed", None)
        assert run["requested"] == {"answer_from": "auto", "max_blocks": 0}
        assert s["answer_from"] == "boxed"
        # the program samples have no box: 4 of 8 correct, the other 4 parse failures (as in a boxed run)
        e = s["datasets"]["nl4opt.sirl"]
        assert e["pass@1"] == 0.5 and e["failures"]["parse_failure"] == 4 and e["n_executed"] == 0
        assert s == _score(f, tmp_path / "boxed", ex, answer_from="boxed")
        # the same effective settings share a directory; auto with execution does not
        _score(f, tmp_path / "zero", ex, answer_from="boxed", max_blocks=5)
        assert _n_lines(tmp_path / "zero" / "samples.jsonl") == 8
        with pytest.raises(
            ValueError, match=r"run.json: .*other settings.*'answer_from': \('boxed', 'auto'\)"
        ):
            _score(f, tmp_path / "zero", ex, max_blocks=3)
        with pytest.raises(ValueError, match="executes no code"):
            _score(f, tmp_path / "exec", ex, answer_from="execution", max_blocks=0)
        with pytest.raises(ValueError, match="max_blocks must be a non-negative integer, got -1"):
            _score(f, tmp_path / "neg", ex, max_blocks=-1)
        assert ex.calls == 0
    finally:
        ex.close()
    # the command line says so in one line, and exits 2 for the combination that scores nothing
    argv = [
        "--completions",
        str(f),
        "--benchmark",
        "nl4opt.sirl",
        "--data-dir",
        str(DATA_DIR),
        "--no-progress",
    ]
    capsys.readouterr()
    assert sc.main(argv + ["--out", str(tmp_path / "cli"), "--max-blocks", "0"]) == 0
    err = capsys.readouterr().err
    assert "--max-blocks 0 executes no code" in err and "answer_from=boxed" in err
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["answer_from"] == "boxed"
    assert (
        sc.main(argv + ["--out", str(tmp_path / "cli2"), "--max-blocks", "0", "--answer-from", "execution"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("storm-jax score: ") and err.count("\n") == 1 and "executes no code" in err
    assert not (tmp_path / "cli2" / "run.json").exists()
    # a rerun says how much it reused
    assert sc.main(argv + ["--out", str(tmp_path / "cli"), "--answer-from", "boxed"]) == 0
    assert "8 unchanged samples reused" in capsys.readouterr().err


def test_score_module_keeps_its_names():
    # score.py was split into modules; every name it exported before the split still imports from it
    from storm_jax.eval import completions, metrics, report, scoring, store

    for name, mod in [
        ("Completion", completions), ("read_completions", completions), ("SampleResult", scoring),
        ("Executor", scoring), ("classify", scoring), ("score_samples", scoring), ("ANSWER_MODES", scoring),
        ("FAILURES", scoring), ("pass_at_k", metrics), ("majority_answer", metrics), ("summarize", metrics),
        ("markdown_table", report), ("load_results", store), ("SAMPLES_FILE", store), ("SUMMARY_FILE", store),
        ("TABLE_FILE", store), ("RUN_FILE", store),
    ]:  # fmt: skip
        assert getattr(sc, name) is getattr(mod, name), name
    assert callable(sc.main) and callable(sc.score_completions) and callable(sc.build_parser)
    assert sc._ERROR_STATUSES == ("error", "memory", "killed")
