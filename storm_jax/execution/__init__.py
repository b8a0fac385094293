"""storm_jax.execution."""
