"""`storm-jax train sft|grpo|dpo --config=storm_sft --config.optim.lr=2e-5 ...`"""

from __future__ import annotations

import sys

PROG = "storm-jax train"
RECIPES = ("sft", "grpo", "dpo")

USAGE = """usage: storm-jax train sft|grpo|dpo [--config=RECIPE|FILE[:VARIANT]] [--config.KEY=VALUE ...] [--print_config]

  --config        a packaged recipe by name (storm_sft, storm_grpo:tiny) or a config file path
                  (default: tiny_cpu, a tiny Qwen3 on the bundled data, CPU)
  --config.KEY    override any key, absl style, e.g. --config.optim.lr=2e-5 --config.mesh.fsdp=8
                  (`--print_config` shows every key and its value)
  --print_config  print the resolved config and exit
  -h, --help      show this help and exit
"""


def recipes_help() -> str:
    """The packaged recipes, their variants and one line each (for --help)."""
    import importlib

    from storm_jax.config import recipe_names

    lines = ["recipes (--config=NAME[:VARIANT]):"]
    for name in recipe_names():
        try:
            mod = importlib.import_module(f"storm_jax.configs.{name}")
        except Exception as e:  # a broken recipe must not break --help
            lines.append(f"  {name:<18} (cannot be imported: {type(e).__name__})")
            continue
        doc = (mod.__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<18} {doc[0] if doc else ''}")
        for v, text in getattr(mod, "VARIANTS", {}).items():
            lines.append(f"  {name + ':' + v:<18} {text}")
    return "\n".join(lines)


def _help(recipe: str | None) -> str:
    head = USAGE if recipe is None else USAGE.replace("sft|grpo|dpo", recipe, 1)
    return f"{head}\n{recipes_help()}\n"


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax train`."""
    if not argv or argv[0] in ("-h", "--help"):
        print(_help(None))
        return 0
    recipe, rest = argv[0], argv[1:]
    if recipe not in RECIPES:
        print(f"{PROG}: unknown recipe {recipe!r} (available: {', '.join(RECIPES)}; see {PROG} --help)",
              file=sys.stderr)  # fmt: skip
        return 2
    from storm_jax.config import ConfigError, load_config, parse_argv

    prog = f"{PROG} {recipe}"
    spec, overrides, other = parse_argv(rest)
    if "-h" in other or "--help" in other:
        print(_help(recipe))
        return 0
    print_only = "--print_config" in other
    other = [a for a in other if a != "--print_config"]
    if other:
        print(f"{prog}: unknown arguments {other} (see {prog} --help)", file=sys.stderr)
        return 2
    from storm_jax.parallel.multihost import global_device_count

    try:  # distributed first (a pod's backend must not start before it), then the job's global device count
        cfg = load_config(spec, overrides, num_devices=global_device_count())
    except ConfigError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    if cfg.recipe != recipe:
        print(f"{prog}: the config's recipe is {cfg.recipe!r}", file=sys.stderr)
        return 2
    if print_only:
        print(cfg)
        return 0
    from storm_jax.cli_util import UsageError
    from storm_jax.train.preflight import check_inputs

    try:
        check_inputs(cfg)  # before the mesh, model or optimizer exist
    except UsageError as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
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
    if recipe == "dpo":
        from storm_jax.train.dpo import train_dpo

        try:
            out = train_dpo(cfg)
        except ConfigError as e:  # a bad preference row (file:line: field), a refused resume
            print(f"storm-jax train {recipe}: {e}", file=sys.stderr)
            return 2
        print(f"done: step {out['step']} loss {out['loss']:.4f} pair accuracy {out['accuracy']:.3f} "
              f"eval pair accuracy {out['eval_accuracy']:.3f}")  # fmt: skip
        return 0 if out["finite"] else 1
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
