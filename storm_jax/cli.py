"""The `storm-jax` command: a thin dispatcher to one module per subcommand.

Each subcommand lives in its own module and exposes `main(argv: list[str]) -> int`; it is imported only
when used so `storm-jax --help` stays fast and a broken optional dependency cannot break other commands.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Modules parse their own arguments.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": (
        "storm_jax.sampling.generate_cli",
        "sample completions (optionally with tool use) from a checkpoint",
    ),
    "convert": (
        "storm_jax.models.convert_cli",
        "convert an HF checkpoint directory <-> an Orbax params checkpoint",
    ),
    "score": ("storm_jax.eval.score", "score a completions JSONL on the OR benchmarks (pass@1/pass@k/maj)"),
    "synth": ("storm_jax.data.synth.cli", "generate verified synthetic OR problems and gold trajectories"),
    "sft-data": ("storm_jax.data.pipeline", "check an SFT JSONL: bad rows, token counts, packing efficiency"),
    "train": ("storm_jax.train.cli", "train: `train sft|grpo --config=configs/...`"),
    "export": ("storm_jax.train.export_cli", "export a training checkpoint as an HF checkpoint directory"),
    "pipeline": ("storm_jax.pipeline", "run the STORM recipe end to end: SFT -> score -> GRPO -> score"),
}


def _usage() -> str:
    lines = ["usage: storm-jax <command> [args...]", "", "commands:"]
    for name, (_, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines.append("")
    lines.append("Run `storm-jax <command> --help` for the command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"storm-jax: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(
                f"storm-jax: command {name!r} is not available in this build ({module_name} missing)",
                file=sys.stderr,
            )
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
