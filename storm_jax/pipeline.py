"""`storm-jax pipeline`: the whole STORM recipe at tiny scale, end to end.

  1. SFT of a Qwen3 on tool-integrated trajectories          (storm_jax.train.sft.train_sft)
  2. score the SFT model on held-out problems                 (rollouts + the shared verifier, storm_jax/verify.py)
  3. GRPO with the execution pool in the loop                 (storm_jax.train.grpo.train_grpo)
  4. score again, print the reward curve and a before/after table, save reward_curve.png

Everything runs through the same modules the full-scale recipes use; only the config is small.
Outputs land in <workdir>/{sft,grpo}/ plus <workdir>/report.md, report.json and reward_curve.png.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from storm_jax.train.dynamic_sampling import draw_cap

USAGE = """usage: storm-jax pipeline [--config=RECIPE|FILE[:VARIANT]] [--config.KEY=VALUE ...]

Runs SFT -> score -> GRPO -> score on the config's data (default: the storm_tiny recipe, a tiny Qwen3 on the
bundled synthetic problems, CPU, ~10 minutes; storm_tiny:smoke runs in seconds) and writes a report, a reward
curve PNG and checkpoints under config.workdir. --config takes a packaged recipe's name or a file path.
"""


def sample_and_verify(
    params: Any,
    model_cfg: Any,
    tokenizer: Any,
    problems_path: str,
    g: ml_collections.ConfigDict,
    executor: Any,
    *,
    limit: int = 0,
    samples: int = 1,
    seed: int = 0,
) -> tuple[list, list, list]:
    """Roll out on the problems of a file (greedy when samples == 1, else g's sampling) and verify each
    trajectory from its recorded executions (protocol from g); returns (rows, trajectories, results).

    Nothing is executed twice: the rollout's code interpreter already ran every program the model wrote, and
    the shared verifier (storm_jax/verify.py) reads their results from the trajectories.
    """
    from storm_jax import verify
    from storm_jax.data.benchmarks import read_rows
    from storm_jax.rewards import ScoringConfig
    from storm_jax.sampling.rollout import RolloutRequest, rollout
    from storm_jax.sampling.sampler import Sampler
    from storm_jax.tokenizer import eos_ids
    from storm_jax.train.grpo import engine_config, rollout_config

    rows = read_rows(problems_path)
    if limit:
        rows = rows[:limit]
    reqs = [
        RolloutRequest(
            verify.problem_prompt_ids(
                tokenizer, r.question, system_prompt=g.system_prompt, enable_thinking=g.enable_thinking
            ),
            n=samples,
            seed=seed + i,
        )
        for i, r in enumerate(rows)
    ]
    rcfg = rollout_config(g, eos_ids(tokenizer), greedy=samples == 1)
    sampler = Sampler(params, model_cfg, engine_config(g))
    trajs = rollout(params, model_cfg, tokenizer, reqs, rcfg, executor, sampler=sampler)
    results = verify.verify_trajectories(
        trajs,
        [(rows[t.group].answer, rows[t.group].answer_status) for t in trajs],
        protocol=g.protocol,
        answer_from=g.answer_from,
        config=ScoringConfig(eps=g.epsilon),
    )
    return rows, trajs, results


def evaluate(
    params: Any,
    model_cfg: Any,
    tokenizer: Any,
    problems_path: str,
    g: ml_collections.ConfigDict,
    executor: Any,
    *,
    limit: int = 0,
    samples: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """pass@1 and rollout statistics of `sample_and_verify` on held-out problems."""
    from storm_jax.train.grpo import rollout_stats

    _, trajs, results = sample_and_verify(
        params, model_cfg, tokenizer, problems_path, g, executor, limit=limit, samples=samples, seed=seed
    )
    correct = np.array([r.correct for r in results], np.float32)
    out = {"n": float(len(results)), "pass@1": float(correct.mean()) if len(correct) else 0.0}
    out.update(rollout_stats(trajs))
    failures: dict[str, int] = {}
    for r in results:
        if r.failure:
            failures[r.failure] = failures.get(r.failure, 0) + 1
    out["failures"] = failures  # type: ignore[assignment]
    return out


def ascii_curve(values: list[float], width: int = 40) -> str:
    """A text sparkline of per-step values in [0, 1], one line per step."""
    lines = []
    for i, v in enumerate(values):
        n = int(round(max(0.0, min(1.0, v)) * width))
        lines.append(f"  step {i + 1:>3} | {'#' * n:<{width}} | {v:.3f}")
    return "\n".join(lines)


def save_plot(history: dict[str, list[float]], path: str) -> None:
    """Reward mean and pass rate per GRPO step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    steps = np.arange(1, len(history["reward"]) + 1)
    ax.plot(steps, history["reward"], marker="o", label="reward mean")
    ax.plot(steps, history["pass_rate"], marker="s", label="pass rate")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("per-step mean over G x problems")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("storm-jax pipeline: GRPO reward")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


#: How each `grpo.answer_from` reads a trajectory's answer (for the report's wording).
ANSWER_RULES = {
    "boxed": "the last boxed answer",
    "auto": "the last boxed answer, else the output of the last program that ran",
    "execution": "the output of the last program that ran",
}

#: What the report's numbers mean and what they do not (printed under every report).
MEANING = """\
What these numbers mean: pass@1 is the share of held-out problems ({eval_path}; never trained on) whose greedy
trajectory is correct under the `{protocol}` protocol, the answer taken from `{answer_from}` ({answer_rule});
every program was really executed during the rollout. A rise after SFT
and again after GRPO shows that each stage of the recipe does what it claims on this data. What they do not
mean: this model ({n_params:,} parameters, {vocab:,} vocabulary rows) was trained from a random init for minutes;
on the default's synthetic one-template problems it learns to copy the question's numbers into a fixed program
and (through GRPO's reward) when integrality matters. It is not an OR solver, and these numbers say nothing
about benchmark accuracy at full scale."""


def sampling_line(g: ml_collections.ConfigDict, history: dict[str, list[float]]) -> str:
    """One line on GRPO's draws: with dynamic sampling, how many groups were drawn and how many kept."""
    drawn, kept = sum(history.get("groups_drawn", [])), sum(history.get("groups_kept", []))
    if not g.dynamic_sampling:
        return f"Dynamic sampling off: {int(kept)} of {int(drawn)} groups had non-zero reward variance"
    share = 1.0 - kept / drawn if drawn else 0.0
    return (
        f"Dynamic sampling: {int(drawn)} groups drawn, {int(kept)} kept with non-zero reward variance "
        f"(filtered share {share:.2f}; at most {draw_cap(g)} draws a step)"
    )


def report_table(before: dict, after: dict, protocol: str) -> str:
    keys = [
        (f"pass@1 ({protocol})", "pass@1", "{:.3f}"),
        ("boxed answer share", "boxed_share", "{:.3f}"),
        ("code blocks / sample", "code_blocks", "{:.2f}"),
        ("tool error rate", "tool_error_rate", "{:.3f}"),
        ("response tokens", "response_len", "{:.1f}"),
        ("truncated share", "truncated_share", "{:.3f}"),
    ]
    lines = ["| metric | after SFT | after GRPO |", "|---|---|---|"]
    for label, k, fmt in keys:
        lines.append(f"| {label} | {fmt.format(before[k])} | {fmt.format(after[k])} |")
    lines.append(f"| held-out problems | {int(before['n'])} | {int(after['n'])} |")
    return "\n".join(lines)


def run_pipeline(cfg: ml_collections.ConfigDict, *, echo=print) -> dict[str, Any]:
    """SFT -> score -> GRPO -> score as configured; returns the report dict."""
    from storm_jax.config import save_config
    from storm_jax.execution.pool import ExecutionConfig, ExecutionPool
    from storm_jax.parallel.multihost import ensure_initialized, is_main
    from storm_jax.tokenizer import config_tokenizer
    from storm_jax.train.grpo import train_grpo
    from storm_jax.train.sft import train_sft

    ensure_initialized()  # before any device is touched (a library caller may not have gone through main)
    main_process = is_main()  # the config, plot and report are written once, by process 0
    t_start = time.perf_counter()
    workdir = cfg.workdir
    os.makedirs(workdir, exist_ok=True)
    if main_process:
        save_config(cfg, workdir)
    g = cfg.grpo

    def stage(name: str, recipe: str) -> ml_collections.ConfigDict:
        c = copy.deepcopy(cfg)
        c.unlock()
        c.workdir = os.path.join(workdir, name)
        c.recipe = recipe
        return c

    echo("== 1/4 SFT on tool-integrated trajectories ==")
    t0 = time.perf_counter()
    sft = train_sft(stage("sft", "sft"), echo=echo)
    t_sft = time.perf_counter() - t0
    run = sft["run"]
    params = sft["state"].params
    tokenizer = config_tokenizer(cfg, run.model_cfg.vocab_size)
    exec_cfg = ExecutionConfig(wall_s=g.exec_timeout_s, cpu_s=g.exec_timeout_s)
    with ExecutionPool(num_workers=g.exec_workers, config=exec_cfg) as pool:
        echo(f"== 2/4 score the SFT model on {g.eval_path} ==")
        t0 = time.perf_counter()
        ev = dict(limit=g.eval_problems, samples=g.eval_samples, seed=cfg.seed)
        before = evaluate(params, run.model_cfg, tokenizer, g.eval_path, g, pool, **ev)
        t_eval = time.perf_counter() - t0
        echo(f"   pass@1 {before['pass@1']:.3f} over {int(before['n'])} samples")
        echo("== 3/4 GRPO with the execution pool in the loop ==")
        t0 = time.perf_counter()
        grpo = train_grpo(
            stage("grpo", "grpo"), model_cfg=run.model_cfg, params=params, mesh_rules=run.mesh_rules,
            tokenizer=tokenizer, executor=pool, echo=echo,
        )  # fmt: skip
        t_grpo = time.perf_counter() - t0
        echo("== 4/4 score the GRPO model ==")
        t0 = time.perf_counter()
        after = evaluate(grpo["params"], run.model_cfg, tokenizer, g.eval_path, g, pool, **ev)
        t_eval += time.perf_counter() - t0
    history = {"reward": grpo["curve"], "pass_rate": grpo["pass_curve"],
               "groups_drawn": grpo["groups_drawn"], "groups_kept": grpo["groups_kept"]}  # fmt: skip
    plot = os.path.join(workdir, "reward_curve.png")
    if main_process:
        save_plot(history, plot)
    table = report_table(before, after, g.protocol)
    total = time.perf_counter() - t_start
    timing = f"SFT {t_sft:.0f} s, GRPO {t_grpo:.0f} s, scoring {t_eval:.0f} s, total {total:.0f} s"
    text = "\n".join(
        [
            "# storm-jax pipeline report",
            "",
            f"SFT: {cfg.train.steps} steps on {cfg.data.path}; final loss {sft['loss']:.4f}",
            f"GRPO: {g.steps} steps x {g.problems_per_step} problems x {g.group_size} samples on {g.problems_path}",
            sampling_line(g, history),
            "",
            "## GRPO reward per step",
            "",
            "```",
            ascii_curve(history["reward"]),
            "```",
            "",
            "## Held-out scoring (before / after GRPO)",
            "",
            table,
            "",
            f"Time: {timing} (devices: {jax.device_count()} x {jax.devices()[0].platform})",
            "",
            MEANING.format(
                protocol=g.protocol,
                answer_from=g.answer_from,
                eval_path=g.eval_path,
                answer_rule=ANSWER_RULES.get(g.answer_from, g.answer_from),
                n_params=sum(int(x.size) for x in jax.tree.leaves(params)),
                vocab=run.model_cfg.vocab_size,
            ),  # fmt: skip
        ]
    )
    report = {"before": before, "after": after, "history": history, "sft_loss": sft["loss"], "seconds": total}
    if main_process:
        with open(os.path.join(workdir, "report.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(workdir, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
    echo("")
    echo(text)
    echo(f"\nplot: {plot}\nreport: {os.path.join(workdir, 'report.md')}")
    return report


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax pipeline`."""
    from storm_jax.config import ConfigError, load_config, parse_argv

    spec, overrides, other = parse_argv(argv)
    if "-h" in other or "--help" in other:
        print(USAGE)
        return 0
    if other:
        print(
            f"storm-jax pipeline: unknown arguments {other} (see storm-jax pipeline --help)", file=sys.stderr
        )
        return 2
    from storm_jax.parallel.multihost import global_device_count

    try:  # distributed first (a pod's backend must not start before it), then the global device count
        cfg = load_config(spec or DEFAULT_CONFIG, overrides, num_devices=global_device_count())
    except ConfigError as e:
        print(f"storm-jax pipeline: config error: {e}", file=sys.stderr)
        return 2
    if cfg.recipe != "pipeline":
        print(
            f"storm-jax pipeline: the config's recipe is {cfg.recipe!r}, expected 'pipeline'", file=sys.stderr
        )
        return 2
    from storm_jax.cli_util import UsageError
    from storm_jax.train.preflight import check_inputs

    try:
        check_inputs(cfg)  # missing or corrupt input files: one line before anything is built
    except UsageError as e:
        print(f"storm-jax pipeline: config error: {e}", file=sys.stderr)
        return 2
    run_pipeline(cfg)
    return 0


DEFAULT_CONFIG = "storm_tiny"  # a packaged recipe (storm_jax/configs/storm_tiny.py)
