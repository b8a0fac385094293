"""`storm-jax generate`: sample completions (optionally with tool use) and write trajectories.

    storm-jax generate --checkpoint DIR --prompt "What is 2+2?"              # one prompt, greedy, prints text
    storm-jax generate --random-tiny --prompt "hi" --max-new-tokens 16       # no weights needed
    storm-jax generate --checkpoint DIR --prompts in.jsonl --out out.jsonl --tools --n 4 --temperature 0.6

Prompt rows (JSONL): {"prompt": "..."} (a user message) or {"messages": [{"role", "content"}, ...]}; an "id"
is carried over (default: the line number). Each output row is a `Trajectory.to_json()` plus "id".
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="storm-jax generate", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="HF checkpoint directory (config.json + safetensors)")
    src.add_argument(
        "--random-tiny", action="store_true", help="a tiny random Qwen3 (smoke test, no weights)"
    )
    inp = p.add_mutually_exclusive_group(required=True)
    inp.add_argument("--prompt", help="a single user prompt")
    inp.add_argument("--prompts", help="JSONL of prompts ({'prompt': str} or {'messages': [...]})")
    p.add_argument("--out", help="trajectories JSONL (default: print the response text)")
    p.add_argument("--tools", action="store_true", help="execute ```python blocks and append their output")
    p.add_argument("--workers", type=int, default=2, help="execution pool workers (with --tools)")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-tool-calls", type=int, default=15)
    p.add_argument("--max-output-chars", type=int, default=2000)
    p.add_argument("--slots", type=int, default=8, help="decode slots (continuous batching)")
    p.add_argument("--chunk", type=int, default=32, help="decode steps per device call")
    p.add_argument(
        "--max-len", type=int, default=0, help="cache positions per slot (default: fit the longest)"
    )
    p.add_argument("--no-thinking", action="store_true", help="generation prompt without an open <think>")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return p


def _read_prompts(path: str) -> list[tuple[str, list[dict]]]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e})") from None
            if isinstance(row.get("messages"), list):
                msgs = row["messages"]
            elif isinstance(row.get("prompt"), str):
                msgs = [{"role": "user", "content": row["prompt"]}]
            else:
                raise ValueError(f"{path}:{lineno}: expected a 'prompt' string or a 'messages' list")
            rows.append((str(row.get("id", lineno)), msgs))
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax generate`."""
    args = _parser().parse_args(argv)
    import jax
    from tqdm import tqdm

    from storm_jax.models.qwen import ModelConfig, init_params
    from storm_jax.sampling.rollout import RolloutConfig, RolloutRequest, rollout
    from storm_jax.sampling.sampler import EngineConfig, SamplingParams
    from storm_jax.tokenizer import encode_prompt, eos_ids, load_tokenizer

    if args.random_tiny:
        cfg = ModelConfig(
            vocab_size=151936,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            dtype=args.dtype,
        )
        params = init_params(cfg, jax.random.key(args.seed))
        tok = load_tokenizer()
    else:
        from storm_jax.models.hf import load_hf_checkpoint

        cfg, params = load_hf_checkpoint(args.checkpoint, "float32")  # fp32 master copy; compute dtype below
        if args.dtype != cfg.dtype:
            cfg = cfg.replace(dtype=args.dtype)
        tok = load_tokenizer(args.checkpoint)

    rows = (
        [("0", [{"role": "user", "content": args.prompt}])]
        if args.prompt is not None
        else _read_prompts(args.prompts)
    )
    prompts = [encode_prompt(tok, msgs, enable_thinking=not args.no_thinking) for _, msgs in rows]
    sp = SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        max_new_tokens=args.max_new_tokens,
        eos_ids=tuple(eos_ids(tok)),
    )
    max_len = args.max_len or (max(len(p) for p in prompts) + args.max_new_tokens + 1)
    engine = EngineConfig(
        num_slots=args.slots, max_len=max_len, chunk_size=args.chunk, max_bucket=min(512, max(16, max_len))
    )
    rc = RolloutConfig(
        sampling=sp,
        tools=args.tools,
        max_tool_calls=args.max_tool_calls,
        max_output_chars=args.max_output_chars,
    )
    reqs = [
        RolloutRequest(p, n=args.n, seed=args.seed + i, meta={"id": rid})
        for i, ((rid, _), p) in enumerate(zip(rows, prompts))
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
