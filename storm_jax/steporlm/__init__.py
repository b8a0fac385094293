"""StepORLM: the policy's step format (format.py) and solver-verified teacher warm-up data (warmup.py,
`storm-jax warmup-data` in warmup_cli.py)."""
