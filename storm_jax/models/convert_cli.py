"""`storm-jax convert`: an HF checkpoint directory <-> an Orbax params checkpoint.

  storm-jax convert --from-hf DIR --to-params OUT [--dtype float32]
  storm-jax convert --from-params CKPT [--config HF_CONFIG_DIR] --to-hf OUT [--dtype bfloat16]

An Orbax params checkpoint restores straight into any mesh's shardings (training: `init_from_params`); the
architecture travels beside it as `model_config.json` (the HF config.json), and the source's tokenizer files
(if it had any) beside that. The HF directory written by --to-hf carries a tokenizer: the one found beside
the params or in --config / --tokenizer, else the built Qwen3 tokenizer for a model over the Qwen vocabulary.
"""

from __future__ import annotations

import json
import os
import sys

from storm_jax.cli_util import (
    ArgumentParser,
    UsageError,
    check_hf_dir,
    check_params_dir,
    fail,
    make_world_readable,
    tokenizer_for,
)

PROG = "storm-jax convert"
DTYPES = ("float32", "bfloat16", "float16")


def hf_to_params(hf_dir: str, out: str, dtype: str = "float32") -> None:
    """Write an HF checkpoint's params as an Orbax checkpoint `out/params` plus `out/model_config.json`."""
    from storm_jax.models.hf import config_to_hf, load_hf_checkpoint
    from storm_jax.train.checkpoint import save_params

    cfg, params = load_hf_checkpoint(hf_dir, dtype=dtype)
    save_params(os.path.join(out, "params"), params)
    with open(os.path.join(out, "model_config.json"), "w") as f:
        json.dump(config_to_hf(cfg), f, indent=2)
    # Only the source's own tokenizer travels: a later --to-hf falls back to the built one anyway.
    tok = tokenizer_for(0, [hf_dir])
    if tok is not None:
        from storm_jax.tokenizer import save_tokenizer

        save_tokenizer(tok, out)
    make_world_readable(out)


def _model_config_path(ckpt: str, config_dir: str | None) -> str:
    path = os.path.join(config_dir, "config.json") if config_dir else os.path.join(ckpt, "model_config.json")
    if not os.path.isfile(path):
        flag = "--config" if config_dir else "--from-params"
        hint = "" if config_dir else " (pass --config HF_DIR whose config.json describes the params)"
        raise UsageError(f"{flag}: {path}: no such file{hint}")
    return path


def params_to_hf(
    ckpt: str,
    out: str,
    config_dir: str | None = None,
    dtype: str | None = None,
    tokenizer_dir: str | None = None,
) -> None:
    """Write an Orbax params checkpoint as an HF checkpoint directory `out` (with the tokenizer)."""
    import jax

    from storm_jax.models.hf import config_from_hf, save_hf_checkpoint
    from storm_jax.models.qwen import abstract_params
    from storm_jax.train.checkpoint import restore_params

    params_dir = check_params_dir(ckpt, "--from-params")
    cfg_path = _model_config_path(ckpt, config_dir)
    with open(cfg_path) as f:
        cfg = config_from_hf(json.load(f), source=cfg_path)
    tok = tokenizer_for(cfg.vocab_size, [tokenizer_dir, ckpt, config_dir])
    if tok is None:
        print(
            f"{PROG}: warning: no tokenizer written (vocabulary of {cfg.vocab_size} is not Qwen's; "
            "pass --tokenizer DIR)",
            file=sys.stderr,
        )
    abstract = abstract_params(cfg)
    sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract)
    params = restore_params(str(params_dir), abstract)
    save_hf_checkpoint(cfg, params, out, dtype=dtype, tokenizer=tok)
    make_world_readable(out)


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog=PROG, description=__doc__)
    ap.add_argument("--from-hf", metavar="DIR", help="HF checkpoint directory to read")
    ap.add_argument("--to-params", metavar="OUT", help="Orbax params checkpoint to write")
    ap.add_argument("--from-params", metavar="CKPT", help="Orbax params checkpoint to read")
    ap.add_argument(
        "--config",
        metavar="DIR",
        help="HF dir whose config.json describes --from-params (default: its model_config.json)",
    )
    ap.add_argument("--tokenizer", metavar="DIR", help="directory with tokenizer files for --to-hf")
    ap.add_argument("--to-hf", metavar="OUT", help="HF checkpoint directory to write")
    ap.add_argument("--dtype", choices=DTYPES, help="tensor dtype written (default: the source's)")
    return ap


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax convert`."""
    ap = build_parser()
    a = ap.parse_args(argv)
    from storm_jax.models.hf import CheckpointError

    try:
        if a.from_hf and a.to_params and not (a.from_params or a.to_hf):
            check_hf_dir(a.from_hf, "--from-hf")
            hf_to_params(a.from_hf, a.to_params, a.dtype or "float32")
            print(f"{a.from_hf} -> {a.to_params}")
        elif a.from_params and a.to_hf and not (a.from_hf or a.to_params):
            check_params_dir(a.from_params, "--from-params")
            _model_config_path(a.from_params, a.config)
            if a.tokenizer and not os.path.isdir(a.tokenizer):
                raise UsageError(f"--tokenizer {a.tokenizer}: no such directory")
            params_to_hf(a.from_params, a.to_hf, a.config, a.dtype, a.tokenizer)
            print(f"{a.from_params} -> {a.to_hf}")
        else:
            ap.error("use --from-hf DIR --to-params OUT, or --from-params CKPT --to-hf OUT")
    except (UsageError, CheckpointError) as e:
        return fail(PROG, str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
