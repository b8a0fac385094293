"""The `storm-jax` command: a thin dispatcher to one module per subcommand.

Each subcommand lives in its own module and exposes `main(argv: list[str]) -> int`; it is imported only
when used so `storm-jax --help` stays fast and a broken optional dependency cannot break other commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

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
    "train": ("storm_jax.train.cli", "train: `train sft|grpo --config=storm_sft` (recipes by name or path)"),
    "export": ("storm_jax.train.export_cli", "export a training checkpoint as an HF checkpoint directory"),
    "pipeline": ("storm_jax.pipeline", "run the STORM recipe end to end: SFT -> score -> GRPO -> score"),
    "calm": ("storm_jax.calm.cli", "CALM data curation: reasoner + intervener hints -> golden SFT rows"),
    "warmup-data": ("storm_jax.steporlm.warmup_cli", "StepORLM warm-up: teacher solutions, solver-verified"),
    "serve": (
        "storm_jax.serve.cli",
        "OpenAI-compatible server (chat/completions, streaming, optional tools)",
    ),
    "eval": (
        "storm_jax.eval.eval_cli",
        "evaluate: rollouts with tools + scoring per benchmark; merge, compare",
    ),
    "tpu": (
        "storm_jax.tpu",
        "TPU pods: queued-resource create, setup, sync, run on all workers (resumes), stop",
    ),
    "evolve": ("storm_jax.steporlm.evolve_cli", "StepORLM: the self-evolving policy <-> GenPRM loop"),
    "genprm": ("storm_jax.steporlm.genprm_cli", "StepORLM GenPRM: `genprm score` critiques trajectories"),
}


def _usage() -> str:
    lines = ["usage: storm-jax <command> [args...]", "", "commands:"]
    for name, (_, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<12} {text}")
    lines.append("")
    lines.append("Run `storm-jax <command> --help` for the command's options.")
    return "\n".join(lines)


def protocol_descriptions() -> dict[str, str]:
    """Scoring protocol -> what it accepts, from storm_jax.rewards (its PROTOCOL_DESCRIPTIONS, else the
    protocol table of its module docstring, else the rule function's docstring)."""
    from storm_jax import rewards

    table = getattr(rewards, "PROTOCOL_DESCRIPTIONS", None)
    if isinstance(table, dict):
        return {str(k): str(v) for k, v in table.items()}
    out: dict[str, str] = {}
    current = None
    for line in (rewards.__doc__ or "").splitlines():
        head = line.split(None, 1)
        if head and not line[0].isspace() and head[0] in rewards.PROTOCOLS:
            current = head[0]
            out[current] = head[1].strip() if len(head) > 1 else ""
        elif current and line[:1].isspace() and line.strip():
            out[current] += " " + line.strip()  # a continuation line of the table row
        else:
            current = None
    rules = getattr(rewards, "_NUMERIC_RULES", {})
    for name in rewards.PROTOCOLS:
        if not out.get(name):
            out[name] = ((getattr(rules.get(name), "__doc__", None) or "").strip().splitlines() or [""])[0]
    return out


def _protocols_epilog() -> str:
    lines = ["scoring protocols (--protocol):"]
    for name, text in protocol_descriptions().items():
        wrapped = textwrap.wrap(text, width=96) or [""]
        lines.append(f"  {name:<10} {wrapped[0]}")
        lines += [f"  {'':<10} {w}" for w in wrapped[1:]]
    return "\n".join(lines)


def _command_help(name: str, module) -> str | None:
    """--help of a command whose module exposes its argparse parser, with defaults (and, for score, the
    protocols); None for commands that print their own help."""
    from storm_jax.cli_util import show_defaults

    factory = getattr(module, "build_parser", None) or getattr(module, "_parser", None)
    if factory is None:
        return None
    parser = show_defaults(factory())
    if name == "score":
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.epilog = _protocols_epilog()
    return parser.format_help()


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
    if any(a in ("-h", "--help") for a in rest):
        text = _command_help(name, module)
        if text is not None:
            print(text, end="")
            return 0
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
