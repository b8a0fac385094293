"""Learning signal of weighted DPO through `train_dpo` (slow, CPU): the policy's own samples, labelled by the solver.

The start policy is the embedded default's SFT model (storm_tiny: a 2-layer Qwen3 trained 800 steps on the bundled
`cart` trajectories, storm_jax/resources/tiny/cart, with its trimmed tokenizer). It writes a pyomo program for
every problem but declares the item count continuous (`NonNegativeReals`) on about a third of its samples, and
the relaxation's optimum is wrong whenever the capacity is not a multiple of the weight.

1. Pairs as the StepORLM loop builds them: K samples per training problem through the code interpreter
   (`pipeline.sample_and_verify`, the same rollout and verifier as scoring), the solver's verdict labels each,
   and every correct sample beats a failed one of its problem (`steporlm.pairs.build_pairs`, weight 1), kept
   as token rows with the sampled ids and tool-output masks. Held-out pairs are built the same way from samples
   on the held-out problems. DPO from the SFT policy (its own reference): held-out pair accuracy (ties 1/2)
   starts at exactly 0.5 and ends >= 0.8, and the greedy pass@1 on the held-out problems rises.
2. Weighting under label noise. A judge biased toward one kind of wrong answer: besides the pairs above
   ("outcome" pairs), "sign" pairs whose rejected side is a correct sample with a minus sign inserted after
   `\\boxed{` (a wrong answer the solver output contradicts). 30 % of all training pairs are label-flipped, all
   of them sign pairs (two thirds of those), and given weight 0.1. With every weight 1 the flipped sign pairs
   outvote the right ones and the policy learns to prefer the negated answer; with weight 0.1 they are
   outweighed (1 x 1/3 against 0.1 x 2/3 of the sign pairs). Held-out pairs have the same mix, unflipped. Both
   curves are printed (run this file directly to see them).
"""

from __future__ import annotations

import copy
import json
import os

import jax
import numpy as np
import pytest

from storm_jax.config import load_config

K = 4  # samples per problem
N_TRAIN_PROBLEMS = 160
MAX_PAIRS_PER_PROBLEM = 2
DPO_STEPS, DPO_LR, DPO_PAIRS_PER_STEP = 30, 1e-4, 8
FLIP_SHARE, FLIP_WEIGHT = 0.3, 0.1
# Sign pairs per outcome pair: with s sign pairs per outcome pair, the flipped 30 % of all pairs are a share
# 0.3 (1 + s) / s of the sign pairs; s = 0.82 makes that two thirds.
SIGN_PER_OUTCOME = 0.82


def token_row(chosen, rejected, weight: float = 1.0) -> dict:
    """A token-level preference row from two trajectories (or (prompt, ids, mask) triples) of one prompt."""
    c, r = (
        x if isinstance(x, tuple) else (x.prompt_ids, x.response_ids, x.loss_mask) for x in (chosen, rejected)
    )
    assert c[0] == r[0], "a pair shares its prompt"
    return {"prompt_ids": list(c[0]), "chosen_ids": list(c[1]), "chosen_mask": list(c[2]),
            "rejected_ids": list(r[1]), "rejected_mask": list(r[2]), "weight": weight}  # fmt: skip


def negate_answer(tok, traj):
    """(prompt, ids, mask) of a trajectory with a "-" token inserted after its final `\\boxed{`, or None when
    the response's tokens do not end a piece exactly at `\\boxed{`."""
    ids = traj.response_ids
    for k in range(len(ids) - 1, 0, -1):
        if tok.decode(ids[:k]).endswith("\\boxed{") and not tok.decode(ids[: k - 1]).endswith("\\boxed{"):
            minus = tok.encode("-", add_special_tokens=False)
            return (traj.prompt_ids, [*ids[:k], *minus, *ids[k:]],
                    [*traj.loss_mask[:k], *[1] * len(minus), *traj.loss_mask[k:]])  # fmt: skip
    return None


def build_rows(tok, rows, trajs, results):
    """(outcome pairs, sign pairs) as token rows: outcome pairs by the StepORLM rule; sign pairs (one per
    problem, from problems without outcome pairs, in file order) from each one's first correct sample."""
    from storm_jax.steporlm.pairs import Sample, build_pairs

    samples = [Sample(rows[t.group].id, t.sample_index, v.correct, None) for t, v in zip(trajs, results)]
    pairs, _ = build_pairs(samples, mode="outcome_only", max_pairs_per_problem=MAX_PAIRS_PER_PROBLEM)
    by = {(rows[t.group].id, t.sample_index): t for t in trajs}
    outcome = [token_row(by[(p.problem_id, p.chosen)], by[(p.problem_id, p.rejected)]) for p in pairs]
    paired = {p.problem_id for p in pairs}
    sign, seen = [], set()
    for t, v in zip(trajs, results):
        pid = rows[t.group].id
        if v.correct and pid not in paired and pid not in seen and (neg := negate_answer(tok, t)) is not None:
            sign.append(token_row(t, neg))
            seen.add(pid)
    return outcome, sign[: int(round(SIGN_PER_OUTCOME * len(outcome)))]


def flip(rows: list[dict], idx, weight: float) -> list[dict]:
    """Copies of rows with chosen/rejected swapped and `weight` set at the indices idx."""
    out = [dict(r) for r in rows]
    for i in idx:
        r = out[i]
        r["chosen_ids"], r["rejected_ids"] = r["rejected_ids"], r["chosen_ids"]
        r["chosen_mask"], r["rejected_mask"] = r["rejected_mask"], r["chosen_mask"]
        r["weight"] = weight
    return out


def write_rows(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def dpo_config(cfg, workdir: str, eval_path: str):
    """The DPO stage of the evolve loop (steporlm.evolve.stage_config) on storm_tiny, with held-out pairs."""
    from storm_jax.steporlm.evolve import stage_config

    c = stage_config(cfg, workdir, "dpo", train__steps=DPO_STEPS, optim__lr=DPO_LR, optim__warmup_steps=0,
                     data__seq_len=cfg.grpo.max_len, data__batch_size=DPO_PAIRS_PER_STEP, data__pack=False,
                     data__overlong="drop", data__num_epochs=0, train__grad_accum=1)  # fmt: skip
    c.data.eval_path, c.train.eval_every, c.train.log_every, c.train.progress = eval_path, 5, 5, False
    c.dpo.reference = "precomputed"
    return c


def eval_curve(workdir: str) -> list[tuple[int, float]]:
    rec = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [(r["step"], r["pair_accuracy"]) for r in rec if r["split"] == "eval"]


def run_experiment(tmp: str, echo=lambda *a: None) -> dict:
    from storm_jax.execution.pool import ExecutionConfig, ExecutionPool
    from storm_jax.pipeline import evaluate, sample_and_verify
    from storm_jax.tokenizer import config_tokenizer
    from storm_jax.train.dpo import train_dpo
    from storm_jax.train.sft import train_sft

    # One device, as the embedded default runs on a user's CPU (the suite's conftest fakes 8)
    cfg = load_config("storm_tiny", [f"workdir={tmp}", "train.progress=false"], num_devices=1)
    g = cfg.grpo
    sft_cfg = copy.deepcopy(cfg)
    sft_cfg.unlock()
    sft_cfg.workdir, sft_cfg.recipe = os.path.join(tmp, "sft"), "sft"
    # (resumes, a no-op, when tmp already holds the finished run)
    sft = train_sft(sft_cfg, echo=echo, devices=jax.devices()[:1])
    p0, mc = sft["state"].params, sft["run"].model_cfg
    tok = config_tokenizer(cfg, mc.vocab_size)
    out: dict = {}
    with ExecutionPool(
        g.exec_workers, ExecutionConfig(wall_s=g.exec_timeout_s, cpu_s=g.exec_timeout_s)
    ) as pool:

        def pass_rate(params) -> float:
            return evaluate(params, mc, tok, g.eval_path, g, pool, limit=g.eval_problems, seed=cfg.seed)[
                "pass@1"
            ]

        def pairs_of(path: str, limit: int, seed: int):
            rows, trajs, results = sample_and_verify(
                p0, mc, tok, path, g, pool, limit=limit, samples=K, seed=seed
            )
            return build_rows(tok, rows, trajs, results)

        out["pass_start"] = pass_rate(p0)
        train_outcome, train_sign = pairs_of(g.problems_path, N_TRAIN_PROBLEMS, 1000)
        held_outcome, held_sign = pairs_of(g.eval_path, 0, 5000)
        out["pairs"] = {"train_outcome": len(train_outcome), "train_sign": len(train_sign),
                        "held_outcome": len(held_outcome), "held_sign": len(held_sign)}  # fmt: skip
        echo(f"pairs: {out['pairs']}")
        noisy = train_outcome + train_sign
        n_flip = int(round(FLIP_SHARE * len(noisy)))
        assert n_flip <= len(train_sign), out["pairs"]
        flipped = len(train_outcome) + np.random.default_rng(0).permutation(len(train_sign))[:n_flip]
        out["flipped_share_of_sign_pairs"] = n_flip / len(train_sign)
        runs = {
            "clean": (train_outcome, held_outcome),
            "noisy_weighted": (flip(noisy, flipped, FLIP_WEIGHT), held_outcome + held_sign),
            "noisy_unweighted": (flip(noisy, flipped, 1.0), held_outcome + held_sign),
        }
        for name, (rows, held) in runs.items():
            eval_path = write_rows(os.path.join(tmp, f"heldout_{name}.jsonl"), held)
            c = dpo_config(cfg, os.path.join(tmp, name), eval_path)
            res = train_dpo(c, rows=rows, params=p0, echo=echo, devices=jax.devices()[:1])
            out[name] = eval_curve(c.workdir)
            out[f"pass_{name}"] = pass_rate(res["state"].params)
            echo(f"{name}: held-out pair accuracy {out[name]}, greedy pass@1 {out[f'pass_{name}']:.3f}")
    return out


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = run_experiment(str(tmp_path_factory.mktemp("dpo_learning")))
    print(json.dumps(out))
    return out


@pytest.mark.slow
def test_dpo_on_solver_labelled_samples_raises_pair_accuracy_and_greedy_pass_rate(experiment):
    clean = experiment["clean"]
    assert experiment["pairs"]["train_outcome"] >= 40 and experiment["pairs"]["held_outcome"] >= 20, (
        experiment
    )
    assert clean[0] == (0, 0.5)  # the start policy is its own reference: every delta is exactly 0
    assert clean[-1][1] >= 0.8, clean
    # 0.1 = 9 of the 90 held-out problems
    assert experiment["pass_clean"] >= experiment["pass_start"] + 0.1, experiment


@pytest.mark.slow
def test_weights_resist_label_noise(experiment):
    w, u = dict(experiment["noisy_weighted"]), dict(experiment["noisy_unweighted"])
    assert w[0] == u[0] == 0.5
    assert (
        experiment["flipped_share_of_sign_pairs"] > 0.5
    )  # the flipped pairs outvote the right ones unweighted
    # "Clearly higher": the weighted run's held-out accuracy over the second half of the run beats the unweighted
    # one's by 0.2 (the sign pairs are ~45 % of the held-out pairs: learning the flipped preference costs that).
    late = [s for s in sorted(set(w) & set(u)) if s >= DPO_STEPS // 2]
    assert np.mean([w[s] for s in late]) >= np.mean([u[s] for s in late]) + 0.2, (w, u)
    assert w[DPO_STEPS] >= 0.8, w


if __name__ == "__main__":
    import sys

    print(json.dumps(run_experiment(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dpo_learning", echo=print)))
