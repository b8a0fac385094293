"""storm_jax.eval."""
