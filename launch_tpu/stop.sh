#!/usr/bin/env bash
# Ask the job to stop: SIGTERM makes the trainer write a checkpoint before it exits.
source "$(dirname "$0")/common.sh"
on_all_workers "pkill -TERM -f 'storm-jax' || true"
