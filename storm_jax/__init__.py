"""storm_jax: JAX/Flax training and evaluation of language models for optimization modeling."""

__version__ = "0.1.0"
