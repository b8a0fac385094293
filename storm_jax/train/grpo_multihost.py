"""GRPO across processes: each process rolls out its share of a step's problems; rewards are gathered.

One GRPO step on N processes (a pod: one per host):

  problems of the step  --split_range-->  this process's contiguous share (request seeds keep the global index)
  sampler weights       --SamplerWeights-->  the trainer's params resharded, device to device, onto this
                                           process's own devices (the sampler's local mesh)
  rollouts + execution  on this process's devices and its own execution pool (one per host, never shared)
  rewards, trajectories --allgather-->  every process holds the whole step's, in the single-process order,
                                           so group statistics, advantages and the train batch are global

On one process every helper is the identity, so the single-process trainer runs unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from storm_jax.models.qwen import ModelConfig, param_logical_axes
from storm_jax.parallel import multihost
from storm_jax.parallel.mesh import MESH_AXES, MeshRules, tree_shardings
from storm_jax.sampling.rollout import Trajectory

#: Mesh axis of the replica mesh that runs over processes (each process's devices hold one full copy).
REPLICA_AXIS = "replica"


def _process_devices() -> list[list[jax.Device]]:
    """Every process's devices, sorted by id: the same lists on every process (meshes must agree)."""
    by_proc: dict[int, list[jax.Device]] = {}
    for d in jax.devices():
        by_proc.setdefault(d.process_index, []).append(d)
    return [sorted(by_proc[p], key=lambda d: d.id) for p in sorted(by_proc)]


class SamplerWeights:
    """The sampler's mesh and its view of the trainer's params.

    One process: the trainer's own mesh and params (the sampler reads `state.params` as they are). Several: the
    sampler runs on this process's devices only (its rollouts need no cross-host collective), with the
    trainer's rules table over a local (1, local/tensor, tensor) mesh. The weights get there without a host
    round-trip: one jitted resharding onto a global *replica* mesh (processes x the local mesh), where each
    process's devices hold one copy laid out like the local mesh, then each process wraps its own shards as a
    local array.
    """

    def __init__(self, mesh_rules: MeshRules, model_cfg: ModelConfig):
        self.trainer_rules = mesh_rules
        self.model_cfg = model_cfg
        self.distributed = jax.process_count() > 1
        if not self.distributed:
            self.mesh_rules = mesh_rules
            return
        per = _process_devices()
        n = len(per[0])
        if any(len(p) != n for p in per):
            raise ValueError(f"processes hold different device counts: {[len(p) for p in per]}")
        tensor = int(mesh_rules.mesh.shape["tensor"])
        tensor = tensor if n % tensor == 0 else 1  # a tensor axis wider than one host cannot stay local
        local_shape = (1, n // tensor, tensor)
        mine = per[jax.process_index()]
        self.mesh_rules = MeshRules(
            Mesh(np.asarray(mine, dtype=object).reshape(local_shape), MESH_AXES), mesh_rules.rules
        )
        replica = Mesh(
            np.asarray(per, dtype=object).reshape((len(per), *local_shape)), (REPLICA_AXIS, *MESH_AXES)
        )
        self._replica_rules = MeshRules(replica, mesh_rules.rules)
        self._move = None

    def __call__(self, params: Any) -> Any:
        """The params as the sampler reads them (the same arrays on one process)."""
        if not self.distributed:
            return params
        axes = param_logical_axes(self.model_cfg)
        if self._move is None:
            self._replica_sh = tree_shardings(params, axes, self._replica_rules)
            self._local_sh = tree_shardings(params, axes, self.mesh_rules)
            self._move = jax.jit(lambda p: p, out_shardings=self._replica_sh)
        moved = self._move(params)  # cross-host collectives on the devices; the host sees no weights

        def local(x: jax.Array, sh: NamedSharding) -> jax.Array:
            shards = {s.device: s.data for s in x.addressable_shards}
            return jax.make_array_from_single_device_arrays(
                x.shape, sh, [shards[d] for d in sh.addressable_devices_indices_map(x.shape)]
            )

        return jax.tree.map(local, moved, self._local_sh)


def local_share(num_problems: int) -> tuple[int, int]:
    """[start, stop) of the step's problems this process rolls out (contiguous: gathers keep the order)."""
    return multihost.split_range(num_problems)


def rollout_sums(trajs: Sequence[Trajectory]) -> np.ndarray:
    """Additive counts behind rollout_stats, so per-process counts sum to the global ones exactly."""
    execs = [e for t in trajs for e in t.executions]
    return np.array(
        [
            len(trajs),
            sum(len(t.response_ids) for t in trajs),
            sum(sum(t.loss_mask) for t in trajs),
            len(execs),
            sum(e.status not in ("ok", "no_answer", "timeout") for e in execs),
            sum(e.status == "timeout" for e in execs),
            sum(t.stop_reason == "max_tokens" for t in trajs),
            sum(t.answer is not None for t in trajs),
            float(sum(e.duration_s for e in execs)),
        ],
        np.float64,
    )


def global_rollout_stats(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """storm_jax.train.grpo.rollout_stats over every process's trajectories (the same keys and values)."""
    s = multihost.allgather(rollout_sums(trajs)[None]).sum(axis=0)
    n, ne = max(s[0], 1.0), max(s[3], 1.0)
    return {
        "response_len": s[1] / n,
        "model_tokens": s[2] / n,
        "code_blocks": s[3] / n,
        "tool_error_rate": s[4] / ne,
        "tool_timeout_rate": s[5] / ne,
        "truncated_share": s[6] / n,
        "boxed_share": s[7] / n,
        "exec_seconds": float(s[8]),
    }


def gather_rollouts(
    trajs: Sequence[Trajectory], rewards: np.ndarray, correct: np.ndarray, *, group_offset: int
) -> tuple[list[Trajectory], np.ndarray, np.ndarray]:
    """Every process's trajectories, rewards and correctness, concatenated in process order.

    One process: the inputs as they are. Several: the trajectories come back with what the train batch
    reads (prompt and response ids, loss mask, raw log-probs, truncation), their groups renumbered to the
    step's global problem index; text, answers, segments and executions stay on the process that produced
    them (rewards were scored there, and `global_rollout_stats` sums their counts).
    """
    if jax.process_count() == 1:
        return list(trajs), np.asarray(rewards), np.asarray(correct)
    g_rewards = multihost.allgather(np.asarray(rewards, np.float32))
    g_correct = multihost.allgather(np.asarray(correct, np.float32))
    head = np.array(
        [
            [group_offset + t.group, t.sample_index, len(t.prompt_ids), t.stop_reason == "max_tokens"]
            for t in trajs
        ],
        np.int64,
    ).reshape(len(trajs), 4)
    heads = multihost.allgather(head)
    ids = multihost.allgather_ragged([np.asarray(t.prompt_ids + t.response_ids) for t in trajs], np.int32)
    masks = multihost.allgather_ragged([np.asarray(t.loss_mask) for t in trajs], np.int32)
    lps = multihost.allgather_ragged([np.asarray(t.logprobs_raw) for t in trajs], np.float32)
    out = []
    for h, seq, m, lp in zip(heads, ids, masks, lps):
        p = int(h[2])
        out.append(
            Trajectory(
                group=int(h[0]),
                sample_index=int(h[1]),
                prompt_ids=seq[:p].tolist(),
                response_ids=seq[p:].tolist(),
                loss_mask=m.tolist(),
                logprobs=lp.tolist(),
                logprobs_raw=lp.tolist(),
                segments=[],
                executions=[],
                answer=None,
                stop_reason="max_tokens" if h[3] else "eos",
                text="",
            )  # fmt: skip
        )
    return out, g_rewards, g_correct


def write_step_record(
    workdir: str, step: int, problems: Sequence[int], rewards: np.ndarray, advantages: np.ndarray
) -> None:
    """Append the step's per-trajectory rewards and advantages to <workdir>/rollouts.jsonl (process 0 only).

    The record a multi-host run is checked against (same rewards and advantages as one process), and what a
    reward-curve investigation needs without re-running rollouts.
    """
    if not multihost.is_main():
        return
    os.makedirs(workdir, exist_ok=True)
    row = {
        "step": int(step),
        "problems": [int(i) for i in problems],
        "rewards": [float(r) for r in np.asarray(rewards).reshape(-1)],
        "advantages": [float(a) for a in np.asarray(advantages).reshape(-1)],
    }
    with open(os.path.join(workdir, "rollouts.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
