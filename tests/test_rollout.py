"""Multi-turn rollouts: teacher-forced trajectories through the real execution pool, masks, log-probs across
tool turns, resume-from-cache equals a fresh prefill, eviction of paused requests, tool-call limit."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import keys_depth, logits_depth, reorder_atol

from storm_jax.data.format import Segment, code_segment, output_segment
from storm_jax.models.qwen import ModelConfig, forward, init_cache, init_params
from storm_jax.sampling.rollout import RolloutConfig, RolloutRequest, rollout
from storm_jax.sampling.sampler import EngineConfig, Sampler, SamplingParams
from storm_jax.tokenizer import encode_prompt, encode_segment, eos_ids, load_tokenizer

PROGRAM = """import pyomo.environ as pyo
m = pyo.ConcreteModel()
m.x = pyo.Var(bounds=(0, 3))
m.y = pyo.Var(bounds=(0, None))
m.c1 = pyo.Constraint(expr=m.x + m.y <= 4)
m.c2 = pyo.Constraint(expr=m.x + 3 * m.y <= 6)
m.obj = pyo.Objective(expr=3 * m.x + 2 * m.y, sense=pyo.maximize)
pyo.SolverFactory("appsi_highs").solve(m)
print("OBJECTIVE:", pyo.value(m.obj))"""

CFG = ModelConfig(
    vocab_size=151936,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
)
ENGINE = EngineConfig(
    num_slots=2, max_len=320, chunk_size=16, min_bucket=16, max_bucket=128, max_prefill_batch=2
)


@pytest.fixture(scope="module")
def setup():
    tok = load_tokenizer()
    params = init_params(CFG, jax.random.key(0), std=0.5)
    return tok, params


def _ids(tok, segs):
    return [t for s in segs for t in encode_segment(tok, s)]


def _check_logprobs(params, traj):
    full = jnp.asarray([traj.prompt_ids + traj.response_ids])
    logp = np.asarray(jax.nn.log_softmax(forward(params, full, CFG)[0][0], axis=-1))
    P = len(traj.prompt_ids)
    # rollout vs teacher forcing: one fp32 computation, two programs; log-softmax moves by at most twice the
    # logits' error (tests/tolerances.py)
    logits = np.asarray(forward(params, full, CFG)[0][0])
    atol = 2 * reorder_atol(logits, logits_depth(CFG, full.shape[1]))
    for j, (t, m) in enumerate(zip(traj.response_ids, traj.loss_mask)):
        if m:
            assert abs(traj.logprobs_raw[j] - logp[P + j - 1, t]) <= atol, j
        else:
            assert traj.logprobs_raw[j] == 0.0


def test_forced_tool_trajectory_with_real_pool(setup):
    from storm_jax.execution.pool import ExecutionPool

    tok, params = setup
    im_end = eos_ids(tok)[0]
    prompt = encode_prompt(
        tok, [{"role": "user", "content": "Maximize 3x+2y subject to x+y<=4, x+3y<=6, x<=3."}]
    )
    text1 = Segment("text", "I will write a model.\n\n")
    code = code_segment(PROGRAM)
    text2 = Segment("text", "\n\nThe optimal objective is \\boxed{11}.")
    forced = _ids(tok, [text1, code, text2]) + [im_end]
    rc = RolloutConfig(
        sampling=SamplingParams(temperature=0.0, max_new_tokens=250, eos_ids=tuple(eos_ids(tok)))
    )
    sampler = Sampler(params, CFG, ENGINE)
    with ExecutionPool(num_workers=1) as pool:
        (traj,) = rollout(
            params, CFG, tok, [RolloutRequest(prompt, forced=forced)], rc, pool, sampler=sampler
        )

    assert traj.stop_reason == "eos"
    (ex,) = traj.executions
    assert ex.status == "ok" and ex.answer == pytest.approx(11.0)
    assert ex.code == PROGRAM
    assert "OBJECTIVE: 11.0" in ex.stdout
    out = output_segment(ex.stdout, rc.max_output_chars)
    assert ex.output_text == out.text
    # Token-in/token-out: model ids, then the output block's ids, then the rest of the model ids.
    want = _ids(tok, [text1, code]) + encode_segment(tok, out) + _ids(tok, [text2]) + [im_end]
    assert traj.response_ids == want
    n1 = len(_ids(tok, [text1, code]))
    n_out = len(encode_segment(tok, out))
    assert traj.loss_mask == [1] * n1 + [0] * n_out + [1] * (len(want) - n1 - n_out)
    assert (ex.start, ex.end) == (n1, n1 + n_out)
    assert [s.kind for s in traj.segments] == ["text", "code", "output", "text"]
    assert [s.text for s in traj.segments[1:3]] == [code.text, out.text]
    assert traj.segments[0].text == text1.text
    assert traj.answer == pytest.approx(11.0)
    _check_logprobs(params, traj)
    # The cache after resume (prompt + response minus the pending eos) equals a fresh prefill of that sequence.
    seq = traj.prompt_ids + traj.response_ids[:-1]
    _, fresh = forward(params, jnp.asarray([seq]), CFG, kv_cache=init_cache(CFG, 1, len(seq)))
    k, v = sampler.cache_rows(0, len(seq))
    atol = reorder_atol(fresh.k, keys_depth(CFG, len(seq)))  # the deepest (last) layer's bound covers all
    np.testing.assert_allclose(k, np.asarray(fresh.k[:, 0]), atol=atol)
    np.testing.assert_allclose(
        v, np.asarray(fresh.v[:, 0]), atol=reorder_atol(fresh.v, keys_depth(CFG, len(seq)))
    )


class _GatedFailingExecutor:
    """Stub: every program 'fails' with a long traceback (exercises the stderr tail) once `gate` opens, or after
    `max_wait_s` (then the concurrency assertion of the test fails: nothing finished while the code 'ran').

    Gated on an event instead of a fixed delay, so the test does not depend on how fast decoding is on a
    loaded machine."""

    def __init__(self, gate: threading.Event, max_wait_s: float = 120.0):
        self.gate, self.max_wait_s, self.done_at, self.codes = gate, max_wait_s, [], []

    def submit(self, code, *, timeout_s=None):
        from storm_jax.execution.pool import ExecutionResult

        self.codes.append(code)
        fut = cf.Future()

        def finish():
            self.gate.wait(self.max_wait_s)
            self.done_at.append(time.monotonic())
            stderr = (
                "Traceback (most recent call last):\n"
                + "  noise line\n" * 200
                + "ZeroDivisionError: division by zero\n"
            )
            fut.set_result(ExecutionResult("error", "partial\n", stderr, None, 0.0, 1))

        threading.Thread(target=finish, daemon=True).start()
        return fut


def test_eviction_concurrency_and_tool_call_limit(setup):
    tok, params = setup
    eos = tuple(eos_ids(tok))
    prompt = encode_prompt(tok, [{"role": "user", "content": "Solve it."}])
    segs = [
        Segment("text", "Try.\n"),
        code_segment("print(1/0)"),
        Segment("text", "\nAgain.\n"),
        code_segment("print(2)"),
        Segment("text", "\\boxed{2}"),
    ]
    forced = _ids(tok, segs) + [eos[0]]
    rc = RolloutConfig(
        sampling=SamplingParams(temperature=0.0, max_new_tokens=160, eos_ids=eos),
        max_tool_calls=1,
        stderr_tail_chars=200,
        max_output_chars=400,
    )
    gate = threading.Event()
    execu = _GatedFailingExecutor(gate)
    finished_at = []

    def progress(k):
        finished_at.append(time.monotonic())
        if len(finished_at) >= 2:  # the two other requests finished while the first one's code was "running"
            gate.set()

    sampler = Sampler(params, CFG, ENGINE)
    reqs = [
        RolloutRequest(prompt, forced=forced),
        RolloutRequest(prompt, seed=1),
        RolloutRequest(prompt[:-3], seed=2),
    ]
    trajs = rollout(
        params,
        CFG,
        tok,
        reqs,
        rc,
        execu,
        sampler=sampler,
        progress=progress,
    )
    a, b, c = trajs
    # The paused request gave its slot to the queued one, and others finished while its code ran.
    assert sampler.stats["evictions"] >= 1
    assert min(finished_at) < execu.done_at[0]
    assert execu.codes == ["print(1/0)"]  # the second block hit the limit and was not run
    assert a.stop_reason == "max_tool_calls"
    assert [s.kind for s in a.segments] == ["text", "code", "output", "text", "code"]
    ex = a.executions[0]
    assert ex.status == "error"
    assert (
        ex.output_text.startswith("\n```output\npartial\n")
        and "ZeroDivisionError: division by zero" in ex.output_text
    )
    assert len(ex.output_text) <= 400 + 40
    body = ex.output_text.removeprefix("\n```output\n").removesuffix("\n```\n")
    assert body == ("partial\n" + execu_tail(200)).rstrip("\n")
    for t in trajs:
        _check_logprobs(params, t)  # across the tool turn and after an evicted request's re-prefill
    assert b.stop_reason == c.stop_reason == "max_tokens" and len(b.response_ids) == 160


def execu_tail(n):
    stderr = (
        "Traceback (most recent call last):\n"
        + "  noise line\n" * 200
        + "ZeroDivisionError: division by zero\n"
    )
    return stderr[-n:]


# ------------------------------------------------------------------------------------------ intervention hooks

HINT = "\n[hint: check the capacity constraint]\n"


def _hint_hook(tok):
    """A non-code intervention: after the model's first sentence, insert HINT once (kind `hint`)."""
    import re

    from storm_jax.sampling.sampler import KIND_HINT, HostTokens, ToolHooks

    def on_pause(seq, match):
        seq.info["hinted"] = True
        return HostTokens(tuple(encode_segment(tok, Segment("hint", HINT))), KIND_HINT)

    return ToolHooks(
        re.compile(r"\.\s"), on_pause, kind=KIND_HINT, enabled=lambda seq: not seq.info.get("hinted")
    )


@pytest.mark.parametrize("loss_kinds", [("model",), ("model", "hint")])
def test_hint_hook_spans_masks_cache_and_token_row(setup, loss_kinds):
    from storm_jax.data.sft import parse_row, tokenize_row
    from storm_jax.sampling.rollout import trajectory_to_sft_row

    tok, params = setup
    eos = tuple(eos_ids(tok))
    prompt = encode_prompt(tok, [{"role": "user", "content": "Minimize cost."}])
    first = Segment("text", "First I read the data. ")
    rest = Segment("text", "Then I build the model and \\boxed{7}.")
    forced = _ids(tok, [first, rest]) + [eos[0]]
    rc = RolloutConfig(
        sampling=SamplingParams(temperature=0.0, max_new_tokens=120, eos_ids=eos),
        tools=False,
        loss_kinds=loss_kinds,
    )
    sampler = Sampler(params, CFG, ENGINE)
    (traj,) = rollout(
        params,
        CFG,
        tok,
        [RolloutRequest(prompt, forced=forced)],
        rc,
        None,
        sampler=sampler,
        hooks=[_hint_hook(tok)],
    )
    hint_ids = encode_segment(tok, Segment("hint", HINT))
    # The hook fired once, right after the token completing ". " (the forced ids continue after the hint).
    kinds = traj.kinds
    h0 = kinds.index("hint")
    assert kinds[h0 : h0 + len(hint_ids)] == ["hint"] * len(hint_ids) and kinds.count("hint") == len(hint_ids)
    assert traj.response_ids[h0 : h0 + len(hint_ids)] == hint_ids
    model_ids = [t for t, k in zip(traj.response_ids, kinds) if k == "model"]
    assert model_ids == forced
    assert tok.decode(traj.response_ids[:h0]).endswith(". ") or tok.decode(traj.response_ids[:h0]).endswith(
        "."
    )
    assert [s.kind for s in traj.segments] == ["text", "hint", "text"]
    assert traj.segments[1].text == HINT
    # Masks follow the configured kinds; hint tokens carry log-prob 0 (not sampled).
    assert traj.loss_mask == [int(k in loss_kinds) for k in kinds]
    assert all(traj.logprobs_raw[j] == 0.0 for j in range(h0, h0 + len(hint_ids)))
    assert traj.stop_reason == "eos"
    # The cache after resuming from the inserted hint equals a fresh prefill of the whole sequence.
    seq = traj.prompt_ids + traj.response_ids[:-1]
    _, fresh = forward(params, jnp.asarray([seq]), CFG, kv_cache=init_cache(CFG, 1, len(seq)))
    k, _ = sampler.cache_rows(0, len(seq))
    np.testing.assert_allclose(
        k, np.asarray(fresh.k[:, 0]), atol=reorder_atol(fresh.k, keys_depth(CFG, len(seq)))
    )
    # Trajectory -> token-level SFT row -> SFT tokenization: ids and mask exactly as sampled.
    row = trajectory_to_sft_row(traj)
    assert row["response_ids"] == traj.response_ids and row["prompt_ids"] == traj.prompt_ids
    ex = tokenize_row(parse_row(json.loads(json.dumps(row)), "t:1"), tok)
    assert ex.ids.tolist() == traj.prompt_ids + traj.response_ids
    assert ex.mask.tolist() == [0] * len(traj.prompt_ids) + traj.loss_mask
    # The segment-level row keeps the hint as a context-only segment.
    seg_row = trajectory_to_sft_row(
        traj, level="segment", messages=[{"role": "user", "content": "Minimize cost."}]
    )
    assert [s["kind"] for s in seg_row["segments"]] == ["text", "hint", "text"]


def test_request_from_a_prefix_with_kinds_continues_like_the_full_context(setup):
    """A request that starts from a prefix (model ids + a hint) keeps it exactly, with its kinds, and greedy
    continuation equals greedy decoding of a prompt that holds the same ids."""
    tok, params = setup
    prompt = encode_prompt(tok, [{"role": "user", "content": "Solve it."}])
    model_part = _ids(tok, [Segment("text", "Step one is done.")])
    hint_part = encode_segment(tok, Segment("hint", HINT))
    prefix = model_part + hint_part
    kinds = ["model"] * len(model_part) + ["hint"] * len(hint_part)
    rc = RolloutConfig(sampling=SamplingParams(temperature=0.0, max_new_tokens=len(prefix) + 24), tools=False)
    sampler = Sampler(params, CFG, ENGINE)
    (traj,) = rollout(
        params,
        CFG,
        tok,
        [RolloutRequest(prompt, prefix_ids=prefix, prefix_kinds=kinds)],
        rc,
        None,
        sampler=sampler,
    )
    assert traj.response_ids[: len(prefix)] == prefix
    assert traj.kinds[: len(prefix)] == kinds and set(traj.kinds[len(prefix) :]) == {"model"}
    assert traj.loss_mask[: len(prefix)] == [1] * len(model_part) + [0] * len(hint_part)
    rc_plain = RolloutConfig(sampling=SamplingParams(temperature=0.0, max_new_tokens=24), tools=False)
    (plain,) = rollout(params, CFG, tok, [RolloutRequest(prompt + prefix)], rc_plain, None, sampler=sampler)
    assert traj.response_ids[len(prefix) :] == plain.response_ids
    with pytest.raises(ValueError, match="prefix_kinds"):
        rollout(
            params, CFG, tok, [RolloutRequest(prompt, prefix_ids=prefix, prefix_kinds=["model"])], rc, None,
            sampler=sampler,
        )  # fmt: skip
