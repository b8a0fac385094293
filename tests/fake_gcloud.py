"""A recording stand-in for `gcloud` (the launcher tests put it first on PATH as `gcloud`).

Every call appends its argv as one JSON line to $FAKE_GCLOUD_LOG. Answers come from the JSON scenario file
$FAKE_GCLOUD_SCENARIO, consumed in order (the last value of a list repeats):
  qr_states    what `queued-resources describe` prints (default ACTIVE)
  node_states  what `tpu-vm describe` prints (default READY; PREEMPTED simulates a preemption)
  worker0_rc   the exit status of `tpu-vm ssh --worker=0` (the log stream; 255 = the connection dropped)
Everything else succeeds silently.
"""

import json
import os
import sys


def take(scenario: dict, key: str, default):
    values = scenario.get(key) or [default]
    value = values[0]
    if len(values) > 1:
        scenario[key] = values[1:]
    return value


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
        f.write(json.dumps(argv) + "\n")
    path = os.environ.get("FAKE_GCLOUD_SCENARIO", "")
    scenario = json.load(open(path)) if path and os.path.exists(path) else {}
    rc = 0
    if argv[:4] == ["compute", "tpus", "queued-resources", "describe"]:
        print(take(scenario, "qr_states", "ACTIVE"))
    elif argv[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
        print(take(scenario, "node_states", "READY"))
    elif argv[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "--worker=0" in argv:
        print("worker 0: step 1 loss 1.0")
        rc = int(take(scenario, "worker0_rc", 0))
    if path:
        with open(path, "w") as f:
            json.dump(scenario, f)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
