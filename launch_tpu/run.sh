#!/usr/bin/env bash
# Run one job on all workers, streaming worker 0's log; after a preemption the slice is recreated and the same
# job rerun (it resumes from its workdir's newest checkpoint, so use a gs:// workdir):
#   ./run.sh storm-jax train sft --config=storm_sft --config.workdir=gs://bucket/runs/sft1
source "$(dirname "$0")/common.sh"
tpu run -- "$@"
