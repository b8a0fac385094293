"""storm_jax.models."""
