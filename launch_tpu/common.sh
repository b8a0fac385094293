#!/usr/bin/env bash
# Shared settings for the TPU scripts; each script is one `storm-jax tpu <action>` (storm_jax/tpu.py, tested
# with a fake gcloud in tests/test_tpu_launcher.py). Override any setting in the environment.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME (the TPU node name; its queued resource is TPU_NAME-qr)}"
: "${ZONE:?set ZONE (e.g. us-east5-a)}"
: "${PROJECT:=}"                 # default: gcloud's configured project
: "${ACCELERATOR_TYPE:=v5p-32}"  # v5litepod-N (v5e) | v5p-N | v6e-N
: "${SPOT:=}"                    # non-empty: spot capacity (preemptible; run.sh then resumes after preemption)
: "${DRY_RUN:=}"                 # non-empty: print every gcloud command, run none
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

tpu() {
  local action=$1
  shift
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m storm_jax.tpu "$action" \
    --name "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} --type "$ACCELERATOR_TYPE" \
    ${SPOT:+--spot} ${DRY_RUN:+--dry-run} --src "$ROOT" "$@"
}
