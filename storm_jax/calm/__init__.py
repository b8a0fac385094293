"""storm_jax.calm."""
