"""storm_jax.sampling."""
