"""Test-wide setup: eight fake CPU devices (before JAX initializes) so sharding tests run on one machine."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Benchmarks live beside the repo in CI (../shared/benchmarks); tests read them from STORM_DATA_DIR.
_default_data = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
if "STORM_DATA_DIR" not in os.environ and _default_data.is_dir():
    os.environ["STORM_DATA_DIR"] = str(_default_data)
