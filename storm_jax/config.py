"""Training configs: the schema, loading config files and packaged recipes, absl-style overrides, validation.

A config file is a Python file with `get_config(arg: str | None = None) -> ml_collections.ConfigDict` (the
ml_collections convention; `--config=path/x.py:arg` passes `arg`). The recipes in storm_jax/configs/ also
resolve by name, from any directory: `--config=storm_sft`, `--config=storm_grpo:tiny`. Recipe files start from
`base_config()` so every run has the same key set; the loader then checks the result against that schema:
unknown keys, wrong types and impossible mesh/batch sizes raise one `ConfigError` naming the key.

Overrides follow absl's `config_flags` style: `--config.optim.lr=2e-5 --config.mesh.fsdp=4`; the string is
parsed with the type of the field it replaces (bool: true/false/1/0; tuples/lists: Python literals).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from storm_jax.models.qwen import ModelConfig
from storm_jax.rewards import PROTOCOLS

#: The recipes shipped in the package (storm_jax/configs/), resolvable by name: `--config=storm_sft`.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "tiny_cpu.py"
#: Modules of CONFIGS_DIR that are not recipes.
_NOT_RECIPES = ("__init__", "model_presets")

LOSS_NORMS = ("token", "sequence")
#: Values of the `recipe` key (what `storm-jax train <recipe>` runs).
RECIPES = ("sft", "grpo", "pipeline", "dpo", "evolve")
DECAYS = ("cosine", "linear", "constant")


class ConfigError(ValueError):
    """A config is invalid; the message names the key (and the file when known)."""


def _model_fields() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def base_config() -> ml_collections.ConfigDict:
    """Every key a training config may have, with defaults. Recipe files start from this."""
    c = ml_collections.ConfigDict()
    c.recipe = "sft"
    c.workdir = "runs/default"  # checkpoints/, metrics.jsonl, tb/, config.json go here
    c.seed = 0

    # Architecture + numerics (ModelConfig fields). With init_from_hf the architecture comes from the
    # checkpoint's config.json and only dtype / param_dtype / remat are taken from here.
    c.model = ml_collections.ConfigDict(_model_fields())
    c.model.rope_attention_factor = ml_collections.FieldReference(None, field_type=float)
    c.init_from_hf = ""  # HF checkpoint directory to start from ("" = random init from c.model)
    c.init_from_params = ""  # Orbax params checkpoint (storm-jax convert) to start from

    c.data = ml_collections.ConfigDict()
    c.data.source = "jsonl"  # jsonl (storm_jax.data.pipeline) | synthetic (random tokens, benchmarks/tests)
    c.data.path = ""
    c.data.eval_path = ""  # held-out file for the periodic eval loss ("" = no eval)
    c.data.tokenizer_path = ""  # checkpoint dir with tokenizer files ("" = built-in Qwen3 tokenizer)
    c.data.seq_len = 1024
    c.data.batch_size = 8  # global batch (sequences per optimizer step, all hosts together)
    c.data.shuffle = True
    c.data.pack = True
    c.data.overlong = "truncate"  # truncate | drop
    c.data.on_bad_row = "raise"  # raise | skip
    c.data.enable_thinking = True
    c.data.num_epochs = 0  # 0 = repeat forever (train.steps bounds the run)

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # one size may be -1 (= the rest)
    # logical-axis -> mesh-axis rules (storm_jax/parallel/mesh.py presets: fsdp_tp, fsdp_only, tp_only,
    # data_parallel, replicated); the sampler has its own table so decoding can be laid out differently
    c.mesh.rules = "fsdp_tp"
    c.mesh.sampler_rules = "fsdp_tp"

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-5
    c.optim.warmup_steps = 0
    c.optim.decay = "cosine"  # cosine | linear | constant (after warmup, over train.steps)
    c.optim.min_lr_ratio = 0.0  # final lr = lr * min_lr_ratio
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.clip_norm = 1.0  # global-norm clipping (0 = off)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.grad_accum = 1  # micro-batches per step (batch_size must divide)
    c.train.loss_norm = "token"  # token: per token over the global batch | sequence: per document
    c.train.logprob_chunk = 0  # time-chunk of the vocab projection in the loss (0 = whole sequence)
    c.train.skip_masked_chunks = False  # SFT: chunks with no loss token skip the vocab projection (same loss)
    c.train.fused_head = True  # SFT (chunked): the head gradient is formed in the forward pass, no recompute
    c.train.log_every = 10
    c.train.eval_every = 0  # 0 = no periodic eval
    c.train.eval_batches = 4
    c.train.progress = True

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.save_every = 100
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.grpo = grpo_defaults()
    c.dpo = dpo_defaults()
    from storm_jax.steporlm.evolve_config import evolve_defaults  # StepORLM's loop (storm-jax evolve)

    c.evolve = evolve_defaults()
    return c


#: dpo.normalize choices: pairs: sum w*l / P (the paper's expectation) | weights: sum w*l / sum w.
DPO_NORMALIZATIONS = ("pairs", "weights")
#: dpo.reference choices: stored with the pairs (one pass before training), computed per batch from reference
#: params held in memory (and in every checkpoint), or no reference at all (reference-free).
DPO_REFERENCES = ("precomputed", "on_the_fly", "none")


def dpo_defaults() -> ml_collections.ConfigDict:
    """The `dpo` section (storm_jax.train.dpo; formulas in docs/dpo.md).

    The data side uses the existing sections: data.batch_size counts PAIRS, data.overlong (use "drop"),
    data.eval_path holds held-out pairs for the periodic pair accuracy.
    """
    d = ml_collections.ConfigDict()
    d.beta = 0.1
    d.label_smoothing = 0.0
    d.normalize = "pairs"  # one of DPO_NORMALIZATIONS
    d.reference = "precomputed"  # one of DPO_REFERENCES
    d.ref_batch_pairs = 8  # pairs per forward pass when precomputing reference log-probs
    return d


def grpo_defaults() -> ml_collections.ConfigDict:
    """The `grpo` section (storm_jax.train.grpo): rollouts, rewards, advantages, loss options."""
    g = ml_collections.ConfigDict()
    g.problems_path = ""  # benchmark-schema JSONL (id, question, answer, answer_status)
    g.system_prompt = ""  # "" = no system message
    g.enable_thinking = False  # prompt opens a <think> block (thinking models)
    g.steps = 10  # GRPO steps (each: rollouts + ppo_epochs passes)
    g.problems_per_step = 4
    g.group_size = 8  # G samples per problem
    g.ppo_epochs = 1
    g.minibatch_size = 0  # trajectories per optimizer update (0 = all of the step's)
    g.temperature = 1.0
    g.top_k = 0
    g.top_p = 1.0
    g.max_response_tokens = 256  # model + tool-output ids of one response
    g.tools = True
    g.max_tool_calls = 12
    g.max_output_chars = 2000
    g.exec_timeout_s = 10.0
    g.exec_workers = 2
    g.protocol = "storm"  # one of storm_jax.rewards.PROTOCOLS: storm | strict | orlm | round2 | abs001
    g.epsilon = 1e-4  # relative tolerance of the storm reward (a guess: not published)
    g.answer_from = "boxed"  # boxed | execution | auto
    g.format_reward = 0.0  # added for any well-formed \\boxed{} answer (off by default)
    g.scale_by_std = True  # False = Dr.GRPO
    g.clip_eps_low = 0.2
    g.clip_eps_high = 0.2  # > clip_eps_low = clip-higher (DAPO)
    g.kl_beta = 0.0  # k3 KL to the frozen initial policy
    g.aggregation = "token_mean"  # token_mean | seq_mean_token_mean | constant
    g.mask_truncated = False
    g.drop_zero_variance = False
    # DAPO dynamic sampling (storm_jax/train/dynamic_sampling.py): draw more problems until the step holds
    # problems_per_step groups with non-zero reward variance, at most max_draws_per_step problems a step
    g.dynamic_sampling = False
    g.max_draws_per_step = 0  # 0 = 4 x problems_per_step
    g.shuffle_rewards = False  # control experiment: permute rewards across the batch
    g.old_logprobs = "sampler"  # sampler (raw-model log-probs from generation) | trainer (recompute)
    g.num_slots = 16  # sampler decode slots
    g.max_len = 1024  # sampler cache length per slot (prompt + response)
    g.decode_chunk = 16  # decode steps per device call
    g.seq_bucket = 64  # train sequence lengths are padded to a multiple of this
    g.lr = 0.0  # GRPO learning rate (0 = optim.lr); lets one pipeline config hold SFT and GRPO rates
    g.eval_path = ""  # held-out problems scored before and after GRPO (pipeline)
    g.eval_problems = 0  # how many of them (0 = all)
    g.eval_samples = 1  # samples per held-out problem (1 = greedy)
    return g


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def recipe_names() -> list[str]:
    """Names of the recipes shipped in the package (`--config=<name>`)."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if p.stem not in _NOT_RECIPES)


def split_spec(spec: str | os.PathLike) -> tuple[str, str | None]:
    """`path[:arg]` -> (path, arg); a path that exists as given keeps its colons."""
    spec = str(spec)
    if ":" in spec and not Path(spec).exists():
        path, arg = spec.rsplit(":", 1)
        return path, arg
    return spec, None


def resolve_config_path(path: str) -> Path:
    """The config file a `--config` value names: an existing path, else a packaged recipe by name.

    `storm_sft`, `storm_sft.py` and `configs/storm_sft.py` (the pre-package location, so old command lines
    and scripts keep working from any directory) all name storm_jax/configs/storm_sft.py.
    """
    p = Path(path)
    if p.is_file():
        return p
    if p.parent in (Path("."), Path("configs")) and p.suffix in ("", ".py"):
        name = p.stem if p.suffix == ".py" else p.name
        if name in recipe_names():
            return CONFIGS_DIR / f"{name}.py"
    raise ConfigError(
        f"--config={path}: no such config file and no packaged recipe of that name "
        f"(recipes: {', '.join(recipe_names())})"
    )


def load_config_file(spec: str | os.PathLike) -> ml_collections.ConfigDict:
    """Run a config file's `get_config([arg])`. `spec` is `path` or `path:arg`, or a packaged recipe's name.

    The file's directory is put on sys.path while it runs, so a config file can import its neighbours. A
    file that declares `VARIANTS` (every packaged recipe does) gets only one of those as `arg`.
    """
    path, arg = split_spec(spec)
    p = resolve_config_path(path)
    mod_name = f"_storm_config_{p.stem}"
    loader = importlib.util.spec_from_file_location(mod_name, p)
    module = importlib.util.module_from_spec(loader)
    sys.path.insert(0, str(p.parent))
    try:
        loader.loader.exec_module(module)
    except Exception as e:  # a broken user config file: one line naming it, not the import traceback
        raise ConfigError(f"{p}: failed to load ({type(e).__name__}: {e})") from None
    finally:
        sys.path.remove(str(p.parent))
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{p}: has no get_config() function")
    variants = getattr(module, "VARIANTS", None)
    if arg is not None and variants is not None and arg not in variants:
        known = ", ".join(variants) if variants else "none"
        raise ConfigError(f"--config={path}:{arg}: unknown variant {arg!r} of {p.name} (variants: {known})")
    try:
        cfg = module.get_config(arg) if arg is not None else module.get_config()
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{p}: get_config({arg!r}) failed: {e}") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(
            f"{p}: get_config() returned {type(cfg).__name__}, expected ml_collections.ConfigDict"
        )
    return cfg


def _parse_value(key: str, text: str, current: Any) -> Any:
    """Parse an override string with the type of the field it replaces."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={text!r}: expected a bool (true/false)")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text!r}: expected an int") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{key}={text!r}: expected a float") from None
    if isinstance(current, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            return text
        raise ConfigError(f"--config.{key}={text!r}: expected a {type(current).__name__} literal") from None


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Apply `a.b=value` overrides (the part after `--config.`); unknown keys raise ConfigError."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected --config.<key>=<value>")
        key, text = item.split("=", 1)
        parts = key.split(".")
        node = cfg
        for i, part in enumerate(parts[:-1]):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise ConfigError(f"--config.{key}: unknown key {'.'.join(parts[: i + 1])!r}")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node:
            raise ConfigError(f"--config.{key}: unknown key {key!r}")
        if isinstance(node[leaf], ml_collections.ConfigDict):
            raise ConfigError(f"--config.{key}: is a section, set one of its keys")
        value = _parse_value(key, text, node[leaf])
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"--config.{key}: {e}") from None
    return cfg


def parse_argv(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Split argv into (config file spec, config overrides, other args)."""
    spec, overrides, rest = None, [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(args):
            spec = args[i + 1]
            i += 1
        elif a.startswith("--config."):
            body = a[len("--config.") :]
            if "=" not in body and i + 1 < len(args):
                body = f"{body}={args[i + 1]}"
                i += 1
            overrides.append(body)
        else:
            rest.append(a)
        i += 1
    return spec, overrides, rest


def load_config(
    spec: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    *,
    num_devices: int | None = None,
) -> ml_collections.ConfigDict:
    """Load a config file or recipe (default: tiny_cpu), apply overrides, validate, and lock it."""
    cfg = load_config_file(spec if spec is not None else DEFAULT_CONFIG)
    source = str(spec if spec is not None else DEFAULT_CONFIG)
    check_schema(cfg, base_config(), source=source)
    apply_overrides(cfg, overrides)
    validate(cfg, num_devices=num_devices, source=source)
    cfg.lock()
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def check_schema(
    cfg: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, *, source: str = "config"
) -> None:
    """Same keys as the schema, same value types (int accepted for float; None accepted where the default is None)."""

    def walk(c, s, prefix):
        for k in c.keys():
            if k not in s:
                raise ConfigError(f"{source}: unknown key {prefix + k!r}")
        for k in s.keys():
            if k not in c:
                raise ConfigError(
                    f"{source}: missing key {prefix + k!r} (start recipe files from base_config())"
                )
            cv, sv = c[k], s[k]
            if isinstance(sv, ml_collections.ConfigDict):
                if not isinstance(cv, ml_collections.ConfigDict):
                    raise ConfigError(f"{source}: key {prefix + k!r} must be a section")
                walk(cv, sv, prefix + k + ".")
                continue
            if sv is None or cv is None:
                continue
            ok = isinstance(cv, type(sv)) or (isinstance(sv, float) and isinstance(cv, int))
            if isinstance(sv, int) and not isinstance(sv, bool) and isinstance(cv, bool):
                ok = False
            if not ok:
                raise ConfigError(
                    f"{source}: key {prefix + k!r} = {cv!r} has type {type(cv).__name__}, "
                    f"expected {type(sv).__name__}"
                )

    walk(cfg, schema, "")


def mesh_sizes(cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
    """Resolve the mesh (one size may be -1) against a device count; raise ConfigError naming mesh.*."""
    sizes = {k: int(cfg.mesh[k]) for k in ("data", "fsdp", "tensor")}
    for k, v in sizes.items():
        if v == 0 or v < -1:
            raise ConfigError(f"mesh.{k}={v}: must be a positive size or -1")
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ConfigError(f"mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
    known = 1
    for v in sizes.values():
        if v != -1:
            known *= v
    if free:
        if num_devices % known:
            raise ConfigError(f"mesh.{free[0]}=-1: {num_devices} devices are not divisible by {known}")
        sizes[free[0]] = num_devices // known
    elif known != num_devices:
        raise ConfigError(
            f"mesh: data*fsdp*tensor = {known} but {num_devices} devices are available ({sizes})"
        )
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def validate(
    cfg: ml_collections.ConfigDict, *, num_devices: int | None = None, source: str = "config"
) -> None:
    """Semantic checks; raise ConfigError naming the offending key."""

    def fail(key: str, msg: str):
        raise ConfigError(f"{source}: {key}: {msg}")

    check_schema(cfg, base_config(), source=source)
    if cfg.recipe not in RECIPES:
        fail("recipe", f"{cfg.recipe!r} is not a known recipe ({', '.join(RECIPES)})")
    if cfg.recipe in ("grpo", "pipeline"):
        _validate_grpo(cfg.grpo, fail)
    if cfg.recipe == "dpo":
        _validate_dpo(cfg, fail, num_devices)
    if cfg.recipe == "evolve":
        from storm_jax.steporlm.evolve_config import validate_evolve

        validate_evolve(cfg, fail)
    if cfg.recipe == "pipeline" and bool(cfg.grpo.enable_thinking) != bool(cfg.data.enable_thinking):
        # The SFT'd policy must be prompted as it was trained: an open <think> block in one stage and a closed
        # one in the other puts every GRPO and scoring prompt out of distribution.
        fail(
            "grpo.enable_thinking",
            f"{cfg.grpo.enable_thinking} differs from data.enable_thinking={cfg.data.enable_thinking}; "
            "the pipeline's SFT and GRPO stages must render prompts the same way",
        )
    try:
        model_config(cfg)
    except (ValueError, TypeError) as e:
        fail("model", str(e))
    from storm_jax.parallel.mesh import MESH_AXES, rules_from_config

    for key in ("rules", "sampler_rules"):
        try:
            rules_from_config(cfg.mesh[key], mesh_axes=tuple(MESH_AXES), key=f"mesh.{key}")
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    if cfg.train.loss_norm not in LOSS_NORMS:
        fail("train.loss_norm", f"{cfg.train.loss_norm!r} not in {LOSS_NORMS}")
    if cfg.optim.decay not in DECAYS:
        fail("optim.decay", f"{cfg.optim.decay!r} not in {DECAYS}")
    if cfg.data.source not in ("jsonl", "synthetic"):
        fail("data.source", f"{cfg.data.source!r} not in ('jsonl', 'synthetic')")
    if cfg.recipe != "grpo" and cfg.data.source == "jsonl" and not cfg.data.path:
        fail("data.path", "is empty (set a JSONL file, or data.source='synthetic')")
    for key in ("train.steps", "train.grad_accum", "data.seq_len", "data.batch_size", "train.log_every",
                "checkpoint.keep", "checkpoint.save_every"):  # fmt: skip
        sec, name = key.split(".")
        if int(cfg[sec][name]) < 1:
            fail(key, f"must be >= 1, got {cfg[sec][name]}")
    if cfg.optim.lr < 0 or cfg.optim.warmup_steps < 0 or cfg.optim.clip_norm < 0:
        fail("optim", "lr, warmup_steps and clip_norm must be >= 0")
    if cfg.data.batch_size % cfg.train.grad_accum:
        fail(
            "train.grad_accum",
            f"{cfg.train.grad_accum} does not divide data.batch_size={cfg.data.batch_size}",
        )
    if cfg.train.logprob_chunk and cfg.data.seq_len % cfg.train.logprob_chunk:
        fail(
            "train.logprob_chunk",
            f"{cfg.train.logprob_chunk} does not divide data.seq_len={cfg.data.seq_len}",
        )
    if num_devices is not None:
        data, fsdp, _tensor = mesh_sizes(cfg, num_devices)
        micro = cfg.data.batch_size // cfg.train.grad_accum
        if micro % (data * fsdp):
            fail(
                "data.batch_size",
                f"micro-batch {micro} (batch_size/grad_accum) is not divisible by data*fsdp={data * fsdp}",
            )


def _validate_grpo(g: ml_collections.ConfigDict, fail) -> None:
    if not g.problems_path:
        fail("grpo.problems_path", "is empty (set a benchmark-schema JSONL of problems)")
    choices = {
        "protocol": PROTOCOLS,
        "answer_from": ("boxed", "execution", "auto"),
        "aggregation": ("token_mean", "seq_mean_token_mean", "constant"),
        "old_logprobs": ("sampler", "trainer"),
    }
    for key, allowed in choices.items():
        if g[key] not in allowed:
            fail(f"grpo.{key}", f"{g[key]!r} not in {allowed}")
    for key in ("steps", "problems_per_step", "group_size", "ppo_epochs", "max_response_tokens", "num_slots",
                "max_len", "decode_chunk", "seq_bucket", "exec_workers"):  # fmt: skip
        if int(g[key]) < 1:
            fail(f"grpo.{key}", f"must be >= 1, got {g[key]}")
    if g.group_size < 2:
        fail("grpo.group_size", "GRPO needs at least 2 samples per problem")
    n = g.problems_per_step * g.group_size
    if g.minibatch_size and n % g.minibatch_size:
        fail("grpo.minibatch_size", f"{g.minibatch_size} does not divide problems_per_step*group_size={n}")
    if int(g.max_draws_per_step) < 0:
        fail(
            "grpo.max_draws_per_step", f"must be >= 0 (0 = 4 x problems_per_step), got {g.max_draws_per_step}"
        )
    if g.dynamic_sampling and g.max_draws_per_step and g.max_draws_per_step < g.problems_per_step:
        fail(
            "grpo.max_draws_per_step",
            f"{g.max_draws_per_step} is below grpo.problems_per_step={g.problems_per_step} (no room to draw more)",
        )
    if g.max_response_tokens >= g.max_len:
        fail(
            "grpo.max_len",
            f"{g.max_len} must exceed grpo.max_response_tokens={g.max_response_tokens} (room for the prompt)",
        )


def _validate_dpo(cfg: ml_collections.ConfigDict, fail, num_devices: int | None) -> None:
    d = cfg.dpo
    if not d.beta > 0:
        fail("dpo.beta", f"must be > 0, got {d.beta}")
    if not 0.0 <= d.label_smoothing < 0.5:
        # 0.5 makes the loss symmetric in the margin (no preference left); above it prefers the rejected.
        fail("dpo.label_smoothing", f"must be in [0, 0.5), got {d.label_smoothing}")
    if d.normalize not in DPO_NORMALIZATIONS:
        fail("dpo.normalize", f"{d.normalize!r} not in {DPO_NORMALIZATIONS}")
    if d.reference not in DPO_REFERENCES:
        fail("dpo.reference", f"{d.reference!r} not in {DPO_REFERENCES}")
    if int(d.ref_batch_pairs) < 1:
        fail("dpo.ref_batch_pairs", f"must be >= 1, got {d.ref_batch_pairs}")
    if cfg.data.overlong not in ("truncate", "drop"):
        fail("data.overlong", f"{cfg.data.overlong!r} not in ('truncate', 'drop')")
    if cfg.data.source != "jsonl":
        fail("data.source", f"{cfg.data.source!r}: DPO reads preference rows ('jsonl')")
    if num_devices is not None:
        data, fsdp, _tensor = mesh_sizes(cfg, num_devices)
        if d.ref_batch_pairs % (data * fsdp):
            # The reference pass shards its pairs over the data-parallel axes like a train micro-batch.
            fail("dpo.ref_batch_pairs", f"{d.ref_batch_pairs} is not divisible by data*fsdp={data * fsdp}")


def model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
    """The ModelConfig described by cfg.model."""
    fields = {k: cfg.model[k] for k in cfg.model.keys()}
    return ModelConfig(**fields)


# ----------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------


def save_config(cfg: ml_collections.ConfigDict, directory: str | os.PathLike) -> Path:
    """Write the resolved config as `config.json` (reloadable with `config_from_json`)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / "config.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=list) + "\n")
    os.replace(tmp, path)
    return path


def config_from_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Load a saved config.json back into a validated ConfigDict (tuples saved as lists are restored)."""
    data = json.loads(Path(path).read_text())
    cfg = base_config()

    def fill(node, values, prefix):
        for k, v in values.items():
            if k not in node:
                raise ConfigError(f"{path}: unknown key {prefix + k!r}")
            if isinstance(node[k], ml_collections.ConfigDict):
                fill(node[k], v, prefix + k + ".")
            else:
                if isinstance(node[k], tuple) and isinstance(v, list):
                    v = tuple(v)
                node[k] = v

    fill(cfg, data, "")
    validate(cfg, source=str(path))
    return cfg
