"""Worker side of the execution pool (DESIGN §6): one warm process that forks a sandboxed child per program.

This file runs as a script (``python sandbox.py CONFIG_JSON REQ_FD RESP_FD``) started by
:mod:`storm_jax.execution.pool` with a scrubbed environment, and imports only the standard library plus
the configured preload modules (pyomo, highspy), so the pool can start it with any interpreter.

Per execution the worker forks a child that: starts its own session and process group; gets stdin from
/dev/null and stdout/stderr/status on fresh pipes; chdirs into a private temp dir (also HOME and TMPDIR);
sets rlimits (CPU, address space, process count, file size, no core files); applies the isolation layers
(network: the worker's own network namespace, else a seccomp filter on socket(); filesystem: Landlock —
writes only under the temp dir, reads only under system and Python dirs —, Landlock signal scoping);
drops to an unprivileged uid that only this worker uses (when the pool runs as root); then ``exec``s the
program. The worker enforces the wall deadline, reads the pipes with head+tail caps, and afterwards kills
every process the execution left behind: as root by ``kill(-1, SIGKILL)`` from a helper running as the
execution uid (atomic against fork bombs), otherwise by walking its descendants (the worker is a child
subreaper, so orphans cannot escape it). Only then does it reply, so no process of a finished execution
remains when the result is delivered.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import linecache
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback

# --- wire protocol: 4-byte big-endian length + UTF-8 JSON -------------------------------------------------


def send_msg(fd: int, obj: dict) -> None:
    """Write one length-prefixed JSON message to `fd`."""
    data = json.dumps(obj).encode()
    buf = memoryview(struct.pack(">I", len(data)) + data)
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_msg(fd: int) -> dict | None:
    """Read one message from `fd` (blocking); None at EOF."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


# --- libc / kernel interfaces ------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2

_SYS = {  # syscall numbers that differ by architecture; the landlock ones are the same everywhere
    "x86_64": {"socket": 41, "io_uring_setup": 425, "audit_arch": 0xC000003E},
    "aarch64": {"socket": 198, "io_uring_setup": 425, "audit_arch": 0xC00000B7},
}
_NR_LANDLOCK_CREATE_RULESET, _NR_LANDLOCK_ADD_RULE, _NR_LANDLOCK_RESTRICT_SELF = 444, 445, 446


def _prctl(option: int, arg2: int = 0) -> None:
    if _libc.prctl(option, arg2, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl({option}): {os.strerror(e)}")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    r = _libc.syscall(_NR_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(r), 0)


# Landlock access rights (linux/landlock.h)
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_LL_MAKE_ALL = sum(1 << i for i in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
_LL_REFER, _LL_TRUNCATE = 1 << 13, 1 << 14
_LL_NET_BIND_TCP, _LL_NET_CONNECT_TCP = 1 << 0, 1 << 1
_LL_SCOPE_ABSTRACT_UNIX, _LL_SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_RIGHTS = _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | _LL_TRUNCATE


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_restrict(abi: int, write_dirs: list[str], read_dirs: list[str] | None) -> None:
    """Restrict this process (and its future children) with Landlock.

    Writes (create, delete, write, truncate, rename) are allowed only beneath `write_dirs` (and to
    /dev/null); reads and execution only beneath `read_dirs` + `write_dirs` when `read_dirs` is not None.
    With ABI >= 4 TCP bind/connect are denied too; with ABI >= 6 signals to processes outside the domain
    and connections to abstract unix sockets outside it are denied.
    """
    write = _LL_WRITE_FILE | _LL_MAKE_ALL
    if abi >= 2:
        write |= _LL_REFER
    if abi >= 3:
        write |= _LL_TRUNCATE
    read = (_LL_EXECUTE | _LL_READ_FILE | _LL_READ_DIR) if read_dirs is not None else 0
    attr = _RulesetAttr(write | read, 0, 0)
    if abi >= 4:
        attr.net = _LL_NET_BIND_TCP | _LL_NET_CONNECT_TCP
    if abi >= 6:
        attr.scoped = _LL_SCOPE_ABSTRACT_UNIX | _LL_SCOPE_SIGNAL
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    ruleset = _libc.syscall(_NR_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        rules = [(d, write | read) for d in write_dirs] + [("/dev/null", write | read)]
        rules += [(d, read) for d in (read_dirs or [])]
        for path, allowed in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a missing path needs no rule
            try:
                if not os.path.isdir(path):
                    allowed &= _FILE_RIGHTS
                if not allowed:
                    continue
                rule = _PathBeneath(allowed, fd)
                if _libc.syscall(_NR_LANDLOCK_ADD_RULE, int(ruleset), 1, ctypes.byref(rule), 0) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        if _libc.syscall(_NR_LANDLOCK_RESTRICT_SELF, int(ruleset), 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _capset(bits: int) -> None:
    """Set effective = permitted = `bits` (capabilities 0..31), inheritable empty."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)(_CapData(bits, bits, 0), _CapData(0, 0, 0))
    if _libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


CAP_SETGID, CAP_SETUID = 6, 7
PR_SET_KEEPCAPS = 8


def become_uid(uid: int, fs_root: bool) -> None:
    """Drop root: real/effective/saved uid and gid become `uid`, no capabilities are left.

    With `fs_root`, the filesystem uid/gid stay 0 so the process can still read root-owned files (the
    interpreter); only safe when Landlock confines which files it may read and write.
    """
    os.setgroups([])
    if not fs_root:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        return
    _prctl(PR_SET_KEEPCAPS, 1)
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _capset((1 << CAP_SETUID) | (1 << CAP_SETGID))
    _libc.setfsgid(0)
    _libc.setfsuid(0)
    _capset(0)
    _prctl(PR_SET_KEEPCAPS, 0)
    if _libc.setfsuid(-1) != 0:  # reads back the current fsuid
        raise OSError(errno.EPERM, "setfsuid(0) did not stick")


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_block_network() -> None:
    """Install a seccomp filter: socket() for any family but AF_UNIX fails with EACCES, io_uring is
    refused (it could open sockets without socket()), foreign-ABI syscalls kill the process."""
    arch = _SYS.get(os.uname().machine)
    if arch is None:
        raise OSError(errno.ENOSYS, f"no seccomp table for {os.uname().machine}")
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny, kill = 0x7FFF0000, 0x00050000 | errno.EACCES, 0x80000000
    prog = [
        (ld, 0, 0, 4),  # 0: A = arch
        (jeq, 0, 8, arch["audit_arch"]),  # 1: foreign arch -> 10 kill
        (ld, 0, 0, 0),  # 2: A = nr
        (jge, 6, 0, 0x40000000),  # 3: x32 ABI -> 10 kill
        (jeq, 3, 0, arch["io_uring_setup"]),  # 4: -> 8 deny
        (jeq, 0, 3, arch["socket"]),  # 5: not socket -> 9 allow
        (ld, 0, 0, 16),  # 6: A = args[0] (low word)
        (jeq, 1, 0, 1),  # 7: AF_UNIX -> 9 allow, else 8 deny
        (ret, 0, 0, deny),  # 8
        (ret, 0, 0, allow),  # 9
        (ret, 0, 0, kill),  # 10
    ]
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


# --- output capture ----------------------------------------------------------------------------------------


class CappedBuffer:
    """Keeps the first and the last `cap` bytes of a stream and counts the rest."""

    def __init__(self, cap: int):
        self.cap = cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.cap:  # trim lazily: amortized O(1) per byte
                del self.tail[: len(self.tail) - self.cap]

    def text(self, max_chars: int) -> str:
        """Decoded output; when longer than `max_chars`, its head and tail around a truncation note."""
        tail = bytes(self.tail[-self.cap :])
        full = (self.head + tail).decode(errors="replace")
        dropped = self.total - len(self.head) - len(tail)
        if dropped == 0 and len(full) <= max_chars:
            return full
        head_s = self.head.decode(errors="replace")[: max_chars // 2]
        tail_s = tail.decode(errors="replace")[-(max_chars - max_chars // 2) :]
        omitted = self.total - len(head_s.encode()) - len(tail_s.encode())
        return f"{head_s}\n... [{omitted} bytes truncated] ...\n{tail_s}"


# --- the worker ---------------------------------------------------------------------------------------------

_SETUP_FAILED = 125  # exit code of a child whose sandbox setup failed (before any program code ran)
_WARM_MODEL = """
import pyomo.environ as pyo
m = pyo.ConcreteModel()
m.x = pyo.Var(range(3), within=pyo.NonNegativeIntegers)
m.y = pyo.Var(bounds=(0, 4))
m.o = pyo.Objective(expr=sum(m.x[i] for i in range(3)) + m.y, sense=pyo.maximize)
m.c = pyo.Constraint(expr=2 * m.x[0] + 3 * m.x[1] + m.x[2] + m.y <= 7.5)
pyo.SolverFactory("appsi_highs").solve(m)
"""


_ETC_READABLE = (
    "localtime",
    "timezone",
    "passwd",
    "group",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "hosts",
    "host.conf",
    "resolv.conf",
    "protocols",
    "services",
    "mime.types",
    "os-release",
    "alternatives",
    "locale.alias",
    "fonts",
    "matplotlibrc",
)


def _system_read_dirs() -> list[str]:
    """Directories a program may read: the OS, the interpreter and its packages — not the project tree,
    data or checkpoints."""
    import site
    import sysconfig

    dirs = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/proc", "/sys"]
    # Not all of /etc (shadow, ssh host keys) and /dev (raw disks): only what programs and libc use.
    dirs += [f"/etc/{n}" for n in _ETC_READABLE] + ["/dev/zero", "/dev/urandom", "/dev/random", "/dev/fd"]
    dirs += [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    dirs += [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    dirs += site.getsitepackages()
    return sorted({os.path.realpath(d) for d in dirs if os.path.exists(d)})


class Worker:
    """State of one worker process; `serve` answers requests until EOF."""

    def __init__(self, cfg: dict, req_fd: int, resp_fd: int):
        self.cfg = cfg
        self.req_fd = req_fd
        self.resp_fd = resp_fd
        self.pid = os.getpid()
        self.isolation: dict = {"env": "scrubbed"}
        self.notes: list[str] = []
        self.uid: int | None = None
        self.fs_root = False
        self.landlock = 0
        self.read_dirs: list[str] | None = None

    # setup -----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        # Every temp dir of this worker lives here, so the pool can remove them even if we die.
        self.tmp_base = tempfile.mkdtemp(prefix=f"storm-exec-w{self.pid}-", dir=self.cfg["tmp_root"])
        os.chmod(self.tmp_base, 0o711)
        try:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
            self.isolation["reaper"] = "subreaper"
        except OSError as e:
            self.isolation["reaper"] = "none"
            self.notes.append(f"subreaper: {e}")
        self._setup_network()
        self._setup_fs()
        self._setup_uid()
        self._preload()
        self.isolation["kill"] = "uid" if self.uid is not None else "descendants"

    def _probe(self, fn) -> str | None:
        """Run fn() in a throwaway child; None if it succeeded, else the error text."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                fn()
                os._exit(0)
            except BaseException as e:
                os.write(w, repr(e).encode()[:500])
                os._exit(1)
        os.close(w)
        msg = os.read(r, 600).decode(errors="replace")
        os.close(r)
        _, status = os.waitpid(pid, 0)
        return None if status == 0 else (msg or f"status {status}")

    def _setup_network(self) -> None:
        mode = self.cfg["network"]
        self.isolation["network"] = "none"
        if mode in ("auto", "netns"):
            if _libc.unshare(CLONE_NEWNET) == 0:
                self.isolation["network"] = "netns"
                return
            self.notes.append(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
            if mode == "netns":
                raise OSError("network='netns' requested but unshare(CLONE_NEWNET) failed")
        if mode in ("auto", "seccomp"):
            err = self._probe(seccomp_block_network)
            if err is None:
                self.isolation["network"] = "seccomp"
                return
            self.notes.append(f"seccomp: {err}")
            if mode == "seccomp":
                raise OSError(f"network='seccomp' requested but unavailable: {err}")

    def _setup_uid(self) -> None:
        self.isolation["uid"] = "unchanged"
        self.isolation["nproc"] = "rlimit" if os.geteuid() != 0 else "unenforced (root)"
        if not self.cfg["drop_uid"] or os.geteuid() != 0:
            return
        # A uid no other live worker on this host can have: derived from our pid (pids are unique).
        uid = self.cfg["uid_base"] + self.pid
        # The interpreter may live where that uid cannot read (a pyenv under /root, a venv in a 0750
        # home). When Landlock confines reads, keep the *filesystem* uid 0 — the process still runs, counts
        # processes and sends signals as `uid` — else require that `uid` can read the interpreter.
        fs_root = self.landlock > 0 and self.read_dirs is not None
        import sysconfig

        needed = [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]

        def become() -> None:
            become_uid(uid, fs_root)
            for d in needed:
                os.listdir(d)

        err = self._probe(become)
        if err is None:
            self.uid = uid
            self.fs_root = fs_root
            self.isolation["uid"] = f"dropped:{uid}" + (" (fsuid 0 under landlock)" if fs_root else "")
            self.isolation["nproc"] = "rlimit"
            if self.isolation["signals"] == "none":
                self.isolation["signals"] = "uid"
        else:
            self.notes.append(f"setuid({uid}): {err}")

    def _setup_fs(self) -> None:
        self.isolation["fs"] = "none"
        self.isolation["fs_read"] = "none"
        self.isolation["signals"] = "none"
        if not self.cfg["restrict_fs"]:
            return
        abi = landlock_abi()
        if abi < 1:
            self.notes.append("landlock unavailable")
            return
        read_dirs = _system_read_dirs() if self.cfg["restrict_reads"] else None
        tmp = tempfile.mkdtemp(prefix="storm-probe-", dir=self.cfg["tmp_root"])
        try:
            err = self._probe(lambda: landlock_restrict(abi, [tmp], read_dirs))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if err is not None:
            self.notes.append(f"landlock: {err}")
            return
        self.landlock = abi
        self.read_dirs = read_dirs
        self.isolation["fs"] = "landlock"
        self.isolation["fs_read"] = "landlock" if read_dirs is not None else "none"
        self.isolation["landlock_abi"] = abi
        if abi >= 6:
            self.isolation["signals"] = "landlock"

    def _preload(self) -> None:
        errors = {}
        for name in self.cfg["preload"]:
            try:
                __import__(name)
            except Exception as e:  # a missing optional package must not kill the worker
                errors[name] = repr(e)
        if self.cfg["warm_solve"] and not errors:
            try:
                # Fill pyomo/appsi caches once so each child skips them; then stop HiGHS's thread pool:
                # a fork must not inherit a scheduler whose threads do not exist in the child.
                import io
                from contextlib import redirect_stderr, redirect_stdout

                with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                    exec(compile(_WARM_MODEL, "<warm>", "exec"), {"__name__": "__warm__"})
                import highspy

                highspy.Highs.resetGlobalScheduler(True)
            except Exception as e:
                errors["warm_solve"] = repr(e)
        self.preload_errors = errors
        gc.collect()
        gc.freeze()  # keep the collector from touching (and un-sharing) inherited objects in children

    # serving -----------------------------------------------------------------------------------------------
    def serve(self) -> None:
        threads = len(os.listdir("/proc/self/task"))
        send_msg(
            self.resp_fd,
            {
                "ready": True,
                "pid": self.pid,
                "uid": self.uid,
                "isolation": self.isolation,
                "notes": self.notes,
                "preload_errors": self.preload_errors,
                "threads": threads,
                "tmp_base": self.tmp_base,
            },
        )
        while True:
            req = recv_msg(self.req_fd)
            if req is None:
                self._rmtree(self.tmp_base)
                return
            send_msg(self.resp_fd, self.execute(req))

    def execute(self, req: dict) -> dict:
        """Run one program; return the raw result (status classification without the answer)."""
        lim = req["limits"]
        tmp = tempfile.mkdtemp(prefix="storm-exec-", dir=self.tmp_base)
        if self.uid is not None:
            if self.fs_root:  # files are created as fsuid 0; exec'd tools run as `uid`: both may write
                os.chmod(tmp, 0o777)
            else:
                os.chown(tmp, self.uid, self.uid)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        st_r, st_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self._child(req["code"], lim, tmp, out_w, err_w, st_w)  # never returns
        for fd in (out_w, err_w, st_w):
            os.close(fd)
        try:
            return self._supervise(pid, t0, lim, tmp, out_r, err_r, st_r)
        finally:
            for fd in (out_r, err_r, st_r):
                os.close(fd)
            self._rmtree(tmp)

    def _child(self, code: str, lim: dict, tmp: str, out_w: int, err_w: int, st_w: int) -> None:
        status_fd = st_w
        try:
            os.setsid()
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.dup2(st_w, 3)
            status_fd = 3
            os.closerange(4, 1 << 20)
            os.chdir(tmp)
            env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
            env.update(HOME=tmp, TMPDIR=tmp, PWD=tmp, PYTHONUNBUFFERED="1")
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_ARENA_MAX"):
                if k in os.environ:
                    env[k] = os.environ[k]
            os.environ.clear()
            os.environ.update(env)
            tempfile.tempdir = tmp
            setr = resource.setrlimit
            cpu = int(lim["cpu_s"] + 0.999)
            setr(resource.RLIMIT_CPU, (cpu, cpu + 1))
            setr(resource.RLIMIT_AS, (lim["memory_bytes"], lim["memory_bytes"]))
            setr(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))
            setr(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
            setr(resource.RLIMIT_CORE, (0, 0))
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
            if self.isolation["network"] == "seccomp":
                seccomp_block_network()
            if self.landlock:
                landlock_restrict(self.landlock, [tmp], self.read_dirs)
            if self.uid is not None:
                become_uid(self.uid, self.fs_root)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
            if os.getppid() != self.pid:  # the worker died before the line above
                os._exit(_SETUP_FAILED)
            sys.argv = ["main.py"]
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except BaseException as e:
            try:
                os.write(status_fd, f"setup:{e!r}".encode()[:2000])
            finally:
                os._exit(_SETUP_FAILED)
        _run_program(code)

    def _supervise(self, pid: int, t0: float, lim: dict, tmp: str, out_r: int, err_r: int, st_r: int) -> dict:
        out = CappedBuffer(lim["output_chars"] * 4)
        err = CappedBuffer(lim["output_chars"] * 4)
        deadline = t0 + lim["wall_s"]
        poller = select.poll()
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        streams = {out_r: out, err_r: err}
        for fd in streams:
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        reason = None  # why we killed it, if we did
        wait_status = rusage = None
        open_fds = set(streams)
        while True:
            now = time.monotonic()
            if now >= deadline:
                reason = "timeout"
                break
            tick = deadline - now if pidfd is not None else min(deadline - now, 0.005)
            for fd, _ev in poller.poll(max(tick, 0) * 1000):
                if fd == pidfd:
                    continue
                data = os.read(fd, 1 << 16)
                if data:
                    streams[fd].add(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
            if out.total + err.total > lim["max_output_bytes"]:
                reason = "output"
                break
            wpid, wstatus, ru = os.wait4(pid, os.WNOHANG)
            if wpid == pid:
                wait_status, rusage = wstatus, ru
                break
        end = time.monotonic()
        if wait_status is None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            _, wait_status, rusage = os.wait4(pid, 0)
        if pidfd is not None:
            os.close(pidfd)
        strays = self._kill_strays(pid)
        # All writers are gone: drain what is left in the pipes (bounded by the pipe buffers).
        for fd in list(open_fds):
            os.set_blocking(fd, False)
            try:
                while data := os.read(fd, 1 << 16):
                    streams[fd].add(data)
            except BlockingIOError:
                pass
        os.set_blocking(st_r, False)
        try:
            status_note = os.read(st_r, 4096).decode(errors="replace")
        except BlockingIOError:
            status_note = ""
        stderr = err.text(lim["output_chars"])
        status, returncode, note = classify(wait_status, reason, status_note, stderr, rusage, lim)
        if note:
            stderr = f"{stderr}\n[storm_jax sandbox: {note}]" if stderr else f"[storm_jax sandbox: {note}]"
        return {
            "status": status,
            "returncode": returncode,
            "stdout": out.text(lim["output_chars"]),
            "stderr": stderr,
            "stdout_bytes": out.total,
            "stderr_bytes": err.total,
            "duration_s": end - t0,
            "cpu_s": rusage.ru_utime + rusage.ru_stime if rusage is not None else None,
            "maxrss_kb": rusage.ru_maxrss if rusage is not None else None,
            "strays": strays,
        }

    def _has_children(self) -> bool:
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # None: children, none exited
        except ChildProcessError:
            return False
        return True

    def _reap(self) -> None:
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    return
            except ChildProcessError:
                return

    def _kill_strays(self, pid: int) -> int:
        """SIGKILL every process the execution left; returns how many rounds it took (0: none left)."""
        rounds = 0
        give_up = time.monotonic() + 10.0
        while self._has_children():
            rounds += 1
            if self.uid is not None:
                helper = os.fork()
                if helper == 0:
                    try:
                        os.setgroups([])
                        os.setgid(self.uid)
                        os.setuid(self.uid)
                        os.kill(-1, signal.SIGKILL)  # every process of this uid but the caller
                    finally:
                        os._exit(0)
                os.waitpid(helper, 0)
            else:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
                for p in _descendants(self.pid):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
            self._reap()
            if self._has_children():
                if time.monotonic() > give_up:
                    break  # unkillable (D state) processes: report, do not hang the worker
                time.sleep(0.001)
                self._reap()
        return rounds

    def _rmtree(self, path: str) -> None:
        def fix_and_retry(func, p, _exc):
            try:
                os.chmod(os.path.dirname(p), 0o700)
                os.chmod(p, 0o700)
                func(p)
            except OSError:
                pass

        shutil.rmtree(path, onerror=fix_and_retry)
        if os.path.exists(path):
            shutil.rmtree(path, ignore_errors=True)


_MEMORY_WORDS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")


def classify(wait_status: int, reason: str | None, status_note: str, stderr: str, rusage, lim: dict):
    """(status, returncode, note) of a finished child; status is one of ok/error/timeout/memory/killed
    (the pool turns "ok" without an answer into "no_answer")."""
    if os.WIFSIGNALED(wait_status):
        returncode = -os.WTERMSIG(wait_status)
    else:
        returncode = os.waitstatus_to_exitcode(wait_status)
    if reason == "timeout":
        return "timeout", returncode, f"wall-time limit of {lim['wall_s']:g} s exceeded; killed"
    if reason == "output":
        return "killed", returncode, f"output limit of {lim['max_output_bytes']} bytes exceeded; killed"
    if status_note.startswith("setup:"):
        return "error", returncode, f"sandbox setup failed: {status_note[6:]}"
    if returncode < 0:
        sig = -returncode
        cpu = rusage.ru_utime + rusage.ru_stime if rusage is not None else 0.0
        cpu_limit = int(lim["cpu_s"] + 0.999)
        # RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one.
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= cpu_limit - 0.05):
            return "timeout", returncode, f"CPU-time limit of {cpu_limit} s exceeded"
        if any(w in stderr for w in _MEMORY_WORDS):
            return (
                "memory",
                returncode,
                f"killed by signal {signal.Signals(sig).name} after running out of memory",
            )
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "killed", returncode, f"killed by signal {name}"
    if status_note.startswith("exc:") and status_note.endswith(":1"):
        return "memory", returncode, f"memory limit of {lim['memory_bytes']} bytes exceeded"
    return ("ok" if returncode == 0 else "error"), returncode, ""


def _descendants(root: int) -> list[int]:
    """Pids of all descendants of `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _run_program(code: str) -> None:
    """Execute the program as __main__ in this (sandboxed) child and exit with its status."""
    rc = 0
    note = ""
    try:
        # Tracebacks show the program's lines without a file on disk.
        linecache.cache["main.py"] = (len(code), None, code.splitlines(True), "main.py")
        exec(compile(code, "main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        if e.code is None:
            rc = 0
        elif isinstance(e.code, int):
            rc = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            rc = 1
    except BaseException as e:
        note = f"exc:{type(e).__name__}:{int(isinstance(e, MemoryError))}"
        rc = 1
        try:
            traceback.print_exc()
        except BaseException:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            rc = rc or 120  # what CPython returns when flushing stdout at exit fails
    if note:
        try:
            os.write(3, note.encode())
        except OSError:
            pass
    os._exit(rc)


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    req_fd, resp_fd = int(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool owns our lifetime, not the terminal
    worker = Worker(cfg, req_fd, resp_fd)
    worker.setup()
    worker.serve()
    return 0


if __name__ == "__main__":
    # Run as a script: our own directory must not shadow modules the programs import.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.exit(main(sys.argv[1:]))
