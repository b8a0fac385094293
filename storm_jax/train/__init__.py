"""storm_jax.train."""
