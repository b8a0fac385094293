"""storm_jax.data."""
