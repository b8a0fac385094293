"""SFT loss: packed batches against an independent per-document numpy computation; masked tokens carry no
gradient; token_logprobs chunking and entropy."""

import jax
import jax.numpy as jnp
import numpy as np
from tolerances import U32, assert_within, entropy_atol, logits_depth, logprob_atol, reorder_atol

from storm_jax.models.qwen import ModelConfig, forward, init_params
from storm_jax.train.logprobs import token_logprobs
from storm_jax.train.losses import make_sft_loss

CFG = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, tie_word_embeddings=False)  # fmt: skip
PARAMS = init_params(CFG, jax.random.key(1), std=0.2)


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def build(docs, T):
    """Pack documents (ids, mask-over-ids) into rows: tokens=ids[:-1], targets=ids[1:], loss_mask=mask[1:]."""
    rows = []
    for row_docs in docs:
        r = {k: np.zeros(T, np.int32) for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions")}
        t = 0
        for d, (ids, mask) in enumerate(row_docs, start=1):
            n = len(ids) - 1
            r["tokens"][t : t + n] = ids[:-1]
            r["targets"][t : t + n] = ids[1:]
            r["loss_mask"][t : t + n] = mask[1:]
            r["segment_ids"][t : t + n] = d
            r["positions"][t : t + n] = np.arange(n)
            t += n
        rows.append(r)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def reference_losses(docs, logits_seen=None):
    """Each document on its own (no packing, no segment ids), log-softmax and masking in numpy."""
    all_nll, per_doc = [], []
    for row_docs in docs:
        for ids, mask in row_docs:
            logits, _ = forward(PARAMS, jnp.asarray(ids[:-1])[None], CFG)
            if logits_seen is not None:
                logits_seen.append(np.asarray(logits[0], np.float64))
            lp = np_log_softmax(np.asarray(logits[0], np.float64))
            nll = -lp[np.arange(len(ids) - 1), ids[1:]]
            m = np.asarray(mask[1:], bool)
            all_nll.append(nll[m])
            if m.any():
                per_doc.append(nll[m].mean())
    return np.concatenate(all_nll).mean(), np.mean(per_doc)


def random_docs(seed):
    rng = np.random.default_rng(seed)
    docs = []
    for n_docs in (3, 1, 2):
        row = []
        for _ in range(n_docs):
            n = int(rng.integers(4, 10))
            ids = rng.integers(0, CFG.vocab_size, n)
            mask = (rng.random(n) < 0.6).astype(np.int32)
            row.append((ids, mask))
        docs.append(row)
    return docs


def test_packed_loss_matches_per_document_numpy():
    docs = random_docs(0)
    batch = build(docs, T=32)
    seen = []
    ref_tok, ref_seq = reference_losses(docs, seen)
    # Packed (T = 32 keys, segment masks) vs one document at a time: two programs of the model's fp32
    # computation, each token's NLL within logprob_atol (tests/tolerances.py); then a mean (nll >= 0, so
    # sum |terms| = the mean itself) over at most B (T + 1) + T values with 2 divisions.
    B, T = batch["tokens"].shape
    nll_atol = logprob_atol(np.concatenate(seen), logits_depth(CFG, T))
    for norm, ref in (("token", ref_tok), ("sequence", ref_seq)):
        for chunk in (0, 8):
            loss, aux = make_sft_loss(normalization=norm, chunk_size=chunk)(PARAMS, batch, CFG)
            bound = nll_atol + (B * (T + 1) + T + 2) * U32 * ref
            assert_within(float(loss), ref, bound, f"{norm} chunk={chunk}")
    _, aux = make_sft_loss()(PARAMS, batch, CFG)
    assert float(aux["weight"]) == sum(int(np.sum(m[1:])) for row in docs for _, m in row)


def test_logprob_chunking_and_entropy():
    batch = build(random_docs(1), T=32)
    kw = dict(segment_ids=batch["segment_ids"], positions=batch["positions"])
    lp0, ent0 = token_logprobs(PARAMS, CFG, batch["tokens"], batch["targets"], return_entropy=True, **kw)
    lp8, ent8 = token_logprobs(
        PARAMS, CFG, batch["tokens"], batch["targets"], chunk_size=8, return_entropy=True, **kw
    )
    # The forward (eager, same ops and shapes) gives the same hidden states to both; chunking reorders at most
    # the final norm and the vocabulary projection (depth 2 D) and the log-softmax (tests/tolerances.py).
    logits, _ = forward(PARAMS, batch["tokens"], CFG, **kw)
    logits = np.asarray(logits, np.float64)
    D = CFG.hidden_size
    assert_within(lp0, lp8, logprob_atol(logits, 2 * D), "log-probs, chunked")
    assert_within(ent0, ent8, entropy_atol(logits, 2 * D), "entropy, chunked")
    p = np.exp(np_log_softmax(logits))
    assert_within(ent0, -(p * np.log(p)).sum(-1), entropy_atol(logits, 2 * D), "entropy vs float64")
    # Chunked gradients equal unchunked ones.
    f = lambda c: (
        lambda prm: jnp.sum(token_logprobs(prm, CFG, batch["tokens"], batch["targets"], chunk_size=c, **kw))
    )
    g0, g8 = jax.grad(f(0))(PARAMS), jax.grad(f(8))(PARAMS)
    # The same forward; the backward reorders where the chunks are: the projection's (d hidden: V terms,
    # d W: B T terms) and the final norm's (D); the layers' backward then carries that perturbation (first
    # order, as in tests/tolerances.py).
    depth = CFG.vocab_size + batch["tokens"].size + 2 * D
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g8)):
        assert_within(a, b, reorder_atol(b, depth), "grad")  # grads up to ~10


def test_tool_output_tokens_carry_no_gradient():
    """A real trajectory (Qwen tokenizer): the output block is masked, and what it predicts never matters."""
    from storm_jax.data.format import Segment, code_segment, output_segment
    from storm_jax.tokenizer import encode_assistant_segments, load_tokenizer

    tok = load_tokenizer()
    segs = [
        Segment("text", "Let x be the units of A."),
        code_segment("print(3 * 4)"),
        output_segment("12"),
        Segment("text", "So the answer is \\boxed{12}."),
    ]
    ids, mask = encode_assistant_segments(tok, segs)
    ids, mask = np.asarray(ids), np.asarray(mask)
    out_ids = tok.encode(output_segment("12").text, add_special_tokens=False)
    # The masked tokens are exactly one contiguous run: the output block.
    zeros = np.flatnonzero(mask == 0)
    assert len(zeros) == len(out_ids) and np.all(np.diff(zeros) == 1)
    assert tok.decode(ids[zeros].tolist()) == output_segment("12").text

    cfg = CFG.replace(vocab_size=151936, hidden_size=16, intermediate_size=32, head_dim=4)
    params = init_params(cfg, jax.random.key(0), std=0.2)
    batch = build([[(ids, mask)]], T=len(ids) + 3)
    loss_fn = make_sft_loss()
    vg = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, cfg)[0]))
    loss, grads = vg(params, batch)

    rng = np.random.default_rng(0)
    masked_targets = batch["loss_mask"][0] == 0
    b2 = {k: v.copy() for k, v in batch.items()}
    b2["targets"][0, masked_targets] = rng.integers(0, 151936, masked_targets.sum())
    loss2, grads2 = vg(params, b2)
    assert float(loss2) == float(loss)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2)):
        np.testing.assert_array_equal(a, b)
    # Control: changing one trained target does change loss and gradients (the check above can fail).
    b3 = {k: v.copy() for k, v in batch.items()}
    j = int(np.flatnonzero(batch["loss_mask"][0])[0])
    b3["targets"][0, j] = (b3["targets"][0, j] + 1) % 151936
    loss3, grads3 = vg(params, b3)
    assert float(loss3) != float(loss)
    assert not np.array_equal(grads3["embed"], grads["embed"])
