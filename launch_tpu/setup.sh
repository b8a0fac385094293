#!/usr/bin/env bash
# Copy this checkout's HEAD to every worker and run the README install there (a venv with the tpu extra).
source "$(dirname "$0")/common.sh"
tpu sync
tpu setup "$@"
