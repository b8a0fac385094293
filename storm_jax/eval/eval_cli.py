"""`storm-jax eval`: evaluate a model on OR benchmarks: rollouts with tools, scoring, a per-benchmark report.

    storm-jax eval --checkpoint DIR --suite storm --preset storm --n 4 --out runs/eval_a
    storm-jax eval --random-tiny --suite nl4opt.optmath,complexor.llm4or_clean --preset greedy --limit 3 --out R
    storm-jax eval ... --process-index 0 --process-count 2     # one shard per process / host
    storm-jax eval merge RUN                                     # score + summarize when all shards are done
    storm-jax eval compare RUN_A RUN_B                           # side by side, with differences

Each problem of the suite (its first --limit rows per dataset) is sampled --n times under the preset's
decoding (storm_jax/eval/presets.py says where each value comes from), with the code interpreter in the loop.
The completions are scored under the suite's protocol (--protocol overrides) by the shared scorer, and
RUN/summary.md, RUN/summary.json and RUN/plots/*.png report pass@1, pass@k, maj@n, the failure breakdown,
tokens and tool calls per sample. A killed run continues where it stopped when rerun with the same
arguments (each finished sample is stored once, see storm_jax/eval/harness.py). With --process-count n,
process i runs shard i; the last shard to finish (or `eval merge`) writes the report.

Arguments, the benchmark files and the checkpoint's files are checked before the model is built: a bad one
is reported in one line (exit 2).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from storm_jax.cli_util import ArgumentParser, UsageError, check_hf_dir, check_range, fail

PROG = "storm-jax eval"


def run_parser() -> ArgumentParser:
    from storm_jax.eval.presets import PRESETS
    from storm_jax.rewards import PROTOCOLS

    p = ArgumentParser(prog=PROG, description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="HF checkpoint directory (config.json + safetensors)")
    src.add_argument(
        "--random-tiny", action="store_true", help="a tiny random Qwen3 (smoke test, no weights)"
    )
    p.add_argument("--suite", required=True, help="storm, steporlm, storm_fixed, or datasets NAME,NAME,...")
    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="decoding preset")
    p.add_argument("--out", required=True, help="run directory (resumable)")
    p.add_argument("--n", type=int, default=1, help="samples per problem")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each dataset (default: all)")
    p.add_argument("--protocol", choices=PROTOCOLS, help="scoring protocol (default: the suite's)")
    p.add_argument("--seed", type=int, default=0, help="run seed (problem seeds derive from it and the id)")
    p.add_argument("--max-new-tokens", type=int, help="response budget (default: the preset's)")
    p.add_argument(
        "--max-tool-calls", type=int, help="code blocks executed per sample (default: the preset's)"
    )
    p.add_argument("--max-output-chars", type=int, default=2000, help="tool output shown to the model")
    p.add_argument("--no-thinking", action="store_true", help="generation prompt without an open <think>")
    p.add_argument("--process-index", type=int, default=0, help="this process's shard")
    p.add_argument("--process-count", type=int, default=1, help="number of shards (processes or hosts)")
    p.add_argument("--data-dir", help="benchmark directory (default $STORM_DATA_DIR)")
    p.add_argument("--slots", type=int, default=16, help="decode slots (continuous batching)")
    p.add_argument("--chunk", type=int, default=32, help="decode steps per device call")
    p.add_argument("--workers", type=int, default=2, help="execution pool workers")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--no-progress", action="store_true")
    return p


def _merge_parser() -> ArgumentParser:
    p = ArgumentParser(prog=f"{PROG} merge", description="score every shard of RUN and write its report")
    p.add_argument("run", help="run directory")
    p.add_argument("--data-dir", help="benchmark directory (default $STORM_DATA_DIR)")
    p.add_argument("--workers", type=int, default=2, help="execution pool workers (scoring)")
    return p


def _compare_parser() -> ArgumentParser:
    p = ArgumentParser(prog=f"{PROG} compare", description="two eval runs side by side (differences B - A)")
    p.add_argument("run_a")
    p.add_argument("run_b")
    return p


def settings_of(args) -> tuple[dict, list]:
    """(the run's settings, its problems); UsageError naming the flag or file for a bad value."""
    from storm_jax.data import benchmarks as bm
    from storm_jax.eval.harness import select_problems
    from storm_jax.eval.presets import PRESETS, suite_protocol

    for flag in ("n", "slots", "chunk", "workers", "process_count"):
        check_range(f"--{flag.replace('_', '-')}", getattr(args, flag), lo=1)
    for flag in ("limit", "max_new_tokens"):
        if getattr(args, flag) is not None:
            check_range(f"--{flag.replace('_', '-')}", getattr(args, flag), lo=1)
    for flag in ("max_tool_calls", "max_output_chars"):
        if getattr(args, flag) is not None:
            check_range(f"--{flag.replace('_', '-')}", getattr(args, flag), lo=0)
    if not 0 <= args.process_index < args.process_count:
        raise UsageError(
            f"--process-index {args.process_index}: must be in [0, --process-count {args.process_count})"
        )
    if args.checkpoint is not None:
        check_hf_dir(args.checkpoint, "--checkpoint")
    try:
        datasets = bm.resolve(args.suite)
        protocol, source = (
            (args.protocol, "given by --protocol") if args.protocol else suite_protocol(args.suite)
        )
        problems = select_problems(datasets, args.limit, args.data_dir)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--suite {args.suite}: {e}") from None
    preset = PRESETS[args.preset]
    decoding = preset.decoding()
    if args.max_new_tokens is not None:
        decoding["max_new_tokens"] = args.max_new_tokens
    if args.max_tool_calls is not None:
        decoding["max_tool_calls"] = args.max_tool_calls
    model = f"random-tiny:{args.seed}" if args.random_tiny else os.path.abspath(args.checkpoint)
    settings = {
        "model": model,
        "dtype": args.dtype,
        "suite": args.suite,
        "datasets": datasets,
        "protocol": protocol,
        "protocol_source": source,
        "preset": preset.name,
        "preset_source": preset.source,
        "decoding": decoding,
        "n": args.n,
        "limit": args.limit,
        "seed": args.seed,
        "enable_thinking": not args.no_thinking,
        "max_output_chars": args.max_output_chars,
        "process_count": args.process_count,
    }
    return settings, problems


def _run(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    from storm_jax.eval.harness import COMPLETIONS_FILE, CompletionLog, check_settings, shard_dir, shard_of

    try:
        settings, problems = settings_of(args)
        check_settings(Path(args.out), settings)
    except (UsageError, ValueError) as e:
        return fail(PROG, str(e))
    run, i, count = Path(args.out), args.process_index, args.process_count
    mine = shard_of(problems, i, count)
    log = CompletionLog(shard_dir(run, i, count) / COMPLETIONS_FILE)
    done = log.load()
    todo = sum(1 for p in mine for j in range(args.n) if (p.id, j) not in done)
    print(
        f"{PROG}: shard {i}-of-{count}: {len(mine)} problems x {args.n} samples, {todo} to generate",
        file=sys.stderr,
    )

    with _LazyPool(args.workers) as pool:
        if todo:
            _generate(args, settings, mine, log, pool)
        from storm_jax.eval.evalreport import merge, score_shard, table

        score_shard(run, i, count, settings, args.data_dir, executor=pool)
        complete = all(_shard_complete(run, k, count, problems, args.n) for k in range(count))
        if not complete:
            print(f"{PROG}: shard {i}-of-{count} done; the report is written when all shards are "
                  f"(or run `{PROG} merge {run}`)", file=sys.stderr)  # fmt: skip
            return 0
        summary = merge(run, args.data_dir, executor=pool)
    print(table(summary), end="")
    print(f"{PROG}: wrote {run / 'summary.md'}, {run / 'summary.json'}, {run / 'plots'}/", file=sys.stderr)
    return 0


class _LazyPool:
    """The execution pool, started on the first program (a model that writes no code never pays its start-up;
    neither does a rerun that only scores)."""

    def __init__(self, workers: int):
        import threading

        self.workers, self._pool, self._lock = workers, None, threading.Lock()

    def _get(self):
        with self._lock:  # the engine thread (tool calls) and the scorer may both ask
            if self._pool is None:
                from storm_jax.execution.pool import ExecutionPool

                self._pool = ExecutionPool(num_workers=self.workers)
            return self._pool

    def submit(self, code: str, *, timeout_s: float | None = None):
        return self._get().submit(code, timeout_s=timeout_s)

    def map(self, codes, *, timeout_s: float | None = None):
        return self._get().map(codes, timeout_s=timeout_s)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> _LazyPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shard_complete(run: Path, k: int, count: int, problems, n: int) -> bool:
    from storm_jax.eval.harness import COMPLETIONS_FILE, CompletionLog, shard_dir, shard_of

    rows = CompletionLog(shard_dir(run, k, count) / COMPLETIONS_FILE).load()
    return all((p.id, j) in rows for p in shard_of(problems, k, count) for j in range(n))


def _generate(args, settings: dict, problems, log, pool) -> None:
    from tqdm import tqdm

    from storm_jax.eval.harness import run_shard
    from storm_jax.models.hf import CheckpointError
    from storm_jax.sampling.requests import SamplingParams
    from storm_jax.serve.engine import Engine, EngineOptions
    from storm_jax.serve.model import load_model
    from storm_jax.tokenizer import encode_prompt, eos_ids

    try:
        cfg, params, tok, _ = load_model(args.checkpoint, dtype=args.dtype, seed=args.seed)
    except CheckpointError as e:
        raise SystemExit(fail(PROG, f"--checkpoint: {e}")) from None
    dec = settings["decoding"]
    thinking = settings["enable_thinking"]
    longest = max(len(encode_prompt(tok, [{"role": "user", "content": p.question}], enable_thinking=thinking))
                  for p in problems)  # fmt: skip
    sp = SamplingParams(
        temperature=dec["temperature"],
        top_p=dec["top_p"],
        top_k=dec["top_k"],
        min_p=dec["min_p"],
        max_new_tokens=dec["max_new_tokens"],
        eos_ids=tuple(eos_ids(tok)),
    )
    options = EngineOptions(
        num_slots=args.slots,
        max_len=longest + dec["max_new_tokens"] + 1,
        chunk_size=args.chunk,
        max_queue=None,
        gather_s=0.0,
        tools=True,
        max_tool_calls=dec["max_tool_calls"],
        max_output_chars=settings["max_output_chars"],
    )
    todo = sum(1 for p in problems for j in range(args.n) if (p.id, j) not in log.load())
    with Engine(params, cfg, tok, options, executor=pool) as engine:
        with tqdm(total=todo, desc="eval", unit="sample", file=sys.stderr, disable=args.no_progress) as bar:
            run_shard(engine, tok, problems, log, n=args.n, seed=args.seed, sampling=sp,
                      enable_thinking=thinking, progress=bar.update)  # fmt: skip


def _merge(argv: list[str]) -> int:
    args = _merge_parser().parse_args(argv)
    from storm_jax.eval.evalreport import merge, table

    try:
        summary = merge(Path(args.run), args.data_dir, workers=args.workers)
    except (ValueError, FileNotFoundError) as e:
        return fail(f"{PROG} merge", str(e))
    print(table(summary), end="")
    return 0


def _compare(argv: list[str]) -> int:
    args = _compare_parser().parse_args(argv)
    from storm_jax.eval.compare import compare, load_summary

    try:
        a, b = load_summary(args.run_a), load_summary(args.run_b)
    except (FileNotFoundError, ValueError) as e:
        return fail(f"{PROG} compare", str(e))
    print(compare(a, b, args.run_a, args.run_b), end="")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax eval` (and its `merge` / `compare` subcommands)."""
    if argv and argv[0] == "merge":
        return _merge(argv[1:])
    if argv and argv[0] == "compare":
        return _compare(argv[1:])
    return _run(argv)
