"""OpenAI-compatible serving: the engine loop (engine.py), the HTTP API (api.py, schemas.py, text.py) and
`storm-jax serve` (cli.py)."""
