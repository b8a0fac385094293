#!/usr/bin/env bash
# After a preemption noticed elsewhere: recreate the slice if it is gone, then rerun the same job (it resumes).
source "$(dirname "$0")/common.sh"
tpu resume -- "$@"
