#!/usr/bin/env bash
# After a preemption: recreate the slice if it is gone, reinstall, and relaunch the same command.
# The trainer restores params, optimizer, step, RNG and data-iterator state from the newest checkpoint.
source "$(dirname "$0")/common.sh"
if ! gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" >/dev/null 2>&1; then
  "$(dirname "$0")/create.sh"
  "$(dirname "$0")/setup.sh"
fi
on_all_workers "pkill -f 'storm-jax' || true"
"$(dirname "$0")/run.sh" "$@"
