"""Sampler: greedy parity with transformers, log-probs vs teacher forcing, truncated sampling statistics,
stops, shared prefill, bounded compilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from tolerances import U32, logits_depth, reorder_atol

from storm_jax.models.hf import load_hf_checkpoint
from storm_jax.models.qwen import forward
from storm_jax.sampling import sampler as S
from storm_jax.sampling.distribution import draw_tokens
from storm_jax.sampling.sampler import EngineConfig, Request, Sampler, SamplingParams

PROMPT_LENS = (3, 9, 17, 30, 1, 12)
NEW = 20


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A tiny random HF Qwen3 saved to disk, loaded back with load_hf_checkpoint."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    hcfg = Qwen3Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.3,  # peaked logits: greedy argmax margins far above fp32 noise
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    model = Qwen3ForCausalLM(hcfg).eval()
    path = tmp_path_factory.mktemp("hf_qwen3")
    model.save_pretrained(str(path))
    cfg, params = load_hf_checkpoint(str(path))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 96, size=n).tolist() for n in PROMPT_LENS]
    return model, cfg, params, prompts


def _hf_greedy(model, prompt, new):
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


ENGINE = EngineConfig(num_slots=4, max_len=64, chunk_size=8, min_bucket=8, max_bucket=32, max_prefill_batch=4)


@pytest.mark.parametrize("num_slots", [8, 2])
def test_greedy_equals_transformers_generate(hf_model, num_slots):
    model, cfg, params, prompts = hf_model
    want = [_hf_greedy(model, p, NEW) for p in prompts]
    eng = EngineConfig(**{**ENGINE.__dict__, "num_slots": num_slots})
    sampler = Sampler(params, cfg, eng)
    got = sampler.run([Request(p, SamplingParams(max_new_tokens=NEW)) for p in prompts])
    for i, (g, w) in enumerate(zip(got, want)):
        assert g[0].tokens == w, f"prompt {i} (len {len(prompts[i])})"
        assert g[0].stop_reason == "max_tokens"
    if num_slots < len(
        prompts
    ):  # continuous batching really happened: more decode calls than one batch needs
        assert sampler.stats["decode_calls"] > NEW // eng.chunk_size + 1


def _processed_np(logits, temperature, top_k, top_p, min_p):
    """Independent numpy reference of the sampling distribution (transformers' warper order)."""
    x = np.asarray(logits, np.float64) / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    keep = np.ones_like(p, bool)
    if top_k > 0:
        keep &= x >= np.sort(x)[::-1][top_k - 1]
    q = np.where(keep, p, 0)
    q /= q.sum()
    if top_p < 1:
        order = np.argsort(-q, kind="stable")
        cum = np.cumsum(q[order])
        n = int(np.searchsorted(cum, top_p) + 1)  # smallest prefix with mass >= top_p
        kp = np.zeros_like(keep)
        kp[order[:n]] = True
        keep &= kp
    if min_p > 0:
        keep &= p >= min_p * p.max()
    q = np.where(keep, p, 0)
    return q / q.sum()


@pytest.mark.parametrize("temperature", [0.4, 1.0, 1.7])
def test_raw_and_tempered_logprobs_at_several_temperatures(hf_model, temperature):
    """`logprobs_raw` is log softmax(logits) whatever the temperature; `logprobs_sampling` is log softmax of
    logits / T (no top-k/top-p here, so that is the whole sampling distribution). At T != 1 the two differ, so
    a swap of the two, or tempering the raw ones, fails."""
    _, cfg, params, prompts = hf_model
    sp = SamplingParams(temperature=temperature, max_new_tokens=8)
    got = Sampler(params, cfg, ENGINE).run([Request(p, sp, seed=3) for p in prompts[:2]])
    max_gap = 0.0
    for group in got:
        seq = group[0]
        full = jnp.asarray([seq.prompt + seq.tokens])
        logits = np.asarray(forward(params, full, cfg)[0][0], np.float64)
        P = len(seq.prompt)
        rows = logits[P - 1 : P - 1 + len(seq.tokens)]
        # log-softmax moves by at most twice the logits' error; the sampler and teacher forcing are two programs
        # of the same fp32 computation (tests/tolerances.py), the tempered one is divided by T.
        atol = 2 * reorder_atol(rows, logits_depth(cfg, len(full[0])))
        for j, tok in enumerate(seq.tokens):
            row = rows[j]
            raw = row[tok] - row.max() - np.log(np.exp(row - row.max()).sum())
            z = row / temperature
            tempered = z[tok] - z.max() - np.log(np.exp(z - z.max()).sum())
            assert abs(seq.logprobs_raw[j] - raw) <= atol, (j, seq.logprobs_raw[j], raw)
            assert abs(seq.logprobs_sampling[j] - tempered) <= atol / min(temperature, 1.0), j
            max_gap = max(max_gap, abs(raw - tempered))
    if temperature != 1.0:
        assert max_gap > 100 * atol  # the two really are different quantities here
    else:
        assert max_gap == 0.0


def test_logprobs_equal_teacher_forcing_and_seed_reproducible(hf_model):
    _, cfg, params, prompts = hf_model
    sp = SamplingParams(temperature=0.8, top_k=30, top_p=0.9, max_new_tokens=NEW)
    reqs = [Request(p, sp, n=3, seed=7 + i) for i, p in enumerate(prompts[:3])]
    sampler = Sampler(params, cfg, ENGINE)
    got = sampler.run(reqs)
    assert sampler.stats["copy_calls"] >= 1  # samples 2..n copied the prompt's cache rows
    for group in got:
        for seq in group:
            full = jnp.asarray([seq.prompt + seq.tokens])
            logits = np.asarray(forward(params, full, cfg)[0][0], np.float64)
            P = len(seq.prompt)
            # sampler vs teacher forcing: two programs of one fp32 computation; log-softmax moves by at most
            # twice the logits' error, divided by T for the tempered distribution (tests/tolerances.py)
            atol = 2 * reorder_atol(logits, logits_depth(cfg, full.shape[1]))
            for j, tok in enumerate(seq.tokens):
                row = logits[P + j - 1]
                raw = row[tok] - np.log(np.exp(row - row.max()).sum()) - row.max()
                assert abs(seq.logprobs_raw[j] - raw) <= atol, (j, seq.logprobs_raw[j], raw)
                q = _processed_np(row, 0.8, 30, 0.9, 0.0)
                assert q[tok] > 0
                assert abs(seq.logprobs_sampling[j] - np.log(q[tok])) <= atol / 0.8
            assert seq.loss_mask == [1] * len(seq.tokens)
        # different samples of one prompt differ (different keys)
        assert len({tuple(s.tokens) for s in group}) > 1
    # Same seeds, different slot count and batch composition: same tokens.
    alone = Sampler(params, cfg, EngineConfig(**{**ENGINE.__dict__, "num_slots": 2})).run(reqs[1:2])
    assert [s.tokens for s in alone[0]] == [s.tokens for s in got[1]]


@pytest.mark.parametrize(
    "temperature,top_k,top_p,min_p",
    [(1.0, 4, 1.0, 0.0), (0.7, 0, 0.8, 0.0), (1.3, 6, 0.9, 0.0), (1.0, 0, 1.0, 0.1)],
)
def test_truncated_sampling_distribution_chi_square(temperature, top_k, top_p, min_p):
    V, N = 12, 40000
    logits = np.random.default_rng(1).normal(size=V).astype(np.float32) * 1.5
    want = _processed_np(logits, temperature, top_k, top_p, min_p)

    @jax.jit
    def draw(keys):
        B = keys.shape[0]
        full = lambda v, dt: jnp.full((B,), v, dt)  # noqa: E731
        tok, _, lp = S.sample_step(
            jnp.broadcast_to(jnp.asarray(logits)[:, None], (V, B)),
            keys,
            full(5, jnp.int32),
            full(temperature, jnp.float32),
            full(top_k, jnp.int32),
            full(top_p, jnp.float32),
            full(min_p, jnp.float32),
            full(0, jnp.int32),
            full(False, bool),
        )
        return tok, lp

    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(jnp.arange(N))
    tok, lp = jax.device_get(draw(keys))
    counts = np.bincount(tok, minlength=V)
    support = want > 0
    assert counts[~support].sum() == 0, "sampled a token outside the truncated support"
    assert support.sum() < V  # the truncation removed something (else the test would not test it)
    _, pval = scipy.stats.chisquare(counts[support], N * want[support])
    assert pval > 1e-3, pval
    # log of a (renormalized) softmax over V logits: max, sum and renormalizing sum, each of length V
    np.testing.assert_allclose(lp, np.log(want[tok]), atol=2 * reorder_atol(logits / temperature, 3 * V))
    # Negative control: the same counts are rejected against the untruncated distribution.
    plain = _processed_np(logits, temperature, 0, 1.0, 0.0)
    _, p_plain = scipy.stats.chisquare(counts, N * plain)
    assert p_plain < 1e-6


def test_draw_tokens_inverse_cdf_matches_the_distribution():
    """draw_tokens over a row spanning several 128-blocks (the last one padded) with exact zeros everywhere else:
    a leading zero (index 0), whole zero blocks, support at block edges. 100k draws: never a zero-probability
    token, and the counts fit the distribution (chi-square), while a slightly different one is rejected."""
    V, B, calls = 700, 4000, 25
    rng = np.random.default_rng(11)
    support = np.array([1, 5, 127, 128, 129, 200, 255, 256, 511, 512, 600, 640, 699] + list(range(300, 327)))
    p = np.zeros(V)
    p[support] = rng.uniform(0.2, 1.0, size=support.size)
    p /= p.sum()
    with np.errstate(divide="ignore"):
        lp = jnp.asarray(np.broadcast_to(np.log(p), (B, V)).astype(np.float32))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(4), i))(jnp.arange(B))
    draw = jax.jit(draw_tokens)
    tok = np.concatenate([np.asarray(draw(keys, jnp.full((B,), c, jnp.int32), lp)) for c in range(calls)])
    counts = np.bincount(tok, minlength=V)
    assert counts[p == 0].sum() == 0, np.nonzero(counts * (p == 0))
    N = B * calls
    _, pval = scipy.stats.chisquare(counts[support], N * p[support])
    assert pval > 1e-3, pval
    # Negative control: moving 3 % of the mass between two support tokens is detected at this sample size.
    q = p.copy()
    q[support[0]] += 0.03
    q[support[1]] = max(q[support[1]] - 0.03, 1e-3)
    q /= q.sum()
    _, p_wrong = scipy.stats.chisquare(counts[support], N * q[support])
    assert p_wrong < 1e-6


def _kept_ties_np(x, top_k, top_p, min_p):
    """Brute-force support rule with ties (float64): x_j is kept when fewer than k entries are above it,
    when the top-k distribution's mass strictly above it is below p, and when p_j >= min_p * p_max."""
    x = np.asarray(x, np.float64)
    above = x[None, :] > x[:, None]  # above[j, i]: x_i > x_j
    keep = np.ones(x.shape, bool)
    if top_k > 0:
        keep &= above.sum(1) < top_k
    q = np.where(keep, np.exp(x - x.max()), 0.0)
    q /= q.sum()
    if top_p < 1:
        keep &= (above * q[None, :]).sum(1) < top_p
    if min_p > 0:
        p = np.exp(x - x.max())
        keep &= p >= min_p * p.max()
    return keep


# (temperature, top_k, top_p, min_p) per row of one batch: every rule alone, combined, and untouched rows
_ROWS = [(1.0, 0, 1.0, 0.0), (0.7, 0, 0.9, 0.0), (1.0, 40, 1.0, 0.0), (1.3, 25, 0.8, 0.0), (1.0, 0, 0.95, 0.05),
         (0.0, 0, 1.0, 0.0), (1.0, 1, 0.5, 0.0), (2.0, 300, 0.3, 0.0)]  # fmt: skip


@pytest.mark.parametrize("ties", [False, True])
def test_truncation_support_per_row_equals_numpy(ties):
    """processed_logprobs on a mixed batch (per-row temperature, top-k, top-p, min-p): the kept support of every
    row is exactly the numpy reference's, and the renormalised log-probs agree on it. Distinct logits are checked
    against the sorted-prefix reference (_processed_np); logits rounded to one decimal (large tie groups at
    every threshold) against the brute-force rule with ties (_kept_ties_np)."""
    V = 400
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(len(_ROWS), V)) * 2.0).astype(np.float32)
    if ties:
        logits = np.round(logits, 1).astype(np.float32)
    T, K, P, M = (np.asarray(c) for c in zip(*_ROWS))
    got = np.asarray(
        S.processed_logprobs(
            jnp.asarray(logits),
            jnp.asarray(T, jnp.float32),
            jnp.asarray(K, jnp.int32),
            jnp.asarray(P, jnp.float32),
            jnp.asarray(M, jnp.float32),
        )
    )
    for r, (t, k, p, m) in enumerate(_ROWS):
        x = logits[r] / (t if t > 0 else 1.0)
        if ties:
            keep = _kept_ties_np(x, k, p, m)
        else:
            keep = _processed_np(logits[r], t if t > 0 else 1.0, k, p, m) > 0
        assert np.array_equal(np.isfinite(got[r]), keep), (r, np.isfinite(got[r]).sum(), keep.sum())
        q = np.exp(x[keep] - x[keep].max())
        want = np.log(q / q.sum())
        # log of a renormalised softmax over V entries: max, sum, renormalising sum (tests/tolerances.py)
        np.testing.assert_allclose(got[r][keep], want, atol=2 * reorder_atol(x, 3 * V))
        if (k, p, m) != (0, 1.0, 0.0):
            assert keep.sum() < V, r  # this row's rule removed something (else it would test nothing)


@pytest.mark.parametrize("unstack", [True, False])
def test_untied_head_and_layouts_match_teacher_forcing(unstack):
    """Untied vocabulary projection (the sampler's [V, D] copy) and both layer layouts: greedy tokens are the
    argmax and raw log-probs the log-softmax of a plain teacher-forced forward over the finished sequence."""
    from storm_jax.models.qwen import ModelConfig, init_params

    cfg = ModelConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=8, tie_word_embeddings=False,
    )  # fmt: skip
    params = init_params(cfg, jax.random.PRNGKey(4), std=0.3)
    eng = EngineConfig(num_slots=2, max_len=48, chunk_size=8, min_bucket=8, max_bucket=16, min_window=16,
                       unstack_layers=unstack)  # fmt: skip
    prompts = [[5, 17, 250, 3], [9, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]]
    got = Sampler(params, cfg, eng).run([Request(p, SamplingParams(max_new_tokens=30)) for p in prompts])
    for p, g in zip(prompts, got):
        seq = g[0]
        logits = np.asarray(forward(params, jnp.asarray([seq.full]), cfg)[0][0], np.float64)
        rows = logits[len(p) - 1 : len(seq.full) - 1]
        assert seq.tokens == rows.argmax(-1).tolist()
        m = rows.max(-1, keepdims=True)
        lsm = rows - m - np.log(np.exp(rows - m).sum(-1, keepdims=True))
        atol = 2 * reorder_atol(rows, logits_depth(cfg, len(seq.full)))  # two programs, one computation
        np.testing.assert_allclose(seq.logprobs_raw, lsm[np.arange(len(rows)), seq.tokens], atol=atol)


def test_params_relaid_out_once_and_updates_take_effect():
    """Setting the same weights again reuses the decode layout; new weights (a GRPO update) replace it."""
    from storm_jax.models.qwen import ModelConfig, init_params

    cfg = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=8)  # fmt: skip
    params = init_params(cfg, jax.random.PRNGKey(0), std=0.5)
    sampler = Sampler(
        params, cfg, EngineConfig(num_slots=1, max_len=32, chunk_size=4, min_bucket=8, max_bucket=8)
    )
    laid_out = sampler.params
    sampler.params = params
    assert sampler.params is laid_out
    newer = jax.tree.map(lambda a: a * 1.5, params)
    sampler.params = newer
    assert sampler.params is not laid_out
    np.testing.assert_array_equal(
        np.asarray(sampler.params["layers"][1]["q"]), np.asarray(newer["layers"]["q"][1])
    )
    got = sampler.run([Request([1, 2, 3], SamplingParams(max_new_tokens=6))])[0][0].tokens
    ids = [1, 2, 3]
    for _ in range(6):  # greedy under the new weights, by plain forward passes
        ids.append(int(np.argmax(np.asarray(forward(newer, jnp.asarray([ids]), cfg)[0][0, -1]))))
    assert got == ids[3:]


@pytest.mark.parametrize("V", [97, 128, 151936])
@pytest.mark.parametrize("B", [1, 2, 6])
def test_argmax_logsumexp_equals_numpy(V, B):
    """The blocked argmax picks the first maximum (ties included, vocab not a multiple of the block) and the
    log-sum-exp is numpy's, columns as rows of a [V, B] matrix."""
    rng = np.random.default_rng(V)
    x = (rng.normal(size=(V, 6)) * 3).astype(np.float32)
    x[V // 2, 1] = x[V - 1, 1] = x[:, 1].max() + 1.0  # tie: first index wins
    x[:, 2] = 0.5  # all equal: index 0
    x[V - 1, 3] = 50.0  # maximum in the last (partial) block
    x[0, 4] = -np.inf  # masked entries are fine
    cols = {1: [3], 2: [1, 4], 6: list(range(6))}[B]  # batch sizes 1 and 2 take another reduction path
    x = np.ascontiguousarray(x[:, cols])
    best, lse = jax.jit(S.argmax_logsumexp)(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(best), np.argmax(x, axis=0))
    want_special = {1: V // 2, 2: 0, 3: V - 1}
    for j, c in enumerate(cols):
        if c in want_special:
            assert int(best[j]) == want_special[c]
    x64 = x.astype(np.float64)
    m = x64.max(axis=0)
    want = m + np.log(np.exp(x64 - m).sum(axis=0))
    # fp32 sum of V exponentials (each within u of exact): relative error <= (V + 1) u in the sum, so the log
    # is within (V + 2) u absolutely, in any summation order
    np.testing.assert_allclose(np.asarray(lse), want, rtol=0, atol=(V + 2) * U32)


def test_stops_eos_token_sequence_and_string(hf_model):
    _, cfg, params, prompts = hf_model
    sampler = Sampler(params, cfg, ENGINE)
    p = prompts[1]
    ref = sampler.run([Request(p, SamplingParams(max_new_tokens=NEW))])[0][0].tokens

    def first_index(tok):
        return ref.index(tok)

    eos = ref[11]
    decode = lambda ids: "".join(f"<{i}>" for i in ids)  # noqa: E731
    cases = [
        (SamplingParams(max_new_tokens=NEW, eos_ids=(eos,)), ref[: first_index(eos) + 1], "eos"),
        (SamplingParams(max_new_tokens=NEW, stop_token_seqs=(tuple(ref[9:11]),)), None, "stop"),
        (SamplingParams(max_new_tokens=NEW, stop_strings=(f"{ref[13]}><{ref[14]}",)), None, "stop"),
    ]
    for sp, want, reason in cases:
        seq = sampler.run([Request(p, sp)], decode=decode)[0][0]
        if want is None:  # earliest completion of the stop
            if sp.stop_token_seqs:
                st = list(sp.stop_token_seqs[0])
                end = next(e for e in range(2, NEW + 1) if ref[e - 2 : e] == st)
            else:
                end = next(e for e in range(1, NEW + 1) if sp.stop_strings[0] in decode(ref[:e]))
            want = ref[:end]
        assert seq.tokens == want
        assert seq.stop_reason == reason
        assert len(seq.logprobs_raw) == len(seq.tokens)


def test_compilations_bounded_in_steady_state(hf_model):
    _, cfg, params, prompts = hf_model
    sampler = Sampler(params, cfg, ENGINE)
    rng = np.random.default_rng(5)
    sp = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12)

    def batch(lens, n):
        return [Request(rng.integers(1, 96, size=k).tolist(), sp, n=n, seed=int(k)) for k in lens]

    sampler.run(batch([5, 8, 20, 31, 2, 14, 9], 2))
    before = S.compile_counts()
    for lens, n in (([6, 7, 21, 30, 3, 13, 10], 2), ([4, 19, 25], 3), ([11, 28, 2, 15, 16, 17], 1)):
        sampler.run(batch(lens, n))
    after = S.compile_counts()
    # Prefill shapes: 3 buckets (8, 16, 32) x 3 batch sizes (1, 2, 4); copies: 3 sizes; decode: 1 per config.
    assert after["prefill_rows"] - before["prefill_rows"] <= 2, (before, after)
    assert after["copy_rows"] - before["copy_rows"] <= 1, (before, after)
    assert after["decode_chunk"] == before["decode_chunk"], (before, after)


def test_engine_window_sizes():
    """Windows are the smallest 2^k or 1.5 * 2^k covering the need, at least min_window, at most max_len."""
    eng = EngineConfig(max_len=1000, min_window=128)
    got = {n: eng.window(n) for n in (1, 128, 129, 192, 193, 256, 257, 384, 385, 600, 769)}
    assert got == {
        1: 128,
        128: 128,
        129: 192,
        192: 192,
        193: 256,
        256: 256,
        257: 384,
        384: 384,
        385: 512,
        600: 768,
        769: 1000,
    }
    assert EngineConfig(max_len=40, min_window=16).window(17) == 24


def test_attention_windows_same_tokens_and_bounded_compiles(hf_model):
    """Decode reads a window of the cache (2^k or 1.5 * 2^k positions): results equal the full-cache decode while
    rows cross window sizes, and there is at most one decode executable per window size (none new in steady
    state)."""
    _, cfg, params, _ = hf_model
    base = dict(num_slots=3, max_len=128, chunk_size=8, min_bucket=8, max_bucket=32, max_prefill_batch=4)
    rng = np.random.default_rng(9)
    sp = SamplingParams(temperature=0.9, top_k=20, max_new_tokens=70)
    reqs = [Request(rng.integers(1, 96, size=k).tolist(), sp, n=2, seed=k) for k in (3, 30, 50)]
    before = S.compile_counts()["decode_chunk"]
    windowed = Sampler(params, cfg, EngineConfig(**base, min_window=16))
    got = windowed.run(reqs)
    after_first = S.compile_counts()["decode_chunk"]
    assert after_first - before <= 7  # windows 16, 24, 32, 48, 64, 96, 128
    full = Sampler(params, cfg, EngineConfig(**base, min_window=128)).run(reqs)
    for g, f in zip(got, full):
        for a, b in zip(g, f):
            assert a.tokens == b.tokens
            # a window vs the full cache: the same computation in another order (tests/tolerances.py)
            logits = forward(params, jnp.asarray([b.prompt + b.tokens]), cfg)[0][0]
            atol = 2 * reorder_atol(logits, logits_depth(cfg, 128))
            np.testing.assert_allclose(a.logprobs_raw, b.logprobs_raw, atol=atol)
    settled = S.compile_counts()["decode_chunk"]
    windowed.run([Request(rng.integers(1, 96, size=k).tolist(), sp, seed=k) for k in (7, 44, 12, 60)])
    assert S.compile_counts()["decode_chunk"] == settled


def test_sharded_cache_and_params_match_unsharded(hf_model):
    """8 fake devices: params sharded (fsdp x tensor), cache rows over (data, fsdp), kv heads over tensor."""
    from storm_jax.models.qwen import param_logical_axes
    from storm_jax.parallel.mesh import MeshRules, make_mesh, shard_pytree

    model, cfg, params, prompts = hf_model
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    rules = MeshRules(make_mesh(data=2, fsdp=2, tensor=2))
    sharded = shard_pytree(params, param_logical_axes(cfg), rules)
    sampler = Sampler(sharded, cfg, ENGINE, mesh_rules=rules)
    assert len(sampler.k.sharding.device_set) == 8
    got = sampler.run([Request(p, SamplingParams(max_new_tokens=12)) for p in prompts[:5]])
    want = Sampler(params, cfg, ENGINE).run(
        [Request(p, SamplingParams(max_new_tokens=12)) for p in prompts[:5]]
    )
    assert [g[0].tokens for g in got] == [w[0].tokens for w in want]
