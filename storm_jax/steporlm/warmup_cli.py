"""`storm-jax warmup-data`: StepORLM warm-up SFT rows from a teacher, verified by the solver.

    storm-jax warmup-data --problems P.jsonl --out DIR --base-url URL --model NAME --api-key-env MY_KEY \\
        [--retries 2] [--augment paraphrase,units,scale] [--limit N]
    storm-jax warmup-data --problems P.jsonl --out DIR --teacher local --checkpoint HF_DIR

Output directory (resumable: killed, the same command continues; teacher requests are cached under
DIR/cache/teacher, so a rerun re-sends nothing it already asked):
  warmup.sft.jsonl  verified chat-format SFT rows (`storm-jax train sft --config.data.path=...`)
  results.jsonl     one record per finished problem: kept / failed / duplicate ids, attempts, reasons
  stats.json        counts recomputed from results.jsonl (identical for a resumed and an uninterrupted run)
  last_run.json     teacher usage of the last invocation (requests, cache hits, tokens, cost)
The key is read from the environment variable named by --api-key-env and never written anywhere.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from storm_jax.cli_util import ArgumentParser, fail
from storm_jax.eval.store import write_atomic
from storm_jax.jobs import JsonlLog
from storm_jax.steporlm.warmup import AUGMENTATIONS, WarmupGenerator, question_key

PROG = "storm-jax warmup-data"
ROWS_FILE, RESULTS_FILE, STATS_FILE = "warmup.sft.jsonl", "results.jsonl", "stats.json"


def _reason_kind(reason: str) -> str:
    for prefix, kind in (("The solution does not follow", "format"), ("The solution has no", "no_code"),
                         ("The program failed", "exec_error"), ("The program did not reach", "not_optimal"),
                         ("teacher request failed", "teacher_error"), ("no rewritten", "no_augmentation")):  # fmt: skip
        if reason.startswith(prefix):
            return kind
    return "boxed_mismatch" if "boxed answer" in reason else "wrong_answer"


def warmup_stats(records: Sequence[dict]) -> dict:
    """Counts over results.jsonl records."""
    attempts = Counter(n for r in records for n in r["attempts"].values())
    reasons = Counter(_reason_kind(x) for r in records for rs in r["reasons"].values() for x in rs)
    kept = sum(len(r["kept"]) for r in records)
    tried = sum(len(r["attempts"]) for r in records)
    return {
        "problems": len(records),
        "solutions_tried": tried,
        "rows": kept,
        "verified_share": kept / tried if tried else 0.0,
        "failed": sum(len(r["failed"]) for r in records),
        "duplicates": sum(len(r["duplicates"]) for r in records),
        "retries": sum(r["retries"] for r in records),
        "attempts_histogram": {str(k): v for k, v in sorted(attempts.items())},
        "failure_reasons": dict(sorted(reasons.items())),
    }


def run_warmup_job(gen: WarmupGenerator, problems: Sequence[dict], out_dir: str | Path, *,
                   augment: Sequence[str] = (), workers: int = 1, progress: bool = True) -> dict:  # fmt: skip
    """Run (or resume) warm-up generation into `out_dir`; returns the statistics written to stats.json."""
    from tqdm import tqdm

    out = Path(out_dir)
    rows, results = JsonlLog(out / ROWS_FILE), JsonlLog(out / RESULTS_FILE)
    seen = {r["meta"]["question_sha256"]: r["id"] for r in rows.rows()}
    todo = [p for p in problems if str(p["id"]) not in results]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc="warmup", unit="problem",
               file=sys.stderr, disable=not progress)  # fmt: skip
    try:
        with cf.ThreadPoolExecutor(max(1, workers)) as ex:
            # map keeps problem order, so rows and records are written in the same order on every run
            for solved_list in ex.map(lambda p: gen.run_problem(p, augment), todo):
                rec = {"id": solved_list[0].id, "kept": [], "failed": [], "duplicates": [], "attempts": {},
                       "reasons": {}, "retries": 0}  # fmt: skip
                for s in solved_list:
                    rec["attempts"][s.id] = len(s.attempts)
                    rec["reasons"][s.id] = [a.reason for a in s.attempts if not a.ok]
                    rec["retries"] += s.retries
                    if s.row is None:
                        rec["failed"].append(s.id)
                        continue
                    key = question_key(s.question)
                    if s.id in rows or seen.get(key, s.id) == s.id:
                        if s.id not in rows:
                            s.row["meta"]["question_sha256"] = key
                            rows.append(s.row)
                            seen[key] = s.id
                        rec["kept"].append(s.id)
                    else:
                        rec["duplicates"].append(s.id)
                results.append(rec)
                bar.update(1)
    finally:
        bar.close()
    order = {str(p["id"]): k for k, p in enumerate(problems)}
    records = sorted((r for r in results.rows() if r["id"] in order), key=lambda r: order[r["id"]])
    stats = warmup_stats(records)
    write_atomic(out / STATS_FILE, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    usage = getattr(gen.teacher, "stats", None)
    if usage is not None:
        write_atomic(
            out / "last_run.json", json.dumps({"teacher": usage.to_json()}, indent=2, sort_keys=True) + "\n"
        )
    return stats


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument(
        "--problems", required=True, help="benchmark-schema JSONL (id, question, answer[, answer_status])"
    )
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("--limit", type=int, default=0, help="first N problems (0 = all)")
    p.add_argument("--teacher", choices=["openai", "local"], default="openai", help="teacher client kind")
    p.add_argument("--base-url", default="", help="OpenAI-compatible endpoint (teacher openai)")
    p.add_argument("--model", default="", help="teacher model name (teacher openai)")
    p.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="NAME of the environment variable with the key"
    )
    p.add_argument("--checkpoint", default="", help="HF checkpoint directory (teacher local)")
    p.add_argument("--max-concurrency", type=int, default=4, help="teacher requests in flight")
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    p.add_argument("--temperature", type=float, default=0.0, help="teacher sampling temperature")
    p.add_argument("--max-tokens", type=int, default=4096, help="teacher completion budget")
    p.add_argument("--retries", type=int, default=2, help="R: corrections asked after a failed solution")
    p.add_argument("--augment", default="", help=f"comma list of augmentations ({', '.join(AUGMENTATIONS)})")
    p.add_argument("--workers", type=int, default=2, help="execution pool workers (and problems in parallel)")
    p.add_argument("--exec-timeout", type=float, default=20.0, help="seconds per program")
    p.add_argument("--protocol", default="storm", help="answer check against the ground truth")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    from storm_jax.clients import ClientError, client_section, make_client
    from storm_jax.jobs import read_problems

    args = build_parser().parse_args(argv)
    augment = [a for a in args.augment.split(",") if a]
    bad = [a for a in augment if a not in AUGMENTATIONS]
    if bad:
        return fail(PROG, f"--augment: unknown {bad} (known: {', '.join(AUGMENTATIONS)})")
    if args.retries < 0 or args.workers < 1:
        return fail(PROG, "--retries must be >= 0 and --workers >= 1")
    try:
        problems = read_problems(args.problems, args.limit)
    except (OSError, ValueError) as e:
        return fail(PROG, f"--problems: {e}")
    sec = client_section()
    sec.kind, sec.base_url, sec.model, sec.api_key_env = (
        args.teacher,
        args.base_url,
        args.model,
        args.api_key_env,
    )
    sec.max_concurrency, sec.timeout_s, sec.checkpoint = args.max_concurrency, args.timeout, args.checkpoint
    sec.max_tokens = args.max_tokens
    try:
        teacher = make_client(sec, cache_dir=str(Path(args.out) / "cache" / "teacher"), key="teacher")
    except (ValueError, ClientError) as e:
        return fail(
            PROG, str(e).replace("teacher.base_url", "--base-url").replace("teacher.model", "--model")
        )
    from storm_jax.execution.pool import ExecutionPool

    with ExecutionPool(num_workers=args.workers) as pool:
        gen = WarmupGenerator(teacher, pool, max_retries=args.retries, protocol=args.protocol,
                              teacher_params={"temperature": args.temperature, "max_tokens": args.max_tokens},
                              exec_timeout_s=args.exec_timeout)  # fmt: skip
        stats = run_warmup_job(gen, problems, args.out, augment=augment, workers=args.workers,
                               progress=not args.no_progress)  # fmt: skip
    print(json.dumps({k: stats[k] for k in ("problems", "rows", "retries", "failed", "duplicates")}))
    return 0
