"""Critique generation throughput vs plain decode of the same model at the same batch (one timed run each).

Model: a tiny random Qwen3 over the real vocabulary (or --genprm DIR). Prompts: GenPRM critique prompts of the
bundled arith gold trajectories. Plain decode = `Sampler.run` on the same prompt ids with the same engine and
sampling params; critique generation = `CritiqueGenerator.generate` (prompt building, the rollout wrapper,
parsing included). tok/s = generated tokens / wall, after one untimed warm-up call of each (compilation).

    python bench/steporlm_critique_speed.py [--batch 8] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RES = Path(__file__).resolve().parents[1] / "storm_jax" / "resources" / "tiny" / "arith"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--genprm", default=None)
    a = ap.parse_args(argv)
    import jax

    from storm_jax.configs.model_presets import PRESETS
    from storm_jax.models.qwen import ModelConfig, init_params
    from storm_jax.sampling.sampler import EngineConfig, Request, Sampler
    from storm_jax.steporlm.generation import CritiqueGenerator, load_model
    from storm_jax.steporlm.policy_format import segment_steps
    from storm_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(a.genprm)
    if a.genprm:
        cfg, params = load_model(a.genprm)
    else:
        spec = {k: v for k, v in PRESETS["tiny"].items() if k in ModelConfig.__dataclass_fields__}
        cfg = ModelConfig(**spec)
        params = init_params(cfg, jax.random.key(0))
    problems = {json.loads(x)["id"]: json.loads(x)["question"] for x in open(RES / "train.problems.jsonl")}
    items = []
    for line in open(RES / "train.sft_traj.jsonl"):
        t = json.loads(line)
        items.append((problems[t["id"]], segment_steps(segments=t["segments"])))
        if len(items) == a.batch:
            break
    max_len = 1024
    gen = CritiqueGenerator(cfg, params, tok, num_slots=a.batch, max_len=max_len, max_new_tokens=a.new_tokens)
    prompts = [gen.prompt_ids(q, s) for q, s in items]
    plain = Sampler(params, cfg, EngineConfig(num_slots=a.batch, max_len=max_len, chunk_size=16))
    reqs = [Request(p, gen.sampling, seed=i) for i, p in enumerate(prompts)]

    def run_plain() -> int:
        return sum(len(s.tokens) for g in plain.run(reqs) for s in g)

    def run_crit() -> int:
        return sum(g.new_tokens for g in gen.generate(items))

    run_plain(), run_crit()  # compile
    t0 = time.perf_counter()
    n_plain = run_plain()
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_crit = run_crit()
    t_crit = time.perf_counter() - t0
    r_plain, r_crit = n_plain / t_plain, n_crit / t_crit
    print(json.dumps({"batch": a.batch, "plain_tokens": n_plain, "plain_tok_s": round(r_plain, 1),
                      "critique_tokens": n_crit, "critique_tok_s": round(r_crit, 1),
                      "ratio": round(r_crit / r_plain, 3)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
