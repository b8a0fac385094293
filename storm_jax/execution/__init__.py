"""Sandboxed execution of generated solver code, and answer extraction."""

from storm_jax.execution.pool import STATUSES, ExecutionConfig, ExecutionPool, ExecutionResult

__all__ = ["STATUSES", "ExecutionConfig", "ExecutionPool", "ExecutionResult"]
