"""`storm-jax generate`: sample completions (optionally with tool use) and write trajectories.

    storm-jax generate --checkpoint DIR --prompt "What is 2+2?"              # one prompt, greedy, prints text
    storm-jax generate --random-tiny --prompt "hi" --max-new-tokens 16       # no weights needed
    storm-jax generate --checkpoint DIR --prompts in.jsonl --out out.jsonl --tools --n 4 --temperature 0.6

Prompt rows (JSONL): {"prompt": "..."} (a user message), {"messages": [{"role", "content"}, ...]}, or a
benchmark row {"id", "question", ...} (the question becomes the user message, so a benchmark file can be
sampled as is); an "id" is carried over (default: the line number). Each output row is a
`Trajectory.to_json()` plus "id". Request i is seeded with a key folded from the run seed and i
(`request_seeds`), so no two (seed, prompt) pairs share a sample stream.

Arguments, the prompts file and the checkpoint's files are checked before the model is built: a bad one is
reported in one line (exit 2).
"""

from __future__ import annotations

import json
import sys
import time

from storm_jax.cli_util import ArgumentParser, UsageError, check_hf_dir, check_range, fail
from storm_jax.verify import problem_messages

PROG = "storm-jax generate"
_ROLES = ("system", "user", "assistant")


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="HF checkpoint directory (config.json + safetensors)")
    src.add_argument(
        "--random-tiny", action="store_true", help="a tiny random Qwen3 (smoke test, no weights)"
    )
    inp = p.add_mutually_exclusive_group(required=True)
    inp.add_argument("--prompt", help="a single user prompt")
    inp.add_argument("--prompts", help="JSONL of prompts (rows with 'prompt', 'messages' or 'question')")
    p.add_argument("--out", help="trajectories JSONL (default: print the response text)")
    p.add_argument("--tools", action="store_true", help="execute ```python blocks and append their output")
    p.add_argument("--workers", type=int, default=2, help="execution pool workers (with --tools)")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0, help="run seed (request i: fold_in(seed, i))")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature, 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1]")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability")
    p.add_argument(
        "--max-new-tokens", type=int, default=512, help="response budget (model + tool-output ids)"
    )
    p.add_argument("--max-tool-calls", type=int, default=15, help="code blocks executed per response")
    p.add_argument("--max-output-chars", type=int, default=2000, help="tool output shown to the model")
    p.add_argument("--slots", type=int, default=8, help="decode slots (continuous batching)")
    p.add_argument("--chunk", type=int, default=32, help="decode steps per device call")
    p.add_argument(
        "--max-len", type=int, default=0, help="cache positions per slot (default: fit the longest)"
    )
    p.add_argument("--no-thinking", action="store_true", help="generation prompt without an open <think>")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    return p


def check_args(args) -> None:
    """Refuse impossible sampling/engine values (UsageError naming the flag) before anything is built."""
    check_range("--temperature", args.temperature, lo=0.0)
    check_range("--top-p", args.top_p, lo=0.0, hi=1.0, lo_open=True)
    check_range("--min-p", args.min_p, lo=0.0, hi=1.0)
    check_range("--top-k", args.top_k, lo=0)
    for flag in ("n", "max_new_tokens", "slots", "chunk", "workers"):
        check_range(f"--{flag.replace('_', '-')}", getattr(args, flag), lo=1)
    for flag in ("max_tool_calls", "max_output_chars", "max_len"):
        check_range(f"--{flag.replace('_', '-')}", getattr(args, flag), lo=0)
    if args.checkpoint is not None:
        check_hf_dir(args.checkpoint, "--checkpoint")


def request_seeds(seed: int, n: int) -> list[int]:
    """Per-request sampler seeds: a 32-bit word of `fold_in(PRNGKey(seed), i)` for request i.

    `seed + i` made `--seed 1` on prompt 0 draw exactly what `--seed 0` drew on prompt 1; folding the index
    into the run's key makes the streams of different (seed, i) pairs unrelated. (The sampler keys a request
    by a 32-bit seed, so one word of the folded key is all it can take.)
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    if n == 0:
        return []
    base = jax.random.PRNGKey(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n, dtype=jnp.uint32))
    return [int(k) for k in np.asarray(keys)[:, 1]]


def _is_message(m) -> bool:
    return isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in _ROLES


def _read_prompts(path: str) -> list[tuple[str, list[dict]]]:
    """(id, messages) of every row of a prompts JSONL; UsageError naming file:line for a bad row."""
    rows = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--prompts {path}: {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{lineno}: invalid JSON ({e})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            if isinstance(row.get("messages"), list):
                msgs = row["messages"]
                if not msgs:
                    raise UsageError(f"{path}:{lineno}: 'messages' is empty")
                bad = [i for i, m in enumerate(msgs) if not _is_message(m)]
                if bad:
                    raise UsageError(
                        f"{path}:{lineno}: messages[{bad[0]}] must be a {{role, content}} object"
                    )
            elif isinstance(row.get("prompt"), str):
                msgs = problem_messages(row["prompt"])
            elif isinstance(row.get("question"), str):  # a benchmark row: its question is the prompt
                msgs = problem_messages(row["question"])
            else:
                raise UsageError(
                    f"{path}:{lineno}: expected a 'prompt' string, a 'messages' list or a 'question' string"
                )
            rows.append((str(row.get("id", lineno)), msgs))
    if not rows:
        raise UsageError(f"--prompts {path}: no prompts")
    return rows


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax generate`."""
    args = _parser().parse_args(argv)
    try:
        check_args(args)
        rows = (
            [("0", [{"role": "user", "content": args.prompt}])]
            if args.prompt is not None
            else _read_prompts(args.prompts)
        )
    except UsageError as e:
        return fail(PROG, str(e))
    from tqdm import tqdm

    from storm_jax.sampling.rollout import RolloutConfig, RolloutRequest, rollout
    from storm_jax.sampling.sampler import EngineConfig, SamplingParams
    from storm_jax.tokenizer import encode_prompt, eos_ids, load_tokenizer

    # Tokenizer and prompts first: a prompt the template refuses, or a --max-len the prompts do not fit in, is
    # reported before any weights are read.
    tok = load_tokenizer(None if args.random_tiny else args.checkpoint)
    prompts = []
    for rid, msgs in rows:
        try:
            prompts.append(encode_prompt(tok, msgs, enable_thinking=not args.no_thinking))
        except ValueError as e:
            return fail(PROG, f"prompt {rid}: {e}")
    longest = max(len(p) for p in prompts)
    if args.max_len and args.max_len <= longest:
        return fail(PROG, f"--max-len {args.max_len}: the longest prompt has {longest} tokens")
    if args.random_tiny:
        from storm_jax.models.tiny import random_tiny

        cfg, params = random_tiny(args.dtype, args.seed)
    else:
        from storm_jax.models.hf import CheckpointError, load_hf_checkpoint

        try:  # fp32 master copy; compute dtype below
            cfg, params = load_hf_checkpoint(args.checkpoint, "float32")
        except CheckpointError as e:  # e.g. a tensor missing from the shards (check_args read only headers)
            return fail(PROG, f"--checkpoint: {e}")
        if args.dtype != cfg.dtype:
            cfg = cfg.replace(dtype=args.dtype)

    sp = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        max_new_tokens=args.max_new_tokens,
        eos_ids=tuple(eos_ids(tok)),
    )
    max_len = args.max_len or (longest + args.max_new_tokens + 1)
    engine = EngineConfig(
        num_slots=args.slots, max_len=max_len, chunk_size=args.chunk, max_bucket=min(512, max(16, max_len))
    )
    rc = RolloutConfig(
        sampling=sp,
        tools=args.tools,
        max_tool_calls=args.max_tool_calls,
        max_output_chars=args.max_output_chars,
    )
    seeds = request_seeds(args.seed, len(rows))
    reqs = [
        RolloutRequest(p, n=args.n, seed=s, meta={"id": rid}) for (rid, _), p, s in zip(rows, prompts, seeds)
    ]
    pool = None
    if args.tools:
        from storm_jax.execution.pool import ExecutionPool

        pool = ExecutionPool(num_workers=args.workers)
    t0 = time.perf_counter()
    try:
        with tqdm(
            total=len(reqs) * args.n, desc="generate", unit="seq", file=sys.stderr, disable=args.out is None
        ) as bar:
            trajs = rollout(params, cfg, tok, reqs, rc, pool, engine=engine, progress=bar.update)
    finally:
        if pool is not None:
            pool.close()
    dt = time.perf_counter() - t0
    n_tok = sum(sum(t.loss_mask) for t in trajs)
    print(
        f"generated {len(trajs)} sequences, {n_tok} model tokens in {dt:.1f}s ({n_tok / dt:.1f} tok/s)",
        file=sys.stderr,
    )
    if args.out is None:
        for t in trajs:
            print(t.text)
        return 0
    with open(args.out, "w") as f:
        for t in trajs:
            row = {"id": t.meta.get("id"), **t.to_json()}
            f.write(json.dumps(row) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
