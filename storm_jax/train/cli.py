"""`storm-jax train sft --config=configs/storm_sft.py --config.optim.lr=2e-5 ...`"""

from __future__ import annotations

import sys

USAGE = """usage: storm-jax train sft|grpo [--config=FILE[:ARG]] [--config.KEY=VALUE ...]

  --config      a config file (default: configs/tiny_cpu.py, a tiny Qwen3 on the bundled data, CPU)
  --config.KEY  override any key, absl style, e.g. --config.optim.lr=2e-5 --config.mesh.fsdp=8
  --print_config  print the resolved config and exit
"""


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax train`."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    recipe, rest = argv[0], argv[1:]
    if recipe not in ("sft", "grpo"):
        print(
            f"storm-jax train: unknown recipe {recipe!r} (available: sft, grpo)\n\n{USAGE}", file=sys.stderr
        )
        return 2
    from storm_jax.config import ConfigError, load_config, parse_argv

    spec, overrides, other = parse_argv(rest)
    print_only = "--print_config" in other
    other = [a for a in other if a != "--print_config"]
    if other:
        print(f"storm-jax train {recipe}: unknown arguments {other}\n\n{USAGE}", file=sys.stderr)
        return 2
    import jax

    try:
        cfg = load_config(spec, overrides, num_devices=jax.device_count())
    except ConfigError as e:
        print(f"storm-jax train {recipe}: config error: {e}", file=sys.stderr)
        return 2
    if cfg.recipe != recipe:
        print(f"storm-jax train {recipe}: the config's recipe is {cfg.recipe!r}", file=sys.stderr)
        return 2
    if print_only:
        print(cfg)
        return 0
    if recipe == "grpo":
        from storm_jax.train.grpo import run_grpo

        try:
            out = run_grpo(cfg)
        except ConfigError as e:  # e.g. a resume that would change the architecture (nothing was written)
            print(f"storm-jax train {recipe}: {e}", file=sys.stderr)
            return 2
        curve = " ".join(f"{r:.2f}" for r in out["curve"])
        print(f"done: step {out['step']} reward curve [{curve}]")
        return 0
    from storm_jax.train.sft import train_sft

    try:
        out = train_sft(cfg)
    except ConfigError as e:
        print(f"storm-jax train {recipe}: {e}", file=sys.stderr)
        return 2
    print(f"done: step {out['step']} loss {out['loss']:.4f} eval_loss {out['eval_loss']:.4f}")
    return 0 if out["finite"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
