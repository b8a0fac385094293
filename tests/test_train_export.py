"""`storm-jax export`: a trained run's checkpoint -> HF directory that transformers loads with the same logits."""

import jax
import numpy as np

from storm_jax.config import load_config
from storm_jax.models.qwen import forward
from storm_jax.train.export_cli import main as export_main
from storm_jax.train.sft import load_run_state, train_sft


def test_export_loads_in_transformers_with_same_logits(tmp_path):
    import torch
    import transformers

    wd, out = str(tmp_path / "run"), str(tmp_path / "hf")
    cfg = load_config(
        "configs/tiny_cpu.py:toy",
        [f"workdir={wd}", "train.steps=3", "train.progress=false", "mesh.fsdp=2", "data.batch_size=2"],
        num_devices=2,
    )
    cfg.unlock()
    res = train_sft(cfg, echo=lambda *a: None, devices=jax.devices()[:2])
    assert res["step"] == 3
    assert export_main(["--workdir", wd, "--out", out]) == 0

    _, model_cfg, state, step = load_run_state(wd, devices=jax.devices()[:1])
    assert step == 3
    params = jax.device_get(state.params)
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, (2, 17))
    ours, _ = forward(params, tokens, model_cfg)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4)
    # Trained weights, not the init: the exported lm_head differs from a fresh init of the same seed.
    assert not np.allclose(model.lm_head.weight.detach().numpy().T, 0.0)
