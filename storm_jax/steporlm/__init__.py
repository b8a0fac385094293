"""storm_jax.steporlm."""
