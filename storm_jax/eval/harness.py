"""Rollouts of `storm-jax eval`: every (problem, sample) of a shard, with tools, written as it finishes.

Run directory (``--out RUN``):

``eval.json``                      the settings (model, datasets, protocol, decoding, n, limit, seed, shard
                                   count); a rerun with other settings is refused.
``shards/<i>-of-<n>/completions.jsonl``  one line per finished (problem, sample): id, dataset, sample_index,
                                   completion (the response text, tool output included), token and tool-call
                                   counts, stop reason. A complete line is that sample's done-marker: it is
                                   appended and fsync'd when the sample finishes, a torn last line (a kill
                                   inside write()) is cut off, and a rerun generates only the samples
                                   without a line, so nothing is counted twice.
``shards/<i>-of-<n>/score/``       the scorer's resumable store (storm_jax.eval.store) for that shard.
``summary.json``, ``summary.md``, ``plots/``  written by the merge (storm_jax.eval.evalreport).

Sharding: the selected problems (the first `limit` rows of each dataset, in registry order) are dealt to
`process_count` shards round robin; shard i holds problems i, i + n, i + 2n, ... Problem p is seeded from
(run seed, p's id) only, and sample j of it draws `fold_in(PRNGKey(seed_p), j)`, so a sample's tokens do not
depend on the sharding, the batch it ran in, or on having been resumed.

The rollouts run on the serving engine (storm_jax.serve.engine): continuous batching, the n samples of a
problem share its prefill, and the code interpreter runs inside the loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from storm_jax.data import benchmarks as bm
from storm_jax.eval.store import write_atomic

SETTINGS_FILE = "eval.json"
COMPLETIONS_FILE = "completions.jsonl"


def shard_dir(run: Path, index: int, count: int) -> Path:
    return Path(run) / "shards" / f"{index}-of-{count}"


def select_problems(datasets: Sequence[str], limit: int | None, data_dir=None) -> list[bm.BenchmarkRow]:
    """The first `limit` rows (all with None) of each dataset, datasets in the given order."""
    root = bm.resolve_data_dir(data_dir)
    out: list[bm.BenchmarkRow] = []
    for d in datasets:
        rows = bm.load_dataset(d, root)
        out += rows if limit is None else rows[:limit]
    return out


def shard_of(problems: Sequence[Any], index: int, count: int) -> list[Any]:
    """Problems index, index + count, ... (round robin: every shard gets every dataset)."""
    return list(problems[index::count])


def problem_seed(seed: int, problem_id: str) -> int:
    """A 31-bit sampler seed from the run seed and the problem id (independent of order and sharding)."""
    h = hashlib.blake2b(f"{seed}\x00{problem_id}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def check_settings(run: Path, settings: dict) -> None:
    """Write eval.json, or refuse (ValueError naming the differing keys) when it holds other settings."""
    path = Path(run) / SETTINGS_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e.msg}); use another --out") from None
        if old != settings:
            diff = {
                k: (old.get(k), settings.get(k))
                for k in sorted(set(old) | set(settings))
                if old.get(k) != settings.get(k)
            }
            raise ValueError(f"{path}: the run was started with other settings {diff}; use another --out")
        return
    Path(run).mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def load_settings(run: Path) -> dict:
    path = Path(run) / SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (not a `storm-jax eval` run directory)")
    return json.loads(path.read_text(encoding="utf-8"))


class CompletionLog:
    """completions.jsonl of one shard: append-only, one fsync'd line per finished sample."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[tuple[str, int], dict]:
        """Rows already written, by (id, sample_index); a torn last line is cut off the file first."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1
        if good < len(data):
            with self.path.open("r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        rows: dict[tuple[str, int], dict] = {}
        for lineno, line in enumerate(data[:good].decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    rows.setdefault((row["id"], int(row["sample_index"])), row)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise ValueError(f"{self.path}:{lineno}: not a completion row ({e})") from None
        return rows

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def sample_row(problem: bm.BenchmarkRow, sample_index: int, st, text: str) -> dict:
    """The completions.jsonl line of a finished sample (`st`: storm_jax.serve.engine.SampleState)."""
    return {
        "id": problem.id,
        "dataset": problem.dataset,
        "sample_index": sample_index,
        "completion": text,
        "response_tokens": len(st.tokens),
        "model_tokens": sum(1 for k in st.kinds if k == "model"),
        "tool_calls": len(st.executions),
        "exec_statuses": [ex.status for ex in st.executions],
        "stop_reason": st.stop_reason,
    }


def run_shard(
    engine,
    tokenizer,
    problems: Sequence[bm.BenchmarkRow],
    log: CompletionLog,
    *,
    n: int,
    seed: int,
    sampling,
    enable_thinking: bool = True,
    progress: Callable[[int], None] | None = None,
    teacher_forcing: Callable[[bm.BenchmarkRow], list[int]] | None = None,
) -> int:
    """Generate the samples of `problems` that `log` lacks and append each as it finishes; returns how many.

    `engine`: a storm_jax.serve.engine.Engine (with tools for tool use); `sampling`: the SamplingParams.
    `teacher_forcing` is TEST-ONLY (the CLI never sets it): problem -> ids its samples are made to write
    first (`Request.forced`), so a test can check scoring of known-correct trajectories end to end.
    """
    from storm_jax.sampling.requests import Request
    from storm_jax.serve.text import TextStream
    from storm_jax.tokenizer import encode_prompt, eos_ids

    done = log.load()
    eos = eos_ids(tokenizer)
    updates: queue.SimpleQueue = queue.SimpleQueue()
    jobs = []
    for p in problems:
        missing = [j for j in range(n) if (p.id, j) not in done]
        if not missing:
            continue
        prompt = encode_prompt(
            tokenizer, [{"role": "user", "content": p.question}], enable_thinking=enable_thinking
        )
        # All n samples run even when some are done (they share the prefill and their streams do not depend on
        # each other); only the missing ones are written.
        forced = teacher_forcing(p) if teacher_forcing is not None else None
        req = Request(prompt, sampling, n=n, seed=problem_seed(seed, p.id), forced=forced)
        jobs.append(engine.submit(req, on_update=updates.put, meta=(p, set(missing))))
    written = 0
    open_jobs = {id(j): j for j in jobs}
    for j in jobs:
        updates.put(j)  # a job may have finished before its callback could be seen
    while open_jobs:
        try:
            job = updates.get(timeout=5.0)
        except queue.Empty:
            if not engine.health()["engine_alive"]:
                raise RuntimeError("the sampling engine stopped") from None
            continue
        if id(job) not in open_jobs:
            continue
        if job.error:
            raise RuntimeError(f"problem {job.meta[0].id}: {job.error}")
        p, missing = job.meta
        for j, st in enumerate(job.snapshot()):
            if st.done and j in missing:
                stream = TextStream(engine.decode, (), eos)
                text = stream.update(st).text
                log.append(sample_row(p, j, st, text))
                missing.discard(j)
                written += 1
                if progress is not None:
                    progress(1)
        if job.done and not missing:
            del open_jobs[id(job)]
    return written


__all__ = [
    "COMPLETIONS_FILE",
    "SETTINGS_FILE",
    "CompletionLog",
    "check_settings",
    "load_settings",
    "problem_seed",
    "run_shard",
    "sample_row",
    "select_problems",
    "shard_dir",
    "shard_of",
]
