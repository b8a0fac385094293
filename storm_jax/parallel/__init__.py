"""storm_jax.parallel."""
