"""Kernel interfaces of the execution sandbox: prctl, Landlock, capabilities and uid drop, seccomp, /proc.

Standard library only (ctypes): loaded by the worker script :mod:`storm_jax.execution.sandbox`, which may
run under an interpreter without this package installed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
# Looked up here, once, in the worker: a CDLL resolves a function on its first use, and the children
# call these (the first lookup in each child cost ~50 copied-on-write pages).
for _name in ("capset", "setfsuid", "setfsgid", "unshare"):
    getattr(libc, _name)
del _name

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


def prctl(option: int, arg2: int = 0) -> None:
    if libc.prctl(option, arg2, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl({option}): {os.strerror(e)}")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    r = libc.syscall(_NR_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
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


def _landlock_rights(abi: int, read_dirs: list[str] | None) -> tuple[int, int, _RulesetAttr, int]:
    """(write rights, read rights, ruleset attr, attr size) of a ruleset for this ABI."""
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
    return write, read, attr, size


def _landlock_add(ruleset: int, fd: int, allowed: int, path: str) -> None:
    rule = _PathBeneath(allowed, fd)
    if libc.syscall(_NR_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) != 0:
        raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")


def _landlock_add_path(ruleset: int, path: str, allowed: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # a missing path needs no rule
    try:
        if not os.path.isdir(path):
            allowed &= _FILE_RIGHTS
        if allowed:
            _landlock_add(ruleset, fd, allowed, path)
    finally:
        os.close(fd)


class LandlockRules:
    """The fixed part of the sandbox's Landlock ruleset, opened once; `ruleset` builds one execution's.

    The worker keeps an O_PATH descriptor of every read dir (and of /dev/null) for its lifetime, so a
    ruleset costs one landlock_add_rule call per dir and no path lookups; it builds each execution's
    ruleset before the fork and the child only calls :func:`landlock_restrict_self` (work done in the
    child costs more: each page it touches is copied on write). The rules are the ones
    :func:`landlock_restrict` would make: read dirs and /dev/null as they were when the worker started.
    """

    def __init__(self, abi: int, read_dirs: list[str] | None):
        self.abi = abi
        self.write, self.read, self._attr, self._size = _landlock_rights(abi, read_dirs)
        self.fixed: list[tuple[int, object, str]] = []  # (O_PATH fd, byref(rule), path)
        try:
            rules = [("/dev/null", self.write | self.read)] + [(d, self.read) for d in (read_dirs or [])]
            for path, allowed in rules:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                if not os.path.isdir(path):
                    allowed &= _FILE_RIGHTS
                if allowed:
                    rule = _PathBeneath(allowed, fd)
                    self.fixed.append((fd, ctypes.byref(rule), path))
                else:
                    os.close(fd)
        except BaseException:
            self.close()
            raise

    def ruleset(self, write_dirs: list[str]) -> int:
        """A new ruleset fd (the caller closes it): writes under `write_dirs`, plus the fixed rules."""
        ruleset = libc.syscall(
            _NR_LANDLOCK_CREATE_RULESET, ctypes.byref(self._attr), ctypes.c_size_t(self._size), 0
        )
        if ruleset < 0:
            raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
        ruleset = int(ruleset)
        try:
            for d in write_dirs:
                _landlock_add_path(ruleset, d, self.write | self.read)
            for _fd, rule, path in self.fixed:
                if libc.syscall(_NR_LANDLOCK_ADD_RULE, ruleset, 1, rule, 0) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
        except BaseException:
            os.close(ruleset)
            raise
        return ruleset

    def close(self) -> None:
        for fd, _, _ in self.fixed:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fixed = []


def landlock_restrict_self(ruleset: int) -> None:
    """Enforce `ruleset` on this process (and its future children); needs no_new_privs (or CAP_SYS_ADMIN)."""
    if libc.syscall(_NR_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self")


def landlock_restrict(abi: int, write_dirs: list[str], read_dirs: list[str] | None) -> None:
    """Restrict this process (and its future children) with Landlock.

    Writes (create, delete, write, truncate, rename) are allowed only beneath `write_dirs` (and to
    /dev/null); reads and execution only beneath `read_dirs` + `write_dirs` when `read_dirs` is not None.
    With ABI >= 4 TCP bind/connect are denied too; with ABI >= 6 signals to processes outside the domain
    and connections to abstract unix sockets outside it are denied.
    """
    write, read, attr, size = _landlock_rights(abi, read_dirs)
    ruleset = libc.syscall(_NR_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    ruleset = int(ruleset)
    try:
        rules = [(d, write | read) for d in write_dirs] + [("/dev/null", write | read)]
        rules += [(d, read) for d in (read_dirs or [])]
        for path, allowed in rules:
            _landlock_add_path(ruleset, path, allowed)
        landlock_restrict_self(ruleset)
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
    args = _CAPSET_ARGS.get(bits)
    if args is None:
        header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
        data = (_CapData * 2)(_CapData(bits, bits, 0), _CapData(0, 0, 0))
        args = (ctypes.byref(header), data)
    if libc.capset(*args) != 0:
        raise OSError(ctypes.get_errno(), "capset")


CAP_SETGID, CAP_SETUID = 6, 7
PR_SET_KEEPCAPS = 8
# The two capsets become_uid makes, built once (at import, in the worker) rather than in every child.
_CAPSET_ARGS: dict = {}
for _bits in ((1 << CAP_SETUID) | (1 << CAP_SETGID), 0):
    _h = _CapHeader(0x20080522, 0)
    _CAPSET_ARGS[_bits] = (ctypes.byref(_h), (_CapData * 2)(_CapData(_bits, _bits, 0), _CapData(0, 0, 0)))
del _bits, _h


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
    prctl(PR_SET_KEEPCAPS, 1)
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _capset((1 << CAP_SETUID) | (1 << CAP_SETGID))
    libc.setfsgid(0)
    libc.setfsuid(0)
    _capset(0)
    prctl(PR_SET_KEEPCAPS, 0)
    if libc.setfsuid(-1) != 0:  # reads back the current fsuid
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


def _seccomp_network_filter():
    """(filter array, sock_fprog) of seccomp_block_network, or None on an architecture without a table."""
    arch = _SYS.get(os.uname().machine)
    if arch is None:
        return None
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
    return filters, _SockFprog(len(prog), filters)


_SECCOMP_NETWORK = _seccomp_network_filter()  # built once, in the worker


def seccomp_block_network() -> None:
    """Install a seccomp filter: socket() for any family but AF_UNIX fails with EACCES, io_uring is
    refused (it could open sockets without socket()), foreign-ABI syscalls kill the process."""
    if _SECCOMP_NETWORK is None:
        raise OSError(errno.ENOSYS, f"no seccomp table for {os.uname().machine}")
    fprog = _SECCOMP_NETWORK[1]
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def descendants(root: int) -> list[int]:
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


def system_read_dirs() -> list[str]:
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
