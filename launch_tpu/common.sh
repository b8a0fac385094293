#!/usr/bin/env bash
# Shared settings for the TPU VM scripts. Override any of them in the environment.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
: "${PROJECT:=$(gcloud config get-value project 2>/dev/null)}"
: "${ACCELERATOR_TYPE:=v4-32}"
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"
: "${REPO_URL:=}"           # git URL of storm_jax to clone on the workers (or leave empty and use SYNC_DIR)
: "${REPO_REF:=main}"
: "${WORKDIR:=storm_jax}"   # checkout directory on each worker (relative to $HOME)

# Run one command on every worker of the slice, in parallel (JAX multi-host needs all processes).
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" --worker=all --command "$1"
}
