#!/usr/bin/env bash
# Stop the job (SIGTERM: the trainer checkpoints, then exits); `DELETE=1 ./stop.sh` also tears the slice down.
source "$(dirname "$0")/common.sh"
tpu stop
if [ -n "${DELETE:-}" ]; then tpu delete; fi
