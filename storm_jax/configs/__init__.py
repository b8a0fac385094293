"""Training recipes, shipped inside the package so an installed `storm-jax` has them.

Each recipe module has `get_config(arg=None)` (the ml_collections convention) and `VARIANTS`, the `arg`
values it accepts. `storm_jax.config.load_config("storm_sft")` (or `--config=storm_sft:variant` on the
command line) resolves a recipe by name from here; a path to any other config file works as well.
`model_presets` holds the architectures (`from storm_jax.configs import model_presets` in your own files).
"""
