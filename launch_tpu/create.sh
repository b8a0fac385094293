#!/usr/bin/env bash
# Queue the slice (a queued resource) and wait until it is ACTIVE.
source "$(dirname "$0")/common.sh"
tpu create "$@"
