"""`storm-jax convert`: an HF checkpoint directory <-> an Orbax params checkpoint.

  storm-jax convert --from-hf DIR --to-params OUT [--dtype float32]
  storm-jax convert --from-params CKPT --config HF_CONFIG_DIR --to-hf OUT [--dtype bfloat16]

An Orbax params checkpoint restores straight into any mesh's shardings (training: `init_from_params`); the
architecture travels beside it as `model_config.json` (the HF config.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def hf_to_params(hf_dir: str, out: str, dtype: str = "float32") -> None:
    from storm_jax.models.hf import config_to_hf, load_hf_checkpoint
    from storm_jax.train.checkpoint import save_params

    cfg, params = load_hf_checkpoint(hf_dir, dtype=dtype)
    save_params(os.path.join(out, "params"), params)
    with open(os.path.join(out, "model_config.json"), "w") as f:
        json.dump(config_to_hf(cfg), f, indent=2)


def params_to_hf(ckpt: str, out: str, config_dir: str | None = None, dtype: str | None = None) -> None:
    import jax

    from storm_jax.models.hf import config_from_hf, save_hf_checkpoint
    from storm_jax.models.qwen import abstract_params
    from storm_jax.train.checkpoint import restore_params

    cfg_path = (
        os.path.join(config_dir, "config.json") if config_dir else os.path.join(ckpt, "model_config.json")
    )
    with open(cfg_path) as f:
        cfg = config_from_hf(json.load(f), source=cfg_path)
    params_dir = os.path.join(ckpt, "params") if os.path.isdir(os.path.join(ckpt, "params")) else ckpt
    abstract = abstract_params(cfg)
    sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract)
    params = restore_params(params_dir, abstract)
    save_hf_checkpoint(cfg, params, out, dtype=dtype)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="storm-jax convert", description=__doc__)
    ap.add_argument("--from-hf")
    ap.add_argument("--to-params")
    ap.add_argument("--from-params")
    ap.add_argument("--config", default=None, help="HF dir whose config.json describes --from-params")
    ap.add_argument("--to-hf")
    ap.add_argument("--dtype", default=None)
    a = ap.parse_args(argv)
    if a.from_hf and a.to_params:
        hf_to_params(a.from_hf, a.to_params, a.dtype or "float32")
        print(f"{a.from_hf} -> {a.to_params}")
    elif a.from_params and a.to_hf:
        params_to_hf(a.from_params, a.to_hf, a.config, a.dtype)
        print(f"{a.from_params} -> {a.to_hf}")
    else:
        ap.error("use --from-hf DIR --to-params OUT, or --from-params CKPT --to-hf OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
