"""CALM data curation (docs/calm.md): the loop (loop.py), its resumable job (job.py), the intervener's
taxonomy, verdict schema and prompt (verdict.py), trajectory steps with token spans (steps.py), the
gold-aware programmatic intervener (programmatic.py, introspect.py), the config schema (config.py) and
`storm-jax calm` (cli.py)."""
