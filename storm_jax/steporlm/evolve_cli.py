"""`storm-jax evolve`: StepORLM's self-evolving policy <-> GenPRM loop (storm_jax.steporlm.evolve)."""

from __future__ import annotations

import sys
import time

USAGE = """usage: storm-jax evolve --config=steporlm_evolve[:tiny] [--config.KEY=VALUE ...]

Warm-up SFT, then config.evolve.rounds rounds of {policy samples -> execute + verify -> GenPRM critiques ->
pairs -> weighted DPO -> GenPRM SFT on solver-agreeing critiques}. Outputs under config.workdir (per round:
samples, critiques, pairs, both checkpoints, a metrics row; metrics.jsonl). Killed, a rerun resumes.
Ablations: evolve.frozen_genprm, evolve.pair_mode=plain|outcome_only, evolve.warmup=false.
"""

PROG = "storm-jax evolve"


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax evolve`."""
    import jax

    from storm_jax.cli_util import UsageError, fail
    from storm_jax.config import ConfigError, load_config, parse_argv

    spec, overrides, other = parse_argv(argv)
    if "-h" in other or "--help" in other:
        print(USAGE)
        return 0
    if other:
        return fail(PROG, f"unknown arguments {other} (see {PROG} --help)")
    try:
        cfg = load_config(spec or "steporlm_evolve:tiny", overrides, num_devices=jax.device_count())
    except ConfigError as e:
        return fail(PROG, f"config error: {e}")
    if cfg.recipe != "evolve":
        return fail(PROG, f"the config's recipe is {cfg.recipe!r}, expected 'evolve'")
    from storm_jax.steporlm.evolve import Evolve

    if cfg.evolve.compile_cache:  # stages that jit the same step again (round 2's DPO, ...) load it instead
        import os

        jax.config.update(
            "jax_compilation_cache_dir", os.path.join(os.path.abspath(cfg.workdir), "jax_cache")
        )
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    t0 = time.perf_counter()
    try:
        rows = Evolve(cfg).run()
    except UsageError as e:
        return fail(PROG, str(e))
    for m in rows:
        print(
            f"round {m['round']}: accuracy {m['accuracy']:.3f}  parse failures {m['parse_failure_rate']:.3f}  "
            f"GenPRM agreement {m['genprm_agreement']}  pairs {m['pairs']} {m['pairs_by_kind']}"
        )
    print(f"evolve: {len(rows)} rounds in {time.perf_counter() - t0:.0f} s; {cfg.workdir}/metrics.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
