"""Learning signal of weighted DPO through `train_dpo` (slow, CPU, tiny Qwen3).

Pairs from the bundled synthetic problems (storm_jax/resources/tiny/arith): chosen = a problem's gold trajectory
(model, solver output, `\\boxed{answer}`), rejected = the same trajectory with a wrong final answer (the sign
flipped: the program printed `OBJECTIVE: 92.0`, the answer says `\\boxed{-92}`). (A wrong answer taken from
another problem, which can only be told apart by checking it against the solver output, is not learned by this
2-layer model in 40 steps: held-out accuracy stays at 0.5 +- 0.05.) Both are token rows through the
real chat template; the model is a tiny Qwen3 over the data's own token ids (a dense re-numbering of the ~230
Qwen3 ids these trajectories use, so the vocabulary projection costs nothing on CPU).

1. A short SFT warm-up on chosen AND rejected trajectories gives a start policy that writes either sign.
2. DPO from it: held-out pair accuracy (ties 1/2) starts at 0.5 and ends >= 0.8 (shown: 0.5 -> 1.0 by step 5).
   The greedy pass rate (the decoded answer after `\\boxed{` equals the gold one) on held-out problems should
   rise; it does not yet (0.0 before and after: the warm-up policy does not copy numbers), see the xfail.
3. 30 % of training pairs label-flipped, as a biased judge would: all of them integer programs (the IP problems,
   `NonNegativeIntegers` in the program, about half the data, so most IP pairs are flipped). With those pairs at
   weight 0.1, held-out pair accuracy is clearly above the same run with every weight 1, which learns "prefer the
   wrong answer on IP problems" (both curves are printed; run this file directly to see them). Not shown yet:
   both runs reached 1.0 (xfail below).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from storm_jax.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAJ = os.path.join(ROOT, "storm_jax", "resources", "tiny", "arith", "train.sft_traj.jsonl")
N_TRAIN, N_HELD = 190, 40
T = 512
FLIP_SHARE, FLIP_WEIGHT = 0.3, 0.1


def _answer_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def build_pairs():
    """(train token rows, held-out token rows, vocab size, held-out (prompt ids, gold answer ids), train IP flags)
    with dense ids."""
    from storm_jax.data.preference import encode_response
    from storm_jax.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    raw, groups = [], []
    for line in open(TRAJ):
        r = json.loads(line)
        gold = "".join(s["text"] for s in r["segments"])
        ans = _answer_text(r["answer"])
        tail = "\\boxed{" + ans + "}"
        if not gold.endswith(tail) or ans.startswith("-") or ans == "0":
            continue
        wrong = gold[: -len(tail)] + "\\boxed{-" + ans + "}"
        c = encode_response(tok, r["messages"], gold)
        w = encode_response(tok, r["messages"], wrong)
        if max(len(c[0]), len(w[0])) <= T + 1:
            raw.append((c, w))
            groups.append(r["meta"]["problem_type"] == "IP")
    assert len(raw) >= N_TRAIN + N_HELD, len(raw)
    used = sorted({t for c, w in raw for t in (*c[0], *w[0])})
    dense = {t: i + 1 for i, t in enumerate(used)}  # 0 stays free (padding)
    boxed_open = [dense[t] for t in tok.encode("\\boxed{", add_special_tokens=False)]

    def row(c, w):
        (ci, cm), (wi, wm) = c, w
        k = 0
        while ci[k] == wi[k] and cm[k] == 0 and wm[k] == 0:
            k += 1
        return {"prompt_ids": [dense[t] for t in ci[:k]], "chosen_ids": [dense[t] for t in ci[k:]],
                "chosen_mask": list(cm[k:]), "rejected_ids": [dense[t] for t in wi[k:]],
                "rejected_mask": list(wm[k:]), "weight": 1.0}  # fmt: skip

    rows = [row(c, w) for c, w in raw[: N_TRAIN + N_HELD]]
    held = []
    for c, _ in raw[N_TRAIN : N_TRAIN + N_HELD]:
        ids = [dense[t] for t in c[0]]
        cut = max(i for i in range(len(ids)) if ids[i - len(boxed_open) : i] == boxed_open)
        held.append((ids[:cut], ids[cut:]))  # prompt through "\boxed{", gold "<answer>}<|im_end|>"
    vocab = -(-(len(used) + 1) // 64) * 64
    return rows[:N_TRAIN], rows[N_TRAIN:], vocab, held, groups[:N_TRAIN]


def flip_some(rows, share, weight, groups, seed=0):
    """Swap chosen/rejected of a `share` of all rows, drawn from the rows flagged in `groups` (a judge biased on
    one problem type), and give those rows `weight`."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(np.flatnonzero(groups), int(round(share * len(rows))), replace=False)
    out = [dict(r) for r in rows]
    for i in idx:
        r = out[i]
        r["chosen_ids"], r["rejected_ids"] = r["rejected_ids"], r["chosen_ids"]
        r["chosen_mask"], r["rejected_mask"] = r["rejected_mask"], r["chosen_mask"]
        r["weight"] = weight
    return out


def make_cfg(workdir, vocab, eval_path, *extra):
    return load_config(
        "steporlm_dpo:tiny",
        [f"workdir={workdir}", f"model.vocab_size={vocab}", f"data.seq_len={T}", "data.path=<rows>",
         f"data.eval_path={eval_path}", "data.batch_size=8", "train.logprob_chunk=0", "train.progress=false",
         "train.log_every=5", "train.eval_every=5", "mesh.fsdp=1", "dpo.ref_batch_pairs=8",
         "checkpoint.save_every=1000", *extra],
        num_devices=1,
    )  # fmt: skip


def sft_warmup(cfg, rows, steps=80):
    """Start policy: the SFT loss on chosen and rejected sequences alike (both signs are written)."""
    import copy

    cfg = copy.deepcopy(cfg)
    cfg.train.steps, cfg.optim.lr, cfg.optim.warmup_steps = steps, 3e-3, 5  # its own schedule
    from storm_jax.data.preference import PreferenceDataConfig, make_preference_iterator, pairs_from_rows
    from storm_jax.train.loop import LoopOptions, train
    from storm_jax.train.losses import make_loss
    from storm_jax.train.setup import build_setup, initial_params

    setup = build_setup(cfg, devices=jax.devices()[:1])
    pairs, _ = pairs_from_rows(rows, seq_len=T, vocab_size=cfg.model.vocab_size)
    it = make_preference_iterator(
        PreferenceDataConfig(path="-", seq_len=T, batch_size=8, seed=1), pairs=pairs, process_index=0,
        process_count=1,
    )  # fmt: skip

    class Flat:  # [P, 2, T] pairs -> [2P, T] SFT rows
        def __iter__(self):
            return self

        def __next__(self):
            b = next(it)
            return {k: v.reshape(-1, T) for k, v in b.items() if k not in ("weight", "ref_logps")}

    opts = LoopOptions(
        workdir=cfg.workdir + "_sft", steps=steps, log_every=50, save_every=10_000, async_save=False
    )
    res = train(
        setup, make_loss("sft"), Flat(), opts, params=initial_params(cfg, setup), echo=lambda *a: None
    )
    return res.state.params, setup.model_cfg


def greedy_pass_rate(params, model_cfg, held, max_new=8) -> float:
    """Share of held-out prompts whose greedy continuation after `\\boxed{` is exactly the gold answer."""
    from storm_jax.models.qwen import forward

    B = len(held)
    toks = np.zeros((B, T), np.int32)
    lens = np.array([len(p) for p, _ in held])
    for i, (p, _) in enumerate(held):
        toks[i, : len(p)] = p

    @jax.jit
    def next_ids(params, toks, lens):
        logits, _ = forward(params, toks, model_cfg)
        return jnp.argmax(logits[jnp.arange(B), lens - 1], axis=-1)

    out = [[] for _ in range(B)]
    for _ in range(max_new):
        nxt = np.asarray(next_ids(params, jnp.asarray(toks), jnp.asarray(lens)))
        for i in range(B):
            if lens[i] < T:
                toks[i, lens[i]] = nxt[i]
                out[i].append(int(nxt[i]))
        lens = np.minimum(lens + 1, T)
    return float(np.mean([o[: len(g)] == g for o, (_, g) in zip(out, held)]))


def eval_curve(workdir) -> list[tuple[int, float]]:
    rec = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [(r["step"], r["pair_accuracy"]) for r in rec if r["split"] == "eval"]


def run_experiment(tmp, steps=30, echo=lambda *a: None):
    from storm_jax.data.preference import write_token_rows  # noqa: F401  (rows are written as JSONL below)
    from storm_jax.train.dpo import train_dpo

    train_rows, held_rows, vocab, held, groups = build_pairs()
    os.makedirs(tmp, exist_ok=True)
    eval_path = os.path.join(tmp, "heldout_pairs.jsonl")
    with open(eval_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in held_rows)
    base = make_cfg(os.path.join(tmp, "warm"), vocab, eval_path)
    p0, mc = sft_warmup(base, train_rows)
    out = {"pass_start": greedy_pass_rate(p0, mc, held)}
    runs = {
        "clean": train_rows,
        "noisy_weighted": flip_some(train_rows, FLIP_SHARE, FLIP_WEIGHT, groups),
        "noisy_unweighted": flip_some(train_rows, FLIP_SHARE, 1.0, groups),
    }
    for name, rows in runs.items():
        cfg = make_cfg(os.path.join(tmp, name), vocab, eval_path, f"train.steps={steps}")
        res = train_dpo(cfg, rows=rows, params=p0, echo=echo, devices=jax.devices()[:1])
        out[name] = eval_curve(cfg.workdir)
        out[f"pass_{name}"] = greedy_pass_rate(res["state"].params, mc, held)
    return out


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = run_experiment(str(tmp_path_factory.mktemp("dpo_learning")))
    print(json.dumps(out))
    return out


@pytest.mark.slow
def test_dpo_learns_to_prefer_the_correct_answer(experiment):
    clean = experiment["clean"]
    assert clean[0] == (0, 0.5)  # the start policy is its own reference: every delta is exactly 0
    assert clean[-1][1] >= 0.8, clean


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="not shown yet: in the recorded run (30 steps) the greedy pass rate stayed 0.0 (the 80-step SFT warm-up "
    "does not copy the solver's number) and both noisy runs reached held-out accuracy 1.0 (the IP-specific flip "
    "was not learned, so weighting had nothing to correct)",
)
def test_greedy_pass_rate_rises_and_weights_resist_label_noise(experiment):
    assert experiment["pass_clean"] > experiment["pass_start"], experiment
    w, u = dict(experiment["noisy_weighted"]), dict(experiment["noisy_unweighted"])
    assert w[0] == u[0] == 0.5
    # "Clearly higher": the weighted run's held-out accuracy, averaged over the curve, beats the unweighted
    # one's by 0.1 (= 4 of 40 held-out pairs).
    steps = sorted(set(w) & set(u) - {0})
    assert np.mean([w[s] for s in steps]) >= np.mean([u[s] for s in steps]) + 0.1, (w, u)


if __name__ == "__main__":
    import sys

    print(json.dumps(run_experiment(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dpo_learning", echo=print)))
