"""`storm-jax calm`: CALM data curation into a resumable work directory.

    storm-jax calm --config=calm:tiny                                   # offline, CPU, about a minute
    storm-jax calm --config=calm --config.reasoner.checkpoint=DIR --config.intervener.base_url=URL \\
        --config.intervener.model=NAME --config.intervener.api_key_env=MY_KEY_VAR

Writes <workdir>/golden.jsonl (token-level SFT rows: `storm-jax train sft --config.data.path=...`),
results.jsonl, stats.json, config.json (holds the key's variable name, never the key) and, for a model
intervener, cache/intervener (every request answered once; a rerun re-sends nothing). Killed, the same
command continues where it stopped. `--print_config` shows the resolved config.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROG = "storm-jax calm"
USAGE = "usage: storm-jax calm [--config=NAME[:VARIANT]] [--config.KEY=VALUE ...] [--print_config]"


def build(cfg):
    """(loop, problems, pool) from a validated CALM config; the caller closes the pool."""
    import jax

    from storm_jax.calm.loop import CalmLoop
    from storm_jax.calm.programmatic import ProgrammaticIntervener
    from storm_jax.clients import make_client
    from storm_jax.execution.pool import ExecutionPool
    from storm_jax.jobs import read_problems
    from storm_jax.sampling.rollout import RolloutConfig
    from storm_jax.sampling.sampler import EngineConfig, Sampler, SamplingParams
    from storm_jax.tokenizer import eos_ids, load_tokenizer

    r = cfg.reasoner
    problems = read_problems(cfg.problems_path, cfg.num_problems)
    tok = load_tokenizer(r.checkpoint or None)
    if r.checkpoint:
        from storm_jax.models.hf import load_hf_checkpoint

        mcfg, params = load_hf_checkpoint(r.checkpoint, "float32")
    else:
        from storm_jax.configs.model_presets import preset
        from storm_jax.models.qwen import ModelConfig, init_params

        mcfg = ModelConfig(**{**preset(r.random_preset), "dtype": "float32", "param_dtype": "float32"})
        params = init_params(mcfg, jax.random.key(cfg.seed))
    engine = EngineConfig(num_slots=r.num_slots, max_len=r.max_len, chunk_size=r.decode_chunk,
                          max_bucket=min(512, r.max_len))  # fmt: skip
    sp = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                        max_new_tokens=r.max_response_tokens, eos_ids=tuple(eos_ids(tok)))  # fmt: skip
    rc = RolloutConfig(sampling=sp, max_tool_calls=r.max_tool_calls, max_output_chars=r.max_output_chars,
                       exec_timeout_s=r.exec_timeout_s)  # fmt: skip
    pool = ExecutionPool(num_workers=r.exec_workers)
    iv = cfg.intervener
    if iv.kind == "programmatic":
        intervener = ProgrammaticIntervener(problems, pool, timeout_s=r.exec_timeout_s)
    else:
        intervener = make_client(
            iv, cache_dir=str(Path(cfg.workdir) / "cache" / "intervener"), key="intervener"
        )
    loop = CalmLoop(params, mcfg, tok, Sampler(params, mcfg, engine), pool, rc, intervener,
                    max_interventions=cfg.max_interventions, seed=cfg.seed, system_prompt=cfg.system_prompt,
                    enable_thinking=cfg.enable_thinking, hint_template=cfg.hint_template, protocol=cfg.protocol,
                    intervener_params={"temperature": iv.temperature, "max_tokens": iv.max_tokens},
                    judge_workers=int(iv.max_concurrency))  # fmt: skip
    return loop, problems, pool


def main(argv: list[str]) -> int:
    from storm_jax.calm.config import load_calm_config
    from storm_jax.cli_util import fail
    from storm_jax.config import ConfigError, parse_argv, save_config

    if any(a in ("-h", "--help") for a in argv):
        from storm_jax.train.cli import recipes_help

        print(f"{USAGE}\n\n{__doc__.strip()}\n\n{recipes_help()}")
        return 0
    spec, overrides, rest = parse_argv(argv)
    show = "--print_config" in rest
    rest = [a for a in rest if a != "--print_config"]
    if rest:
        return fail(PROG, f"unknown arguments {rest} (use --config=NAME[:VARIANT] and --config.KEY=VALUE)")
    try:
        cfg = load_calm_config(spec, overrides)
    except ConfigError as e:
        return fail(PROG, str(e))
    if show:
        print(cfg)
        return 0
    if not Path(cfg.problems_path).is_file():
        return fail(PROG, f"problems_path: no such file {cfg.problems_path}")
    from storm_jax.calm.job import run_calm_job
    from storm_jax.clients import ClientError

    try:
        loop, problems, pool = build(cfg)
    except (ValueError, ClientError) as e:  # e.g. an unset key variable, a bad problems file
        return fail(PROG, str(e))
    save_config(cfg, cfg.workdir)
    try:
        stats = run_calm_job(loop, problems, cfg.workdir, batch_size=cfg.batch_size, progress=cfg.progress)
    finally:
        pool.close()
    print(json.dumps({k: stats[k] for k in ("problems", "golden", "golden_yield", "hint_token_share")}))
    print(f"wrote {Path(cfg.workdir) / 'golden.jsonl'}", file=sys.stderr)
    return 0
