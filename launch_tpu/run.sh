#!/usr/bin/env bash
# Launch a training job on all workers: ./run.sh train sft --config=storm_sft --config.workdir=gs://bucket/run1
# Every process runs the same command; jax.distributed initializes from the TPU environment. The job resumes
# automatically from the latest checkpoint in its workdir, so re-running this after a preemption is the resume.
source "$(dirname "$0")/common.sh"
args=$(printf ' %q' "$@")
on_all_workers "cd \$HOME/$WORKDIR && nohup .venv/bin/storm-jax$args > run.log 2>&1 &"
echo "started; follow worker 0 with: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=0 --command 'tail -f \$HOME/$WORKDIR/run.log'"
