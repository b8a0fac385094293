#!/usr/bin/env bash
# Create a TPU VM slice (queued resources are recommended for large slices; see README).
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" \
  --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION" ${SPOT:+--spot}
