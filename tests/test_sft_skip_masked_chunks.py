"""SFT loss with train.skip_masked_chunks: time chunks without a loss token skip the vocabulary projection;
the loss and the gradients are those of the full computation."""

import jax
import jax.numpy as jnp
import numpy as np

from storm_jax.configs.model_presets import preset
from storm_jax.models.qwen import ModelConfig, init_params
from storm_jax.train.losses import make_sft_loss


def test_skip_masked_chunks_same_loss_and_grads():
    cfg = ModelConfig(**{**preset("tiny-toy-vocab"), "dtype": "float32", "param_dtype": "float32"})
    params = init_params(cfg, jax.random.key(0))
    B, T = 2, 64
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.int32)
    mask[0, 50:60] = 1  # row 0: loss in chunk 3 only; row 1: in chunk 3 too -> chunks 0-2 skipped
    mask[1, 40:50] = 1
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, 1), "loss_mask": mask,
             "segment_ids": np.ones((B, T), np.int32), "positions": np.tile(np.arange(T), (B, 1))}  # fmt: skip
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    outs = []
    for skip in (False, True):
        fn = make_sft_loss(chunk_size=16, skip_masked_chunks=skip)
        (loss, aux), g = jax.value_and_grad(lambda p, fn=fn: fn(p, batch, cfg), has_aux=True)(params)
        outs.append((loss, aux["sum_loss_tokens"], g))
    assert float(outs[0][1]) == float(outs[1][1]) == 20.0
    # Equal, not close: both programs run the same trunk and the same ops on every chunk that has a loss token
    # (the cond only replaces the others, whose masked contributions are exact zeros either way), and the chunk
    # results are reduced in the same order.
    assert float(outs[0][0]) == float(outs[1][0])
    for a, b in zip(jax.tree.leaves(outs[0][2]), jax.tree.leaves(outs[1][2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
