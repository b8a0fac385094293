"""Single-process checks of the multi-process helpers (the two-process behaviour: test_multihost_*.py)."""

import numpy as np
import pytest

from storm_jax.parallel import multihost
from storm_jax.train.sft import SyntheticSFTIterator


def test_wants_distributed_reads_the_pod_environment():
    assert not multihost.wants_distributed({})
    assert not multihost.wants_distributed({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1"})
    assert multihost.wants_distributed({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    assert multihost.wants_distributed({"TPU_WORKER_HOSTNAMES": "w0,w1"})
    assert not multihost.wants_distributed({"TPU_WORKER_HOSTNAMES": "w0"})  # one host: nothing to join


def test_split_range_is_contiguous_and_covers_everything_once():
    parts = [multihost.split_range(12, i, 3) for i in range(3)]
    assert parts == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ValueError, match="do not split evenly"):
        multihost.split_range(10, 0, 3)
    with pytest.raises(ValueError, match="not in"):
        multihost.split_range(12, 3, 3)


def test_one_process_gathers_are_identities():
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(multihost.allgather(x), x)
    rows = multihost.allgather_ragged([np.array([1, 2, 3]), np.array([4])], np.int32)
    assert [r.tolist() for r in rows] == [[1, 2, 3], [4]]
    assert multihost.is_main() and multihost.on_main(lambda: 7) == 7


def test_synthetic_batches_do_not_depend_on_the_process_count():
    """Two processes' local rows, stacked, are the one-process global batch (row r depends on (seed, i, r))."""
    one = SyntheticSFTIterator(256, 32, 8, seed=3)
    halves = [SyntheticSFTIterator(256, 32, 4, seed=3, process_index=p) for p in range(2)]
    for _ in range(2):
        full, parts = next(one), [next(h) for h in halves]
        for k in full:
            np.testing.assert_array_equal(full[k], np.concatenate([p[k] for p in parts]))
    assert not np.array_equal(parts[0]["tokens"], parts[1]["tokens"])


def test_cli_validates_the_mesh_against_the_global_device_count(tmp_path):
    """The issue's symptom: 2 processes x 4 devices with mesh.data=8 used to fail with `8 but 4 devices`."""
    from multihost_util import launch

    args = ["train", "sft", "--config=configs/tiny_cpu.py:toy", "--config.mesh.data=8", "--config.mesh.fsdp=1",
            "--config.data.batch_size=8", "--print_config"]  # fmt: skip
    res = launch(args, num_processes=2, devices_per_process=4, record_dir=str(tmp_path), timeout=240)
    for rc, out in res:
        assert rc == 0, out
        assert "config error" not in out and "data: 8" in out
