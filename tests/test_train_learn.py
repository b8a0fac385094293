"""Learning: a tiny model memorizes a few trajectories through the real train step; greedy decoding (a plain
full-recompute argmax loop) then reproduces every response from its prompt."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from storm_jax.config import base_config
from storm_jax.models.qwen import forward
from storm_jax.train.sft import build_run, initial_params
from storm_jax.train.state import init_train_state


def make_cfg():
    c = base_config()
    c.model.update(dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=16, tie_word_embeddings=False))  # fmt: skip
    c.data.source, c.data.seq_len, c.data.batch_size = "synthetic", 64, 4
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 2, 1
    c.optim.update(
        ml_collections.ConfigDict(dict(lr=3e-3, warmup_steps=10, decay="cosine", min_lr_ratio=0.1))
    )
    c.train.steps = 150
    return c


def trajectories(seed=0):
    """4 (prompt, response) pairs; two share a prompt prefix so the model must read the whole prompt."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(4):
        prompt = [1, 2 + i // 2] + list(rng.integers(10, 64, 3 + i))
        if i % 2:
            prompt[-1] = (prompt[-1] + 7) % 54 + 10
        response = list(rng.integers(10, 64, 12)) + [3]  # 3 = end of turn
        out.append((prompt, response))
    return out


def packed(trajs, T):
    """Two trajectories per row, loss only on response tokens (and the end token)."""
    B = (len(trajs) + 1) // 2
    b = {
        k: np.zeros((B, T), np.int32) for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions")
    }
    for i, (p, r) in enumerate(trajs):
        row, t0 = i // 2, (i % 2) * (T // 2)
        ids = np.array(p + r)
        mask = np.array([0] * len(p) + [1] * len(r))
        n = len(ids) - 1
        b["tokens"][row, t0 : t0 + n] = ids[:-1]
        b["targets"][row, t0 : t0 + n] = ids[1:]
        b["loss_mask"][row, t0 : t0 + n] = mask[1:]
        b["segment_ids"][row, t0 : t0 + n] = i % 2 + 1
        b["positions"][row, t0 : t0 + n] = np.arange(n)
    return b


def greedy(params, cfg, prompt, max_new=20, end=3):
    ids = list(prompt)
    for _ in range(max_new):
        logits, _ = forward(params, jnp.asarray(ids)[None], cfg)
        nxt = int(jnp.argmax(logits[0, -1]))
        ids.append(nxt)
        if nxt == end:
            break
    return ids[len(prompt) :]


def test_memorizes_and_greedy_reproduces():
    cfg = make_cfg()
    cfg.data.batch_size = 2
    run = build_run(cfg, devices=jax.devices()[:2])
    state = jax.jit(lambda p: init_train_state(p, run.optimizer, 0), out_shardings=run.state_sharding)(
        initial_params(cfg, run)
    )
    trajs = trajectories()
    batch = packed(trajs, 64)
    losses = []
    for _ in range(cfg.train.steps):
        state, m = run.train_step(state, batch)
        losses.append(m["loss"])
    losses = np.array(jax.device_get(losses))
    assert losses[0] > 3.5  # ~ln(64) at init
    assert losses[-1] < 0.02, losses[-10:]
    params = jax.device_get(state.params)
    for prompt, response in trajs:
        assert greedy(params, run.model_cfg, prompt) == response


@pytest.mark.slow
def test_memorizes_bundled_trajectories_end_to_end(tmp_path):
    """The real loop (train_sft: tokenizer, grain pipeline, packing, checkpoints) on 4 bundled trajectories.

    Greedy decoding then reproduces every model-written token; tool-output tokens (masked, never trained) are
    appended by the 'host' as in a rollout.
    """
    import json

    from storm_jax.config import load_config
    from storm_jax.train.sft import load_run_state, make_data_iterator, train_sft

    rows = open("storm_jax/resources/tiny/arith/train.sft_traj.jsonl").read().splitlines()
    recovery = [r for r in rows if any(s["kind"] == "output" for s in json.loads(r)["segments"])][:4]
    data = tmp_path / "four.jsonl"
    data.write_text("\n".join(recovery) + "\n")
    wd = str(tmp_path / "run")
    cfg = load_config(
        "configs/tiny_cpu.py",
        [
            f"workdir={wd}",
            f"data.path={data}",
            "data.eval_path=",
            "train.steps=200",
            "train.progress=false",
            "optim.lr=1e-2",
            "optim.warmup_steps=10",
            "optim.min_lr_ratio=0.0",
            "train.eval_every=0",
            "checkpoint.save_every=100",
        ],  # fmt: skip
        num_devices=1,
    )
    cfg.unlock()
    res = train_sft(cfg, echo=lambda *a: None, devices=jax.devices()[:1])
    assert res["loss"] < 0.05, res["loss"]
    _, model_cfg, state, _ = load_run_state(wd, devices=jax.devices()[:1])
    params = jax.device_get(state.params)
    cfg.data.shuffle = False
    batch = next(make_data_iterator(cfg, model_cfg, path=str(data), train=False))
    n_docs = 0
    for b in range(batch["tokens"].shape[0]):
        for d in set(batch["segment_ids"][b].tolist()) - {0}:
            idx = np.flatnonzero(batch["segment_ids"][b] == d)
            toks, tgts, mask = (batch[k][b, idx] for k in ("tokens", "targets", "loss_mask"))
            first = int(np.flatnonzero(mask)[0])
            ids = list(toks[: first + 1])
            for t in range(first, len(idx)):
                if mask[t]:
                    logits, _ = forward(params, jnp.asarray(ids)[None], model_cfg)
                    assert int(jnp.argmax(logits[0, -1])) == int(tgts[t]), (b, d, t)
                ids.append(int(tgts[t]))  # a masked target is host-written (tool output): append it
            assert (mask == 0).sum() > first  # the doc had masked output tokens past the prompt
            n_docs += 1
    assert n_docs >= 2
