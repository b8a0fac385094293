"""GRPO loop pieces: batch layout, rewards, problem sampler, and sampler/trainer log-prob agreement."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from storm_jax.models.qwen import ModelConfig, init_params
from storm_jax.sampling.rollout import Execution, RolloutConfig, RolloutRequest, Trajectory, rollout
from storm_jax.sampling.sampler import EngineConfig, SamplingParams
from storm_jax.train.grpo import (
    Problem,
    ProblemSampler,
    build_batch,
    compute_rewards,
    load_problems,
    trajectory_answer,
)
from storm_jax.train.logprobs import token_logprobs


def _traj(prompt, response, mask, lp, answer=None, executions=(), stop="eos", group=0):
    return Trajectory(
        group=group, sample_index=0, prompt_ids=list(prompt), response_ids=list(response), loss_mask=list(mask),
        logprobs=list(lp), logprobs_raw=list(lp), segments=[], executions=list(executions), answer=answer,
        stop_reason=stop, text="",
    )  # fmt: skip


def test_build_batch_aligns_targets_masks_and_old_logprobs():
    t = _traj([11, 12, 13], [21, 22, 23, 24], [1, 0, 0, 1], [-0.1, 0.0, 0.0, -0.4])
    b = build_batch([t], np.array([0.5]), np.array([True]), np.array([False]), seq_len=8, num_rows=2)
    ids = [11, 12, 13, 21, 22, 23, 24]
    np.testing.assert_array_equal(b["tokens"][0, :6], ids[:6])
    np.testing.assert_array_equal(b["targets"][0, :6], ids[1:])
    # target j predicts ids[j+1]: response token r is target index 2 + r
    np.testing.assert_array_equal(b["loss_mask"][0], [0, 0, 1, 0, 0, 1, 0, 0])
    np.testing.assert_allclose(b["old_logprobs"][0], [0, 0, -0.1, 0, 0, -0.4, 0, 0])
    np.testing.assert_array_equal(b["segment_ids"][0], [1] * 6 + [0, 0])
    assert b["advantages"][0] == 0.5 and not b["truncated"][0]
    assert b["loss_mask"][1].sum() == 0 and b["segment_ids"][1].sum() == 0  # padding row carries nothing
    dropped = build_batch([t], np.array([0.5]), np.array([False]), np.array([True]), seq_len=8, num_rows=1)
    assert dropped["loss_mask"].sum() == 0 and dropped["zero_variance"][0]


def test_rewards_follow_the_protocol_and_answer_source():
    ok = Execution("print(3)", "ok", "3\n", "", 3.0, 0.01, 0, "", 0, 0)
    err = Execution("1/0", "error", "", "ZeroDivisionError", None, 0.01, 1, "", 0, 0)
    trajs = [
        _traj([1], [2], [1], [0.0], answer=10.0),
        _traj([1], [2], [1], [0.0], answer=10.002),  # 2e-4 relative: outside eps=1e-4
        _traj(
            [1], [2], [1], [0.0], answer=None, executions=[ok, err]
        ),  # last program failed; earlier one ran
        _traj([1], [2], [1], [0.0], answer="infeasible"),
    ]
    probs = [Problem("a", (), 10.0, None), Problem("b", (), 10.0, None), Problem("c", (), 3.0, None),
             Problem("d", (), None, "infeasible")]  # fmt: skip
    r, c = compute_rewards(trajs, probs, answer_from="boxed")
    np.testing.assert_array_equal(c, [1, 0, 0, 1])
    r, c = compute_rewards(trajs, probs, answer_from="auto", format_reward=0.1)
    np.testing.assert_array_equal(c, [1, 0, 1, 1])
    np.testing.assert_allclose(r, [1.1, 0.1, 1.0, 1.1])
    assert trajectory_answer(trajs[2], "execution") == 3.0
    assert trajectory_answer(trajs[0], "execution") is None


def test_problem_sampler_is_a_resumable_epoch_permutation():
    s = ProblemSampler(5, seed=3)
    first = s.next(3)
    state = s.get_state()
    rest = s.next(4)
    assert sorted(first + rest[:2]) == list(range(5))  # one epoch = each problem once
    s2 = ProblemSampler(5, seed=3)
    s2.set_state(state)
    assert s2.next(4) == rest


def test_load_problems_names_file_and_line(tmp_path):
    p = tmp_path / "p.jsonl"
    good = {"id": "x", "benchmark": "t", "variant": "v", "question": "q?", "answer": 1.0}
    p.write_text(json.dumps(good) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:2"):
        load_problems(str(p))
    p.write_text(json.dumps(good) + "\n")
    (prob,) = load_problems(str(p), system_prompt="sys")
    assert prob.messages[0] == {"role": "system", "content": "sys"} and prob.messages[1]["content"] == "q?"


class _Echo:
    """Executor stub for the log-prob test (the real pool is exercised by the rollout and learning tests)."""

    def submit(self, code, *, timeout_s=None):
        import concurrent.futures as cf

        f = cf.Future()
        f.set_result(
            type(
                "R",
                (),
                dict(status="ok", stdout="42\n", stderr="", answer=42.0, duration_s=0.0, returncode=0),
            )()
        )
        return f


def test_sampler_and_trainer_logprobs_agree_fp32():
    """pi_old from the sampler's raw log-probs equals the trainer's token_logprobs on the built batch."""
    from storm_jax.tokenizer import load_tokenizer

    tok = load_tokenizer()
    cfg = ModelConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)  # fmt: skip
    params = init_params(cfg, jax.random.key(0), std=0.5)  # peaked logits: a real test of the alignment
    prompt = tok.encode("<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n")
    code = tok.encode("```python\nprint(6*7)\n```")
    reqs = [RolloutRequest(prompt, n=3, seed=1, forced=code), RolloutRequest(prompt[:-2], n=2, seed=2)]
    rcfg = RolloutConfig(sampling=SamplingParams(temperature=1.0, max_new_tokens=24, eos_ids=(151645,)))
    trajs = rollout(
        params, cfg, tok, reqs, rcfg, _Echo(), engine=EngineConfig(num_slots=4, max_len=128, chunk_size=8)
    )
    assert any(t.executions for t in trajs)  # the forced code block ran and an output block was appended
    n = len(trajs)
    b = build_batch(trajs, np.zeros(n), np.ones(n, bool), np.zeros(n, bool), seq_len=96, num_rows=n)
    lp = token_logprobs(params, cfg, jnp.asarray(b["tokens"]), jnp.asarray(b["targets"]),
                        segment_ids=jnp.asarray(b["segment_ids"]), positions=jnp.asarray(b["positions"]))  # fmt: skip
    m = b["loss_mask"] > 0
    assert m.sum() > 50
    err = np.abs(np.asarray(lp)[m] - b["old_logprobs"][m]).max()
    print("max |sampler - trainer| log-prob:", err)
    assert err <= 1e-4, err


def _grpo_cfg(tmp_path, steps, **over):
    from storm_jax.config import load_config

    o = dict(workdir=tmp_path / "grpo", **{"grpo.steps": steps, "grpo.problems_per_step": 2, "grpo.group_size": 2,
             "grpo.max_response_tokens": 8, "grpo.max_len": 256, "grpo.seq_bucket": 64, "grpo.num_slots": 4,
             "grpo.decode_chunk": 8, "grpo.kl_beta": 0.01, "grpo.tools": False, "train.progress": False,
             "checkpoint.save_every": 1, "mesh.fsdp": 1}, **over)  # fmt: skip
    return load_config("configs/storm_grpo.py:tiny", [f"{k}={v}" for k, v in o.items()], num_devices=1)


def _ckpt_ref(cfg, rules, step, like):
    """The reference params stored in the run's checkpoint `step`."""
    from storm_jax.train.checkpoint import make_checkpointer
    from storm_jax.train.setup import build_setup

    setup = build_setup(cfg, mesh_rules=rules)
    ckpt = make_checkpointer(str(cfg.workdir), cfg.checkpoint, async_save=False)
    abstract = {
        "ref_params": jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like
        )
    }
    try:
        return ckpt.restore(setup.restore_target, step=step, abstract_arrays=abstract).arrays["ref_params"]
    finally:
        ckpt.close()


def _ckpt_data_state(cfg, rules, step):
    """The problem sampler state stored in the run's checkpoint `step`."""
    from storm_jax.train.checkpoint import make_checkpointer
    from storm_jax.train.setup import build_setup

    setup = build_setup(cfg, mesh_rules=rules)
    ckpt = make_checkpointer(str(cfg.workdir), cfg.checkpoint, async_save=False)
    try:
        return ckpt.restore(setup.restore_target, step=step).data_state
    finally:
        ckpt.close()


def test_train_grpo_keeps_ref_params_in_checkpoints_and_reports_zero_variance(tmp_path):
    """A random policy never answers: every group has zero reward variance, and the console says so. The
    reference params are the starting params, saved in each checkpoint and restored on resume (a resume given
    other start params keeps the saved reference)."""
    from storm_jax.models.qwen import init_params
    from storm_jax.tokenizer import load_tokenizer
    from storm_jax.train.grpo import train_grpo
    from storm_jax.train.setup import make_mesh_rules, resolve_model_config

    cfg = _grpo_cfg(tmp_path, 2, **{"grpo.max_draws_per_step": 3})
    assert cfg.grpo.dynamic_sampling and cfg.grpo.drop_zero_variance  # the recipe's DAPO defaults
    rules = make_mesh_rules(cfg, jax.devices()[:1])
    mc = resolve_model_config(cfg)
    sh = jax.sharding.NamedSharding(rules.mesh, jax.sharding.PartitionSpec())
    p0 = jax.device_put(init_params(mc, jax.random.key(3)), sh)
    tok = load_tokenizer()
    lines: list[str] = []
    out = train_grpo(cfg, tokenizer=tok, executor=_Echo(), params=p0, mesh_rules=rules, echo=lines.append)
    assert out["step"] == 2
    assert sum("zero reward variance" in s for s in lines) == 2, lines
    assert any("2 of 2 steps had only zero-variance groups" in s for s in lines), lines
    rows = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["zero_variance_groups"], r["groups"]) for r in rows] == [(2.0, 2.0), (2.0, 2.0)]
    # dynamic sampling drew to the cap each step (3 problems), kept none with variance
    assert [(r["groups_drawn"], r["groups_kept"], r["filtered_share"]) for r in rows] == [(3.0, 0.0, 1.0)] * 2
    assert _ckpt_data_state(cfg, rules, 2) == {"epoch": 0, "pos": 6}  # every draw is in the checkpoint
    # no row carried a gradient, so no update ran: the policy is bit-for-bit the start
    assert [r["updates"] for r in rows] == [0.0, 0.0] and all(r["loss"] == 0.0 for r in rows)
    for a, b in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(p0)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(_ckpt_ref(cfg, rules, 2, p0)), jax.tree.leaves(p0)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    other = jax.tree.map(lambda x: x + 1.0, p0)
    lines.clear()
    out = train_grpo(_grpo_cfg(tmp_path, 3, **{"grpo.max_draws_per_step": 3}), tokenizer=tok, executor=_Echo(), params=other, mesh_rules=rules,
                     echo=lines.append)  # fmt: skip
    assert out["step"] == 3 and any("resumed" in s and "at step 2" in s for s in lines), lines
    for a, b in zip(jax.tree.leaves(_ckpt_ref(cfg, rules, 3, p0)), jax.tree.leaves(p0)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the saved reference, not `other`
    assert _ckpt_data_state(cfg, rules, 3) == {"epoch": 0, "pos": 9}  # resumed from the saved sampler state
