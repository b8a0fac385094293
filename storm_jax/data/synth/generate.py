"""The generation pipeline: sample → (augment) → execute the gold program → check against the independent
matrix form → problem rows and SFT rows. Deterministic for a seed: every instance draws from its own
`random.Random(f"{seed}/{index}")`, so row i does not depend on how many rows come before or after it.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from storm_jax.data.format import render
from storm_jax.data.synth.augment import AUGMENTATIONS, augment
from storm_jax.data.synth.core import Instance
from storm_jax.data.synth.families import ALL_FAMILIES, get_family
from storm_jax.data.synth.runner import RunResult, answers_match
from storm_jax.data.synth.trajectories import SYSTEM_PROMPT, gold_segments, make_bug


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    families: tuple[str, ...] = ALL_FAMILIES
    n: int = 100
    seed: int = 0
    sizes: tuple[int, ...] = (0, 1, 2)
    infeasible_frac: float = 0.1  # share of instances (of families that support it) made infeasible
    augment_frac: float = 0.3  # share of instances that are augmentations of a base instance
    recovery_frac: float = 0.25  # share of trajectories with a failing first attempt
    thinking_frac: float = 0.25  # share of trajectories in the <think> style
    heldout_frac: float = 0.1
    system_prompt: bool = True

    def __post_init__(self):
        for f in self.families:
            get_family(f)
        for name in ("infeasible_frac", "augment_frac", "recovery_frac", "thinking_frac", "heldout_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")


def make_instance(cfg: SynthConfig, index: int, max_tries: int = 8) -> Instance:
    """Instance `index` of a run (family round-robin). Infeasibility intent is enforced by resampling."""
    rng = random.Random(f"{cfg.seed}/{index}")
    fam = get_family(cfg.families[index % len(cfg.families)])
    size = min(rng.choice(cfg.sizes), fam.max_size)
    want_inf = fam.supports_infeasible and rng.random() < cfg.infeasible_frac
    iid = f"synth-s{cfg.seed}-{index:06d}-{fam.name}"
    for _ in range(max_tries):
        p = fam.sample(rng, size, want_inf)
        ref = fam.full_form(p).solve_scipy()
        if (ref == "infeasible") == want_inf and ref != "unbounded":
            break
    aug = "none"
    if rng.random() < cfg.augment_frac:
        kinds = list(AUGMENTATIONS)
        rng.shuffle(kinds)
        for kind in kinds:
            q = augment(fam, kind, p, rng)
            if q is not None:
                p, aug = q, kind
                break
    return fam.instance(p, rng, iid, size, augmentation=aug)


@dataclasses.dataclass
class Verified:
    inst: Instance
    result: RunResult
    answer: float | str


def verify(inst: Instance, result: RunResult) -> tuple[Verified | None, str]:
    """Accept an executed instance only if it ran, printed an answer and matches the matrix form."""
    if result.status != "ok":
        return None, f"exec_{result.status}"
    if result.answer is None:
        return None, "no_answer"
    ref = inst.form.solve_scipy()
    if not answers_match(result.answer, ref):
        return None, "mismatch"
    return Verified(inst, result, result.answer), "ok"


def problem_row(v: Verified, seed: int) -> dict[str, Any]:
    """A row in the benchmark schema (answer null + answer_status for infeasible)."""
    inst = v.inst
    row: dict[str, Any] = {
        "id": inst.id,
        "benchmark": "synth",
        "variant": inst.family,
        "question": inst.question,
        "answer": None if isinstance(v.answer, str) else v.answer,
    }
    if isinstance(v.answer, str):
        row["answer_status"] = v.answer
    row["source"] = f"storm_jax.data.synth seed={seed}"
    row["meta"] = {
        "family": inst.family,
        "problem_type": inst.problem_type,
        "size": inst.size,
        "augmentation": inst.augmentation,
        "num_vars": len(inst.form.names),
        "num_constraints": len(inst.form.rows),
        "program": inst.program,
        "unit_factors": list(inst.unit_factors),
    }
    return row


def sft_rows(v: Verified, cfg: SynthConfig, run: Callable[[str], RunResult]) -> tuple[dict, dict, str]:
    """(chat row, trajectory row, style) for a verified instance; the buggy first attempt is executed too."""
    inst = v.inst
    rng = random.Random(f"{cfg.seed}/traj/{inst.id}")
    style = "thinking" if rng.random() < cfg.thinking_frac else "plain"
    bug = None
    if rng.random() < cfg.recovery_frac:
        made = make_bug(inst.program, rng)
        if made is not None:
            bad_code, diagnosis = made
            res = run(bad_code)
            if res.status == "error":  # the failure shown is the real one
                bug = (bad_code, res.output, diagnosis)
    segs = gold_segments(inst, v.result.output, v.answer, style=style, bug=bug)
    style_name = style + ("+recovery" if bug else "")
    prompt = ([{"role": "system", "content": SYSTEM_PROMPT}] if cfg.system_prompt else []) + [
        {"role": "user", "content": inst.question}
    ]
    chat = {"id": inst.id, "messages": prompt + [{"role": "assistant", "content": render(segs)}]}
    traj: dict[str, Any] = {
        "id": inst.id,
        "messages": prompt,
        "segments": [s.to_json() for s in segs],
        "answer": None if isinstance(v.answer, str) else v.answer,
    }
    if isinstance(v.answer, str):
        traj["answer_status"] = v.answer
    traj["meta"] = {"family": inst.family, "style": style_name, "problem_type": inst.problem_type}
    return chat, traj, style_name


@dataclasses.dataclass
class SynthOutput:
    train_problems: list[dict]
    heldout_problems: list[dict]
    sft_chat: list[dict]
    sft_traj: list[dict]
    stats: dict[str, Any]


def generate(
    cfg: SynthConfig, runner: Any, progress: Callable[[Iterator], Iterator] | None = None, start: int = 0
) -> SynthOutput:
    """Generate `cfg.n` candidate instances, verify each through `runner` and build all rows.

    Rows failing verification are dropped and counted in `stats["dropped"]` by reason, and so are held-out
    problems whose statement is also a training problem's.
    """
    it: Iterator[int] = iter(range(start, start + cfg.n))
    if progress is not None:
        it = progress(it)
    out = SynthOutput([], [], [], [], {})
    dropped: Counter = Counter()
    fams: Counter = Counter()
    styles: Counter = Counter()
    statuses: Counter = Counter()
    augs: Counter = Counter()
    for i in it:
        inst = make_instance(cfg, i)
        v, why = verify(inst, runner.run(inst.program))
        if v is None:
            dropped[f"{inst.family}:{why}"] += 1
            continue
        fams[inst.family] += 1
        statuses["infeasible" if isinstance(v.answer, str) else "optimal"] += 1
        augs[inst.augmentation] += 1
        row = problem_row(v, cfg.seed)
        if random.Random(f"{cfg.seed}/split/{i}").random() < cfg.heldout_frac:
            out.heldout_problems.append(row)
            continue
        out.train_problems.append(row)
        chat, traj, style = sft_rows(v, cfg, runner.run)
        styles[style] += 1
        out.sft_chat.append(chat)
        out.sft_traj.append(traj)
    # A held-out problem must never be one trained on: small families repeat statements by chance.
    seen = {r["question"] for r in out.train_problems}
    kept = [r for r in out.heldout_problems if r["question"] not in seen]
    if len(kept) < len(out.heldout_problems):
        dropped["heldout_also_in_train"] += len(out.heldout_problems) - len(kept)
        out.heldout_problems = kept
    out.stats = {
        "seed": cfg.seed,
        "candidates": cfg.n,
        "verified": sum(fams.values()),
        "dropped": dict(sorted(dropped.items())),
        "families": dict(sorted(fams.items())),
        "answer_status": dict(sorted(statuses.items())),
        "augmentation": dict(sorted(augs.items())),
        "styles": dict(sorted(styles.items())),
        "train_problems": len(out.train_problems),
        "heldout_problems": len(out.heldout_problems),
        "sft_rows": len(out.sft_chat),
    }
    return out


def questions(cfg: SynthConfig, indices: Sequence[int]) -> list[str]:
    """Statements only (no execution) — for duplicate and overlap checks."""
    return [make_instance(cfg, i).question for i in indices]
