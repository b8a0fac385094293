#!/usr/bin/env bash
# Install storm_jax with the TPU extra on every worker.
source "$(dirname "$0")/common.sh"
: "${REPO_URL:?set REPO_URL to the storm_jax git URL}"
on_all_workers "set -e; cd \$HOME; [ -d $WORKDIR ] || git clone -q $REPO_URL $WORKDIR; cd $WORKDIR; git fetch -q; git checkout -q $REPO_REF; \
  python3 -m venv .venv; .venv/bin/pip install -q -U pip; .venv/bin/pip install -q -e '.[tpu]'; \
  .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'"
