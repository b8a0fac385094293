"""`storm-jax synth`: generate verified synthetic OR problems and gold trajectories.

Writes to --out:
  train.problems.jsonl / heldout.problems.jsonl   benchmark-schema rows (id, question, answer, answer_status, meta)
  train.sft_chat.jsonl                            {"id", "messages": [system?, user, assistant]}
  train.sft_traj.jsonl                            {"id", "messages": [system?, user], "segments", "answer", "meta"}
  stats.json                                      counts (verified, dropped by reason, families, styles)
  tokenizer/                                      with --trim-tokenizer: the Qwen3 tokenizer trimmed to the
                                                  training files' tokens (storm_jax/tokenizer_trim.py)
Files are byte-identical for the same arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from storm_jax.data.synth.families import ALL_FAMILIES, FAMILIES
from storm_jax.data.synth.generate import SynthConfig, generate
from storm_jax.data.synth.runner import LocalRunner, PoolRunner


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="storm-jax synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--families", default="all", help=f"comma list or 'all' (known: {','.join(FAMILIES)})")
    ap.add_argument(
        "--n", type=int, default=100, help="candidate instances (rows that fail verification are dropped)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--sizes", default="0,1,2", help="difficulty knob values to draw from (0..3)")
    ap.add_argument("--infeasible-frac", type=float, default=0.1)
    ap.add_argument("--augment-frac", type=float, default=0.3)
    ap.add_argument("--recovery-frac", type=float, default=0.25)
    ap.add_argument("--thinking-frac", type=float, default=0.25)
    ap.add_argument("--heldout-frac", type=float, default=0.1)
    ap.add_argument("--no-system", action="store_true", help="omit the system message from SFT rows")
    ap.add_argument(
        "--runner",
        choices=["auto", "local", "pool"],
        default="auto",
        help="execute gold programs in the project's ExecutionPool (pool) or one warm child process (local)",
    )
    ap.add_argument(
        "--trim-tokenizer",
        action="store_true",
        help="also write <out>/tokenizer: Qwen3's tokenizer trimmed to the training files' tokens",
    )
    ap.add_argument("--no-progress", action="store_true")
    return ap


def write_trimmed_tokenizer(out_dir: str) -> int:
    """<out_dir>/tokenizer from the training files of <out_dir> (never the held-out ones); its size."""
    from storm_jax.tokenizer import load_tokenizer, save_tokenizer
    from storm_jax.tokenizer_trim import corpus_ids, trim_tokenizer

    tok = load_tokenizer(None)
    sft = [os.path.join(out_dir, "train.sft_traj.jsonl")]
    problems = [os.path.join(out_dir, "train.problems.jsonl")]
    ids = [
        seq
        for thinking in (False, True)  # both generation prompts (the thinking switch only changes them)
        for seq in corpus_ids(tok, sft, problems, enable_thinking=thinking)
    ]
    trimmed = trim_tokenizer(tok, ids)
    save_tokenizer(trimmed, os.path.join(out_dir, "tokenizer"))
    return len(trimmed)


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")


def _runner(kind: str):
    if kind in ("auto", "pool"):
        try:
            return PoolRunner(num_workers=1)
        except ImportError:
            if kind == "pool":
                raise
    return LocalRunner()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    fams = (
        ALL_FAMILIES
        if args.families == "all"
        else tuple(f.strip() for f in args.families.split(",") if f.strip())
    )
    try:
        cfg = SynthConfig(
            families=fams,
            n=args.n,
            seed=args.seed,
            sizes=tuple(int(s) for s in args.sizes.split(",")),
            infeasible_frac=args.infeasible_frac,
            augment_frac=args.augment_frac,
            recovery_frac=args.recovery_frac,
            thinking_frac=args.thinking_frac,
            heldout_frac=args.heldout_frac,
            system_prompt=not args.no_system,
        )
    except (KeyError, ValueError) as e:
        print(f"storm-jax synth: {e}", file=sys.stderr)
        return 2
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        def progress(it):
            return tqdm(it, total=cfg.n, desc="synth", unit="problem", file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    with _runner(args.runner) as runner:
        out = generate(cfg, runner, progress=progress)
    dt = time.perf_counter() - t0
    _write_jsonl(os.path.join(args.out, "train.problems.jsonl"), out.train_problems)
    _write_jsonl(os.path.join(args.out, "heldout.problems.jsonl"), out.heldout_problems)
    _write_jsonl(os.path.join(args.out, "train.sft_chat.jsonl"), out.sft_chat)
    _write_jsonl(os.path.join(args.out, "train.sft_traj.jsonl"), out.sft_traj)
    with open(os.path.join(args.out, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(out.stats, f, indent=1, sort_keys=True)
        f.write("\n")
    s = out.stats
    if args.trim_tokenizer:
        n_tok = write_trimmed_tokenizer(args.out)
        print(
            f"synth: trimmed tokenizer of {n_tok} tokens -> {os.path.join(args.out, 'tokenizer')}",
            file=sys.stderr,
        )
    print(
        f"synth: {s['verified']}/{s['candidates']} verified ({sum(s['dropped'].values())} dropped), "
        f"{s['train_problems']} train / {s['heldout_problems']} heldout problems, {s['sft_rows']} SFT rows "
        f"in {dt:.1f}s -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
