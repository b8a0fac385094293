"""StepORLM's self-evolving loop: policy <-> GenPRM (storm-jax evolve).

    warmup/   policy SFT on the warm-up trajectories (data.path)      -> warmup/policy   (HF dir)
              GenPRM SFT on programmatic critiques of gold + flawed   -> warmup/genprm
              solutions of the round problems
    round_r/  samples.jsonl     k policy samples per problem, executed + verified (the real pool)
              critiques.jsonl   the GenPRM's critique of every sample (and the programmatic critic's)
              pairs.jsonl       token-level preference rows, pair_stats.json
              policy/           after weighted DPO (storm_jax.train.dpo.train_dpo)
              genprm/           after SFT on its solver-agreeing critiques (storm_jax.train.sft.train_sft)
              metrics.json      the round's metrics row (also <workdir>/metrics.jsonl)

Every stage reads its inputs from disk and writes its outputs atomically, then a `<stage>.done` marker; a
rerun skips done stages. A stage killed midway restarts from its inputs (its partial training run directory
is removed unless it holds a checkpoint to resume from). Sampling is seeded per request and training is
deterministic on a fixed device set, so a killed-and-rerun loop writes the same files as an uninterrupted one.
Timings go to timings.json only (never into the compared outputs).
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from typing import Any

import ml_collections

from storm_jax.steporlm import critic as critic_mod
from storm_jax.steporlm.genprm import build_critique_messages
from storm_jax.steporlm.pairs import build_pairs
from storm_jax.steporlm.policy_format import policy_messages, segment_steps

EOT = "<|im_end|>"


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Rows as JSONL, atomically."""
    _write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def write_json(path: str, obj: Any) -> None:
    """An object as JSON, atomically."""
    _write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def solution_text(text: str) -> str:
    """The response up to its end-of-turn token (what is segmented into steps and critiqued)."""
    return text.split(EOT)[0]


def stage_config(
    cfg: ml_collections.ConfigDict, workdir: str, recipe: str, **kw: Any
) -> ml_collections.ConfigDict:
    """A copy of cfg for one training stage: its own workdir, no eval; keys `section__name=value` set."""
    c = copy.deepcopy(cfg)
    c.unlock()
    c.recipe, c.workdir, c.init_from_hf, c.init_from_params = recipe, workdir, "", ""
    c.data.eval_path, c.train.eval_every = "", 0
    for k, v in kw.items():
        sec, name = k.split("__")
        c[sec][name] = v
    return c


class Evolve:
    """One evolve run in cfg.workdir (see the module docstring)."""

    def __init__(self, cfg: ml_collections.ConfigDict, echo: Callable[[str], None] = print):
        from storm_jax.data.benchmarks import read_rows
        from storm_jax.tokenizer import config_tokenizer
        from storm_jax.train.setup import resolve_model_config

        self.cfg, self.e, self.echo = cfg, cfg.evolve, echo
        self.root = os.path.abspath(cfg.workdir)
        self.all_rows = read_rows(self.e.problems_path)
        self.rows = self.all_rows[: self.e.num_problems] if self.e.num_problems else self.all_rows
        self.by_id = {r.id: r for r in self.all_rows}
        self.model_cfg = resolve_model_config(cfg)
        self.tok = config_tokenizer(cfg, self.model_cfg.vocab_size)
        self.timings: dict[str, float] = {}
        self._pool = None

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def done(self, d: str, stage: str) -> bool:
        return os.path.exists(self.path(d, f"{stage}.done"))

    def mark(self, d: str, stage: str, t0: float) -> None:
        _write_atomic(self.path(d, f"{stage}.done"), "")
        self.timings[f"{d}/{stage}"] = round(time.perf_counter() - t0, 2)
        write_json(self.path("timings.json"), self.timings)

    def fresh_run_dir(self, d: str) -> str:
        """A training stage's run directory: kept when it holds a checkpoint (resume), else emptied."""
        from storm_jax.train.checkpoint import latest_step_on_disk

        if os.path.isdir(d) and latest_step_on_disk(d) is None:
            shutil.rmtree(d)
        return d

    @property
    def pool(self):
        if self._pool is None:
            from storm_jax.execution.pool import ExecutionConfig, ExecutionPool

            t = float(self.e.exec_timeout_s)
            self._pool = ExecutionPool(
                num_workers=self.e.exec_workers, config=ExecutionConfig(wall_s=t, cpu_s=t)
            )
        return self._pool

    def load(self, d: str):
        from storm_jax.steporlm.generation import load_model

        return load_model(self.path(d), what=d)[1]

    def save(self, params: Any, d: str) -> None:
        from storm_jax.steporlm.generation import save_model

        save_model(self.model_cfg, params, self.path(d), tokenizer=self.tok)

    def copy_model(self, src: str, dst: str) -> None:
        tmp = self.path(dst) + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.path(src), tmp)
        shutil.rmtree(self.path(dst), ignore_errors=True)
        os.replace(tmp, self.path(dst))

    # -- warm-up ---------------------------------------------------------------------------------------------
    def warmup(self) -> None:
        import jax

        from storm_jax.models.qwen import init_params
        from storm_jax.train.sft import train_sft

        os.makedirs(self.path("warmup"), exist_ok=True)
        if not self.done("warmup", "policy"):
            t0 = time.perf_counter()
            if self.e.warmup:
                c = stage_config(self.cfg, self.fresh_run_dir(self.path("warmup", "policy_sft")), "sft")
                c.init_from_hf = self.cfg.init_from_hf
                res = train_sft(c, echo=self.echo)
                params = jax.device_get(res["state"].params)
                write_json(
                    self.path("warmup", "policy_sft.json"), {"loss": res["loss"], "steps": res["step"]}
                )
            elif self.cfg.init_from_hf:
                params = self.load_external(self.cfg.init_from_hf)
            else:
                params = init_params(self.model_cfg, jax.random.key(self.cfg.seed))
            self.save(params, "warmup/policy")
            self.mark("warmup", "policy", t0)
        if not self.done("warmup", "genprm"):
            t0 = time.perf_counter()
            if self.e.genprm_init:
                params = self.load_external(self.e.genprm_init)
            else:  # a seeded init of the policy's architecture, distinct from the policy's
                params = init_params(self.model_cfg, jax.random.key(self.cfg.seed + 1))
            rows = self.genprm_warmup_rows() if self.e.genprm_warmup_steps else []
            write_jsonl(self.path("warmup", "genprm_rows.jsonl"), rows)
            if rows:  # none without synthetic problems (no gold program for the critic) or STORM warm-up rows
                res = self.genprm_sft(
                    rows, params, self.path("warmup", "genprm_sft"), self.e.genprm_warmup_steps
                )
                params = jax.device_get(res["state"].params)
                write_json(self.path("warmup", "genprm_sft.json"), {"loss": res["loss"], "rows": len(rows)})
            self.save(params, "warmup/genprm")
            self.mark("warmup", "genprm", t0)

    def load_external(self, path: str):
        from storm_jax.steporlm.generation import load_model

        return load_model(path, what=path)[1]

    def genprm_warmup_rows(self) -> list[dict]:
        """Programmatic critiques of gold and flawed solutions (flawed programs really run) as chat rows."""
        from storm_jax.steporlm.weak import FLAWS, gold_parts, plant_flaw, storm_solution

        trajs = (
            [r for r in read_jsonl(self.cfg.data.path) if r.get("id") in self.by_id]
            if self.cfg.data.path
            else []
        )
        # STORM-layout trajectories (segments) of problems with a gold program; a few dozen keep it cheap
        trajs = [t for t in trajs if "segments" in t and self.by_id[t["id"]].meta.get("program")]
        trajs = trajs[: self.e.genprm_warmup_trajs]
        rng = random.Random(self.cfg.seed)
        items, runs = [], []
        for t in trajs:
            row = self.by_id[t["id"]]
            items.append((row, "".join(s["text"] for s in t["segments"])))
            intro, prog = gold_parts(t["segments"])
            if self.e.genprm_warmup_truncated and intro:
                items.append((row, intro))  # stopped before its program: one step, "no program"
            flawed = plant_flaw(prog, FLAWS[rng.randrange(len(FLAWS))], rng)
            if flawed is not None:
                runs.append((row, intro, flawed))
        results = self.pool.map([p for _, _, p in runs]) if runs else []
        for (row, intro, prog), res in zip(runs, results):
            boxed = (
                None
                if res.answer is None
                else f"{res.answer:g}"
                if not isinstance(res.answer, str)
                else res.answer
            )
            items.append((row, storm_solution(intro, prog, res.stdout or res.stderr[-300:], boxed)))
        for j in range(self.e.genprm_warmup_babble):  # a policy that writes noise: one step, "no program"
            items.append((self.by_id[trajs[j % len(trajs)]["id"]], self.babble(rng)))
        out = []
        for row, text in items:
            crit, parsed, steps = critic_mod.critique(
                row.question, row.meta["program"], text, style=self.e.critique_style
            )
            if parsed.ok:
                out.append(self.critique_row(row.question, steps, crit))
        return out

    def babble(self, rng: random.Random) -> str:
        """Seeded random tokens of the vocabulary without blank lines or code fences: what a barely trained
        policy writes (warm-up data for the GenPRM, so noise is not out of its distribution in round 1)."""
        vocab = len(self.tok)
        n = rng.randrange(self.e.max_response_tokens // 4, self.e.max_response_tokens + 1)
        text = self.tok.decode([rng.randrange(vocab) for _ in range(n)], skip_special_tokens=True)
        while "\n\n" in text:
            text = text.replace("\n\n", "\n")
        return text.replace("```", "``").replace("\\boxed", "boxed").strip() or "x"

    @staticmethod
    def critique_row(question: str, steps, critique_text: str) -> dict:
        return {
            "messages": build_critique_messages(question, steps)
            + [{"role": "assistant", "content": critique_text}]
        }

    def genprm_sft(self, rows: list[dict], params: Any, workdir: str, steps: int, lr: float = 0.0) -> dict:
        from storm_jax.train.sft import train_sft

        e = self.e
        c = stage_config(self.cfg, self.fresh_run_dir(workdir), "sft", train__steps=steps, optim__lr=lr or e.genprm_lr,
                         data__seq_len=e.genprm_seq_len, data__enable_thinking=False, optim__warmup_steps=0,
                         data__batch_size=e.genprm_batch_size or self.cfg.data.batch_size,
                         data__overlong="drop")  # a cut row would lose its critique: the target  # fmt: skip
        return train_sft(c, rows=rows, params=params, echo=self.echo)

    # -- a round ---------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Warm-up, then every round; returns the metrics rows."""
        try:
            self.warmup()
            prev = "warmup"
            metrics = []
            for r in range(1, self.e.rounds + 1):
                d = f"round_{r}"
                os.makedirs(self.path(d), exist_ok=True)
                from storm_jax.steporlm.evolve_round import run_round

                metrics.append(run_round(self, r, d, prev))
                prev = d
                write_jsonl(self.path("metrics.jsonl"), metrics)
            return metrics
        finally:
            if self._pool is not None:
                self._pool.close()


def prompt_messages(e: ml_collections.ConfigDict, question: str) -> list[dict]:
    """The policy prompt of the configured layout."""
    return policy_messages(
        question, system=e.system_prompt, layout="titled" if e.layout == "titled" else "storm"
    )


def steps_of(text: str):
    """The critique steps of a sample's response."""
    return segment_steps(solution_text(text))


def pair_samples(samples: list[dict], critiques: list[dict], scorer: str) -> list[dict]:
    """Pair-rule inputs: outcome from the solver, score from the configured scorer (None when unparsed)."""
    out = []
    for s, c in zip(samples, critiques, strict=True):
        src = c.get(scorer) or {}
        out.append({"problem_id": s["problem_id"], "sample_index": s["sample_index"], "correct": s["correct"],
                    "score": src.get("score") if src.get("ok") else None})  # fmt: skip
    return out


__all__ = ["Evolve", "build_pairs", "pair_samples", "read_jsonl", "stage_config", "write_json", "write_jsonl"]
