"""`storm-jax genprm score`: GenPRM critiques and process scores of trajectories (storm_jax.steporlm.genprm).

Input rows (JSONL): the problem as `question` or `problem` (or an `id` / `problem_id` found in --problems), the
solution as `text`, `completion` or `segments`. Output rows: the input's id keys plus num_steps, critique,
ok, failure, verdicts, final, score (None when the critique failed to parse).
"""

from __future__ import annotations

import json
import sys

from storm_jax.cli_util import ArgumentParser, UsageError, check_file, fail

PROG = "storm-jax genprm"


def build_parser() -> ArgumentParser:
    """The argument parser of `storm-jax genprm`."""
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("score",))
    p.add_argument("--genprm", required=True, help="the GenPRM's HF checkpoint directory")
    p.add_argument("--trajectories", required=True, help="JSONL of solutions (see module docstring)")
    p.add_argument("--out", required=True, help="JSONL of critiques and process scores")
    p.add_argument("--problems", default=None, help="benchmark-schema JSONL to look problems up by id")
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--max-len", type=int, default=4096)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    return p


def read_items(path: str, problems: str | None) -> list[tuple[dict, str, str]]:
    """(id keys, problem, solution text) per row; a bad row errors with file:line and the key."""
    from storm_jax.data.benchmarks import read_rows

    by_id = {r.id: r.question for r in read_rows(problems)} if problems else {}
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            keys = {k: obj[k] for k in ("id", "problem_id", "sample_index") if k in obj}
            q = obj.get("question") or obj.get("problem") or by_id.get(obj.get("problem_id") or obj.get("id"))
            if not isinstance(q, str):
                raise UsageError(f"{path}:{n}: key 'question': missing (and no --problems row for its id)")
            if isinstance(obj.get("segments"), list):
                text = "".join(s["text"] for s in obj["segments"])
            else:
                text = obj.get("text", obj.get("completion"))
            if not isinstance(text, str):
                raise UsageError(f"{path}:{n}: key 'text': a solution needs text, completion or segments")
            out.append((keys, q, text.split("<|im_end|>")[0]))
    return out


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax genprm`."""
    args = build_parser().parse_args(argv)
    try:
        check_file(args.trajectories, "--trajectories")
        items = read_items(args.trajectories, args.problems)
        from storm_jax.steporlm.generation import CritiqueGenerator, load_model
        from storm_jax.steporlm.policy_format import segment_steps
        from storm_jax.tokenizer import load_tokenizer

        cfg, params = load_model(args.genprm)
        gen = CritiqueGenerator(cfg, params, load_tokenizer(args.genprm), num_slots=args.slots,
                                max_len=args.max_len, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, seed=args.seed)  # fmt: skip
    except UsageError as e:
        return fail(PROG, str(e))
    steps = [segment_steps(t) for _, _, t in items]
    out = gen.generate([(q, s) for (_, q, _), s in zip(items, steps)])
    n_ok = 0
    with open(args.out + ".tmp", "w", encoding="utf-8") as f:
        for (keys, _, _), s, g in zip(items, steps, out):
            c = g.critique
            n_ok += c.ok
            row = {**keys, "num_steps": len(s), "critique": g.text, "ok": c.ok, "failure": c.failure,
                   "verdicts": c.verdicts, "final": c.final, "score": sum(c.verdicts) / len(s) if c.ok else None}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    import os

    os.replace(args.out + ".tmp", args.out)
    print(
        f"{PROG}: {len(items)} critiques, {len(items) - n_ok} parse failures -> {args.out}", file=sys.stderr
    )
    return 0
