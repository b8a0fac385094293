"""Config loading: presets against published numbers, absl-style overrides, validation errors, save/reload."""

import json

import pytest

from storm_jax.config import ConfigError, config_from_json, load_config, parse_argv, save_config


def test_presets_match_published_parameter_counts():
    import sys

    from storm_jax.config import CONFIGS_DIR, model_config

    sys.path.insert(0, str(CONFIGS_DIR))
    try:
        import model_presets
    finally:
        sys.path.remove(str(CONFIGS_DIR))
    from storm_jax.models.qwen import ModelConfig
    from storm_jax.train.metrics import count_params

    counts = {k: count_params(ModelConfig(**v)) for k, v in model_presets.PRESETS.items()}
    # Model cards: Qwen3-0.6B 0.6B / 1.7B 1.7B / 4B 4.0B / 8B 8.2B; Qwen2.5-7B 7.61B total parameters.
    assert abs(counts["qwen3-0.6b"] / 1e9 - 0.596) < 0.01
    assert abs(counts["qwen3-1.7b"] / 1e9 - 1.72) < 0.02
    assert abs(counts["qwen3-4b"] / 1e9 - 4.02) < 0.03
    assert abs(counts["qwen3-8b"] / 1e9 - 8.19) < 0.03
    assert abs(counts["qwen2.5-7b"] / 1e9 - 7.62) < 0.02
    assert counts["qwen3-4b-thinking-2507"] == counts["qwen3-4b"]
    cfg = load_config("storm_sft", ["data.path=x.jsonl"], num_devices=8)
    assert model_config(cfg).rope_theta == 5e6 and model_config(cfg).max_position_embeddings == 262144


def test_overrides_are_typed():
    spec, ov, rest = parse_argv(["--config=storm_sft", "--config.optim.lr=2e-5", "--config.mesh.fsdp",
                                 "4", "--config.mesh.data=2", "--config.data.pack=false", "--config.data.path=a.jsonl", "--x"])  # fmt: skip
    assert spec == "storm_sft" and rest == ["--x"]
    cfg = load_config(spec, ov, num_devices=8)
    assert cfg.optim.lr == 2e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.mesh.fsdp == 4 and cfg.mesh.data == 2 and cfg.data.pack is False and cfg.data.path == "a.jsonl"
    with pytest.raises(AttributeError):  # locked after validation
        cfg.new_key = 1


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=1", "optim.lrr"),
        ("nope.x=1", "nope"),
        ("optim.lr=fast", "optim.lr"),
        ("train.steps=1.5", "train.steps"),
        ("data.pack=maybe", "data.pack"),
        ("train.loss_norm=mean", "train.loss_norm"),
        ("mesh.tensor=3", "mesh"),
        ("train.grad_accum=3", "train.grad_accum"),
        ("model.num_kv_heads=5", "model"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config("storm_sft", ["data.path=x.jsonl", override], num_devices=8)


def test_batch_must_divide_data_parallel_devices():
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config("tiny_cpu", ["data.batch_size=4", "mesh.fsdp=8"], num_devices=8)


def test_pipeline_sft_and_grpo_prompts_must_match():
    """An SFT stage trained with an open <think> block and a GRPO stage prompting without it is refused."""
    cfg = load_config("storm_tiny", num_devices=1)
    assert cfg.data.enable_thinking == cfg.grpo.enable_thinking
    with pytest.raises(ConfigError, match="grpo.enable_thinking"):
        load_config("storm_tiny", ["data.enable_thinking=True"], num_devices=1)


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text(
        "from storm_jax.config import base_config\n"
        "def get_config():\n    c = base_config()\n    c.optim.learning_rate = 1.0\n    return c\n"
    )
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(str(f), num_devices=1)


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config("tiny_cpu", ["optim.lr=0.5"], num_devices=2)
    path = save_config(cfg, tmp_path)
    assert json.loads(path.read_text())["optim"]["lr"] == 0.5
    back = config_from_json(path)
    assert back.to_dict() == cfg.to_dict()


def test_mesh_rules_are_config_data():
    """mesh.rules picks the logical-axis table the trainer shards with; a bad preset names its key."""
    import jax

    from storm_jax.config import ConfigError, load_config
    from storm_jax.parallel.mesh import rules_from_config
    from storm_jax.train.setup import make_mesh_rules

    one = jax.devices()[:1]
    cfg = load_config("tiny_cpu", ["mesh.rules=tp_only"], num_devices=1)
    assert make_mesh_rules(cfg, devices=one).rules == rules_from_config(
        "tp_only", mesh_axes=("data", "fsdp", "tensor")
    )
    assert (
        make_mesh_rules(load_config("tiny_cpu", [], num_devices=1), devices=one).rules
        != make_mesh_rules(cfg, devices=one).rules
    )
    for key in ("rules", "sampler_rules"):
        with pytest.raises(ConfigError, match=rf"mesh\.{key}='nosuch': unknown rules preset"):
            load_config("tiny_cpu", [f"mesh.{key}=nosuch"], num_devices=1)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("dpo.beta=0", "dpo.beta: must be > 0"),
        ("dpo.label_smoothing=0.5", "dpo.label_smoothing"),
        ("dpo.normalize=tokens", "dpo.normalize"),
        ("dpo.reference=precompute", "dpo.reference"),
        ("dpo.ref_batch_pairs=3", "dpo.ref_batch_pairs: 3 is not divisible by data*fsdp=2"),
        ("data.overlong=cut", "data.overlong"),
    ],
)
def test_dpo_keys_are_validated_by_name(override, needle):
    ok = ["data.path=pairs.jsonl"]
    cfg = load_config("steporlm_dpo:tiny", ok, num_devices=2)
    assert cfg.recipe == "dpo" and cfg.dpo.reference == "precomputed"
    with pytest.raises(ConfigError, match=needle.replace("*", r"\*")):
        load_config("steporlm_dpo:tiny", [*ok, override], num_devices=2)


def test_dpo_config_roundtrips_through_config_json(tmp_path):
    cfg = load_config("steporlm_dpo:tiny", ["data.path=p.jsonl", "dpo.beta=0.25", "dpo.reference=on_the_fly"])
    back = config_from_json(save_config(cfg, tmp_path))
    assert back.recipe == "dpo" and back.dpo.beta == 0.25 and back.dpo.reference == "on_the_fly"
