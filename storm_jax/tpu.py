"""`storm-jax tpu`: create a TPU slice through a queued resource, set it up, run one job on every worker.

  storm-jax tpu create  --name N --zone Z --type v5p-32 [--spot]   queued resource -> wait until ACTIVE
  storm-jax tpu setup   --name N --zone Z                          README install on every worker
  storm-jax tpu sync    --name N --zone Z [--src DIR]               the repo's HEAD (git archive) to every worker
  storm-jax tpu run     --name N --zone Z [--max-restarts K] -- storm-jax train sft --config=...
  storm-jax tpu resume  --name N --zone Z --type ... -- <the same command>
  storm-jax tpu stop    --name N --zone Z                          SIGTERM the job (it checkpoints and exits)
  storm-jax tpu delete  --name N --zone Z                          tear the slice down (queued resource too)

`run` starts the command detached on all workers at once (JAX needs every process of the slice) and streams
worker 0's log until the job ends. When the job ends badly and the slice reports PREEMPTED (or its queued
resource SUSPENDED / FAILED), `run` deletes the queued resource, creates it again, sets up and syncs the
workers and runs the same command: the trainer restores the newest checkpoint of its workdir (a gs:// path
survives the slice), so the rerun is the resume. `resume` does the same check before running once.

`--dry-run` prints every gcloud command without running it (state queries are then assumed healthy).
Every command is printed before it runs, prefixed with `+ `, so a log shows exactly what happened.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

#: accelerator generation -> (accelerator-type prefix, TPU VM runtime version).
GENERATIONS: dict[str, tuple[str, str]] = {
    "v5e": ("v5litepod", "v2-alpha-tpuv5-lite"),
    "v5p": ("v5p", "v2-alpha-tpuv5"),
    "v6e": ("v6e", "v2-alpha-tpuv6e"),
}

#: Node states (tpu-vm describe) and queued-resource states that mean the slice is gone and must be recreated.
PREEMPTED_NODE_STATES = frozenset({"PREEMPTED", "TERMINATED", "NOT_FOUND"})
DEAD_QR_STATES = frozenset({"SUSPENDED", "SUSPENDING", "FAILED", "NOT_FOUND"})

#: The README install, on a worker: a venv with the TPU extra, then a smoke import.
INSTALL = (
    "set -e; cd ~/{dir}; python3 -m venv .venv; .venv/bin/pip install -q -U pip; "
    ".venv/bin/pip install -q -e '.[tpu]'; .venv/bin/python -c 'import storm_jax, jax; print(jax.__version__)'"
)
LOG, RC = "~/storm_run.log", "~/storm_run.rc"


class LaunchError(RuntimeError):
    """A step of the launch failed (printed as one line, exit 1)."""


def generation_of(accelerator_type: str) -> str:
    """v5e / v5p / v6e from an accelerator type such as v5litepod-16, v5p-32, v6e-64."""
    for gen, (prefix, _) in GENERATIONS.items():
        if accelerator_type.startswith(prefix + "-"):
            return gen
    raise LaunchError(
        f"accelerator type {accelerator_type!r}: expected one of "
        + ", ".join(f"{p}-N ({g})" for g, (p, _) in GENERATIONS.items())
    )


@dataclasses.dataclass(frozen=True)
class Slice:
    """One TPU slice: its node name, where it lives, what it is, how it is paid for."""

    name: str
    zone: str
    project: str = ""
    accelerator_type: str = ""
    runtime_version: str = ""
    spot: bool = False
    remote_dir: str = "storm_jax"

    @property
    def queued_resource(self) -> str:
        return f"{self.name}-qr"

    def where(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])

    def runtime(self) -> str:
        return self.runtime_version or GENERATIONS[generation_of(self.accelerator_type)][1]


class Runner:
    """Runs (or, dry, only prints) commands; every command is echoed first as `+ <shell-quoted argv>`."""

    def __init__(self, *, dry_run: bool = False, echo: Callable[[str], None] = print, gcloud: str = "gcloud"):
        self.dry_run, self.echo, self.gcloud = dry_run, echo, gcloud

    def __call__(self, argv: Sequence[str], *, capture: bool = False, check: bool = True) -> tuple[int, str]:
        """(returncode, stdout if captured). check=True raises LaunchError on a nonzero status."""
        argv = [self.gcloud, *argv[1:]] if argv and argv[0] == "gcloud" else list(argv)
        self.echo("+ " + shlex.join(argv))
        if self.dry_run:
            return 0, ""
        p = subprocess.run(argv, stdout=subprocess.PIPE if capture else None, text=True)
        if check and p.returncode:
            raise LaunchError(f"`{shlex.join(argv)}` exited with {p.returncode}")
        return p.returncode, (p.stdout or "").strip() if capture else ""


class Launcher:
    """The slice's lifecycle as gcloud commands (see the module docstring)."""

    def __init__(
        self, sl: Slice, run: Runner, *, poll_s: float = 30.0, sleep: Callable[[float], None] = time.sleep
    ):
        self.sl, self.cmd, self.poll_s, self.sleep = sl, run, poll_s, sleep

    # -- state ------------------------------------------------------------------------------------------------
    def qr_state(self) -> str:
        rc, out = self.cmd(
            ["gcloud", "compute", "tpus", "queued-resources", "describe", self.sl.queued_resource,
             *self.sl.where(), "--format=value(state.state)"],
            capture=True, check=False,
        )  # fmt: skip
        return "ACTIVE" if self.cmd.dry_run else (out.split()[0] if rc == 0 and out else "NOT_FOUND")

    def node_state(self) -> str:
        rc, out = self.cmd(
            ["gcloud", "compute", "tpus", "tpu-vm", "describe", self.sl.name, *self.sl.where(),
             "--format=value(state)"],
            capture=True, check=False,
        )  # fmt: skip
        return "READY" if self.cmd.dry_run else (out.split()[0] if rc == 0 and out else "NOT_FOUND")

    def preempted(self) -> bool:
        """True when the slice is gone: the node PREEMPTED/TERMINATED/missing or its queued resource dead."""
        return self.node_state() in PREEMPTED_NODE_STATES or self.qr_state() in DEAD_QR_STATES

    # -- lifecycle --------------------------------------------------------------------------------------------
    def create(self, *, timeout_s: float = 24 * 3600) -> None:
        """Queue the slice and wait until its queued resource is ACTIVE (FAILED/SUSPENDED raise)."""
        if not self.sl.accelerator_type:
            raise LaunchError("create needs --type (e.g. v5litepod-16, v5p-32, v6e-16)")
        self.cmd(
            ["gcloud", "compute", "tpus", "queued-resources", "create", self.sl.queued_resource,
             f"--node-id={self.sl.name}", *self.sl.where(), f"--accelerator-type={self.sl.accelerator_type}",
             f"--runtime-version={self.sl.runtime()}", *(["--spot"] if self.sl.spot else [])]
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.qr_state()
            if state == "ACTIVE":
                self.cmd.echo(f"tpu: {self.sl.queued_resource} is ACTIVE")
                return
            if state in ("FAILED", "SUSPENDED"):
                raise LaunchError(f"queued resource {self.sl.queued_resource} is {state}")
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"queued resource {self.sl.queued_resource} still {state} after {timeout_s:.0f} s"
                )
            self.sleep(self.poll_s)

    def delete(self) -> None:
        """Tear down: the queued resource and its node (--force deletes the node with it)."""
        self.cmd(
            ["gcloud", "compute", "tpus", "queued-resources", "delete", self.sl.queued_resource,
             *self.sl.where(), "--force", "--quiet"],
            check=False,  # already gone is fine
        )  # fmt: skip

    def ssh(self, command: str, *, worker: str = "all", check: bool = True) -> int:
        rc, _ = self.cmd(
            ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.sl.name, *self.sl.where(), f"--worker={worker}",
             f"--command={command}"],
            check=check,
        )  # fmt: skip
        return rc

    def sync(self, src: str, stage: str) -> None:
        """The repository's committed HEAD to ~/<remote_dir> on every worker (uncommitted edits are not sent)."""
        tarball = os.path.join(stage, f"{self.sl.name}-storm_jax.tar.gz")
        self.cmd(["git", "-C", src, "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"])
        self.cmd(
            ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{self.sl.name}:~/storm_jax.tar.gz",
             *self.sl.where(), "--worker=all"]
        )  # fmt: skip
        d = self.sl.remote_dir
        self.ssh(f"set -e; mkdir -p ~/{d}; tar -xzf ~/storm_jax.tar.gz -C ~/{d}")

    def setup(self) -> None:
        self.ssh(INSTALL.format(dir=self.sl.remote_dir))

    def run_once(self, command: Sequence[str]) -> int:
        """Start `command` on all workers (detached), stream worker 0's log; the job's exit status (255: lost)."""
        job = shlex.join(command)
        inner = shlex.quote(f"{job}; echo $? > {RC}")
        self.ssh(
            f"cd ~/{self.sl.remote_dir} && rm -f {RC} && PATH=$HOME/{self.sl.remote_dir}/.venv/bin:$PATH "
            f"nohup bash -c {inner} > {LOG} 2>&1 < /dev/null &"
        )
        # Worker 0 holds process 0, the one that logs metrics; follow its log until the job writes its status.
        return self.ssh(
            f"tail -n +1 -F {LOG} & t=$!; while [ ! -f {RC} ]; do sleep 5; done; sleep 2; kill $t; exit $(cat {RC})",
            worker="0",
            check=False,
        )

    def recreate(self, src: str, stage: str) -> None:
        self.delete()
        self.create()
        self.setup()
        self.sync(src, stage)

    def supervise(self, command: Sequence[str], *, src: str, stage: str, max_restarts: int = 3) -> int:
        """Run `command`; after a preemption recreate the slice and run it again (the trainer resumes)."""
        restarts = 0
        while True:
            rc = self.run_once(command)
            if rc == 0:
                return 0
            if not self.preempted():
                self.cmd.echo(f"tpu: the job exited with {rc} and the slice is healthy: not restarting")
                return rc
            if restarts >= max_restarts:
                raise LaunchError(f"preempted {restarts + 1} times; giving up (max restarts {max_restarts})")
            restarts += 1
            self.cmd.echo(
                f"tpu: {self.sl.name} was preempted; recreating it (restart {restarts}/{max_restarts})"
            )
            self.recreate(src, stage)

    def resume(self, command: Sequence[str], *, src: str, stage: str, max_restarts: int = 3) -> int:
        """Recreate the slice if it is gone, then supervise the command (it resumes from its checkpoint)."""
        if self.preempted():
            self.cmd.echo(f"tpu: {self.sl.name} is gone; recreating it")
            self.recreate(src, stage)
        return self.supervise(command, src=src, stage=stage, max_restarts=max_restarts)

    def stop(self) -> None:
        """SIGTERM the job on every worker: the trainer saves a checkpoint at the next step and exits."""
        self.ssh("pkill -TERM -f 'storm-jax' || true")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="storm-jax tpu", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("create", "setup", "sync", "run", "resume", "stop", "delete"))
    p.add_argument("--name", required=True, help="TPU node name (the queued resource is NAME-qr)")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=os.environ.get("CLOUDSDK_CORE_PROJECT", ""))
    p.add_argument("--type", dest="accelerator_type", default="", help="v5litepod-N | v5p-N | v6e-N")
    p.add_argument("--runtime-version", default="", help="default: the generation's TPU VM runtime")
    cap = p.add_mutually_exclusive_group()
    cap.add_argument("--spot", action="store_true", help="spot capacity (preemptible; `run` resumes)")
    cap.add_argument("--on-demand", action="store_true", help="on-demand capacity (the default)")
    p.add_argument("--src", default=os.getcwd(), help="the storm_jax git checkout to sync (default: .)")
    p.add_argument("--stage", default="/tmp", help="local directory for the sync tarball")
    p.add_argument("--remote-dir", default="storm_jax", help="checkout directory on each worker, under ~")
    p.add_argument("--max-restarts", type=int, default=3, help="recreations after preemption (run/resume)")
    p.add_argument("--poll-s", type=float, default=30.0, help="seconds between queued-resource state polls")
    p.add_argument("--dry-run", action="store_true", help="print every gcloud command without running it")
    return p


def main(argv: list[str]) -> int:
    """Entry point of `storm-jax tpu`."""
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1 :]
    args = _parser().parse_args(argv)
    if args.action in ("run", "resume") and not command:
        print(
            "storm-jax tpu: run/resume need the job after `--`, e.g. -- storm-jax train sft ...",
            file=sys.stderr,
        )
        return 2
    sl = Slice(
        name=args.name, zone=args.zone, project=args.project, accelerator_type=args.accelerator_type,
        runtime_version=args.runtime_version, spot=args.spot, remote_dir=args.remote_dir,
    )  # fmt: skip
    launcher = Launcher(sl, Runner(dry_run=args.dry_run), poll_s=args.poll_s)
    try:
        if sl.accelerator_type:
            generation_of(sl.accelerator_type)  # refuse an unknown type before any command runs
        if args.action == "create":
            launcher.create()
        elif args.action == "setup":
            launcher.setup()
        elif args.action == "sync":
            launcher.sync(args.src, args.stage)
        elif args.action == "run":
            return launcher.supervise(command, src=args.src, stage=args.stage, max_restarts=args.max_restarts)
        elif args.action == "resume":
            return launcher.resume(command, src=args.src, stage=args.stage, max_restarts=args.max_restarts)
        elif args.action == "stop":
            launcher.stop()
        elif args.action == "delete":
            launcher.delete()
    except LaunchError as e:
        print(f"storm-jax tpu: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
