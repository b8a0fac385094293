"""Run setup shared by every trainer: mesh, model config, params, optimizer and state shardings (no loss).

`build_setup(cfg)` allocates nothing: it returns the abstract train state and its shardings, from which a
trainer makes its jitted step (`Setup.train_step(loss_fn)`) and `storm_jax.train.loop.run_loop` restores or
initializes the state. `initial_params` then gives the starting params: a given pytree, an HF checkpoint, an
Orbax params checkpoint, or a seeded random init.

`check_resume` compares a run's new config with the one saved in its workdir before anything is written, so
a resume that cannot work (another architecture) fails in one line and leaves the run as it was.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from storm_jax.config import ConfigError, config_from_json, mesh_sizes, model_config
from storm_jax.models.qwen import ModelConfig, abstract_params, init_params
from storm_jax.parallel.mesh import MeshRules, make_mesh, mesh_rules_from_config
from storm_jax.train.checkpoint import abstract_with_shardings, latest_step_on_disk, restore_params
from storm_jax.train.losses import LossFn
from storm_jax.train.optim import make_optimizer
from storm_jax.train.state import TrainState, abstract_train_state, init_train_state, state_shardings
from storm_jax.train.step import make_train_step


@dataclasses.dataclass
class Setup:
    """Everything a trainer needs before it has arrays: mesh, model, optimizer, abstract state, shardings."""

    cfg: ml_collections.ConfigDict
    model_cfg: ModelConfig
    mesh_rules: MeshRules
    optimizer: Any
    schedule: Any
    abstract_state: TrainState
    state_sharding: TrainState

    @property
    def restore_target(self) -> TrainState:
        """The abstract state carrying its shardings (what Orbax restores into)."""
        return abstract_with_shardings(self.abstract_state, self.state_sharding)

    def train_step(self, loss_fn: LossFn, *, grad_accum: int | None = None, donate: bool = True):
        """The jitted `step(state, batch) -> (state, metrics)` of `loss_fn` on this setup's mesh."""
        return make_train_step(
            loss_fn,
            self.model_cfg,
            self.optimizer,
            self.schedule,
            mesh_rules=self.mesh_rules,
            state_sharding=self.state_sharding,
            grad_accum=self.cfg.train.grad_accum if grad_accum is None else grad_accum,
            donate=donate,
        )

    def init_state(self, params: Any, seed: int | None = None) -> TrainState:
        """A step-0 state around `params` (copied: the caller's arrays survive the donating train step)."""
        seed = self.cfg.seed if seed is None else seed
        fn = lambda p: init_train_state(jax.tree.map(jnp.copy, p), self.optimizer, seed)
        return jax.jit(fn, out_shardings=self.state_sharding)(params)


def resolve_model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
    """cfg.model, or the HF checkpoint's architecture with cfg.model's numerics (dtype, param_dtype, remat)."""
    mc = model_config(cfg)
    if cfg.init_from_hf:
        from storm_jax.models.hf import load_hf_config

        hf = load_hf_config(cfg.init_from_hf)
        return hf.replace(dtype=mc.dtype, param_dtype=mc.param_dtype, remat=mc.remat)
    return mc


def make_mesh_rules(cfg: ml_collections.ConfigDict, devices=None) -> MeshRules:
    """The (data, fsdp, tensor) mesh of cfg.mesh over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp, tensor = mesh_sizes(cfg, len(devices))
    try:  # the rules table is config data (mesh.rules); a bad one names its key
        return mesh_rules_from_config(make_mesh(data, fsdp, tensor, devices=devices), cfg.mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_setup(
    cfg: ml_collections.ConfigDict,
    *,
    model_cfg: ModelConfig | None = None,
    mesh_rules: MeshRules | None = None,
    devices=None,
    optim_cfg: ml_collections.ConfigDict | None = None,
    total_steps: int | None = None,
    params_like: Any = None,
) -> Setup:
    """Mesh, optimizer and state shardings for a config (no arrays allocated).

    optim_cfg / total_steps default to cfg.optim / cfg.train.steps (GRPO passes its own: the schedule runs
    over optimizer updates). params_like (arrays or ShapeDtypeStructs) overrides the model's param shapes.
    """
    model_cfg = model_cfg or resolve_model_config(cfg)
    rules = mesh_rules or make_mesh_rules(cfg, devices)
    optimizer, schedule = make_optimizer(
        optim_cfg or cfg.optim, cfg.train.steps if total_steps is None else total_steps
    )
    abs_params = (
        abstract_params(model_cfg) if params_like is None else jax.eval_shape(lambda p: p, params_like)
    )
    abs_state = abstract_train_state(model_cfg, optimizer, abs_params)
    sh = state_shardings(abs_state, model_cfg, rules)
    return Setup(cfg, model_cfg, rules, optimizer, schedule, abs_state, sh)


def initial_params(cfg: ml_collections.ConfigDict, setup: Setup, params: Any = None) -> Any:
    """Params to start from: `params` if given, else cfg.init_from_hf / cfg.init_from_params / a seeded init."""
    sh = setup.state_sharding.params
    if params is not None:
        return jax.device_put(params, sh)
    if cfg.init_from_hf:
        from storm_jax.models.hf import load_hf_checkpoint

        _, hf_params = load_hf_checkpoint(
            cfg.init_from_hf, dtype=setup.model_cfg.param_dtype, mesh_rules=setup.mesh_rules
        )
        return jax.device_put(hf_params, sh)
    if cfg.init_from_params:
        return restore_params(cfg.init_from_params, abstract_with_shardings(setup.abstract_state.params, sh))
    init = jax.jit(lambda k: init_params(setup.model_cfg, k), out_shardings=sh)
    return init(jax.random.key(cfg.seed))


# ----------------------------------------------------------------------------------------------------------------
# Resume: compare the new config with the saved one before writing anything
# ----------------------------------------------------------------------------------------------------------------


class ResumeError(ConfigError):
    """A resume whose config cannot continue the saved run (the CLI prints it as one line, exit 2)."""


#: model.* keys a resume may change: compute numerics, not the function's parameters.
RESUMABLE_MODEL_KEYS = frozenset({"dtype", "remat"})


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def _state_signature(cfg: ml_collections.ConfigDict) -> Any:
    """Tree structure, shapes and dtypes of the train state a config implies (abstract, cheap)."""
    optimizer, _ = make_optimizer(cfg.optim, cfg.train.steps)
    mc = resolve_model_config(cfg)
    abs_state = abstract_train_state(mc, optimizer, abstract_params(mc))
    leaves, treedef = jax.tree.flatten(abs_state)
    return treedef, [(tuple(a.shape), str(a.dtype)) for a in leaves]


def check_resume(cfg: ml_collections.ConfigDict, workdir: str | None = None) -> list[str]:
    """Compare `cfg` with `<workdir>/config.json` of a run that has a checkpoint; return warning lines.

    Raises ResumeError (one line) when the new config changes the architecture (a model.* key other than
    RESUMABLE_MODEL_KEYS, init_from_hf) or the shapes of the train state (e.g. optim.clip_norm switched on),
    since the checkpoint could not be restored into it. Other changed keys (lr, steps, ...) are warnings.
    Nothing is compared (and [] returned) for a workdir without a checkpoint: that run starts fresh.
    """
    workdir = workdir or cfg.workdir
    path = os.path.join(workdir, "config.json")
    if latest_step_on_disk(workdir) is None or not os.path.isfile(path):
        return []
    try:
        saved = config_from_json(path)
    except (ConfigError, ValueError) as e:
        raise ResumeError(f"resume of {workdir}: its saved config.json cannot be read ({e})") from None
    old, new = _flat(saved.to_dict()), _flat(cfg.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k != "workdir")
    arch = [k for k in changed if k.startswith("model.") and k.split(".", 1)[1] not in RESUMABLE_MODEL_KEYS]
    try:  # init_from_hf: the architecture is the checkpoint's, so compare the states it implies
        shapes_differ = not arch and _state_signature(saved) != _state_signature(cfg)
    except (OSError, ValueError) as e:
        raise ResumeError(
            f"resume of {workdir}: cannot compare the model with the saved run's ({e})"
        ) from None
    if arch or shapes_differ:
        keys = arch or [k for k in changed if k.startswith("optim.")] or changed
        what = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])
        raise ResumeError(
            f"resume of {workdir}: the config changes the model or its state shapes ({what}); the saved run "
            "is unchanged: revert these keys or use a new workdir"
        )
    return [f"resume of {workdir}: {k} changed {old.get(k)!r} -> {new.get(k)!r}" for k in changed]


def load_run_state(workdir: str, *, step: int | None = None, devices=None):
    """(cfg, model_cfg, state, step) of a run directory's latest (or given) checkpoint, via its config.json."""
    from storm_jax.train.checkpoint import make_checkpointer

    cfg = config_from_json(os.path.join(workdir, "config.json"))
    # Load on whatever devices are here (Orbax reshards): a pod run can be exported on one host.
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, -1, 1
    setup = build_setup(cfg, devices=devices)
    ckpt = make_checkpointer(workdir, cfg.checkpoint, async_save=False)
    try:
        out = ckpt.restore(setup.restore_target, step=step)
    finally:
        ckpt.close()
    if out is None:
        raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint")
    return cfg, setup.model_cfg, out.state, out.step
