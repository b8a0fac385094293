"""Output shown to the model holds no path of this host, and tracebacks show only the program's frames.

The model reads a program's stdout/stderr back (and trains on it), so: the program is the pseudo-file
``<program>`` at its own line numbers; the sandbox's frames are hidden; library frames and paths in
messages and warnings are library-relative (``pyomo/core/...``); cwd and interpreter paths are rewritten.
"""

from __future__ import annotations

import os
import re
import site
import stat
import sys
import sysconfig

import pytest

import storm_jax
from storm_jax.execution.pool import ExecutionConfig, ExecutionPool
from storm_jax.execution.sandbox_io import HostPaths

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc") or os.name != "posix", reason="Linux only")

FRAME = re.compile(r'File "([^"]*)", line (\d+)')


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracebacks")
    for p in (root, *root.parents):  # programs run as another uid: it must reach its own temp dir
        if str(p) in ("/", "/tmp"):
            break
        os.chmod(p, os.stat(p).st_mode | stat.S_IXOTH)
    return root


@pytest.fixture(scope="module")
def pool(tmp_root):
    with ExecutionPool(1, ExecutionConfig(tmp_root=str(tmp_root))) as p:
        yield p


@pytest.fixture(scope="module")
def host_paths(tmp_root) -> list[str]:
    """Absolute paths of this machine that may not appear: checkout, interpreter, packages, temp dirs."""
    paths = [os.path.dirname(os.path.dirname(os.path.abspath(storm_jax.__file__))), str(tmp_root)]
    paths += [sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()]
    paths += [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    paths += [p for p in sys.path if os.path.isabs(p)]
    out = {q for p in paths for q in (p, os.path.realpath(p)) if q not in ("/", "/tmp", "/usr")}
    return sorted(out)


def _check_clean(r, host_paths: list[str]) -> list[tuple[str, int]]:
    """Assert no host path and no sandbox frame is shown; return the frames (file, line) of stderr."""
    text = r.stdout + r.stderr
    leaked = [p for p in host_paths if p in text]
    assert not leaked, f"host paths {leaked} in output:\n{text}"
    assert 'File "/' not in text, text
    # No frame of the sandbox itself, not even made relative (its notes, "[storm_jax sandbox: ...]", may be).
    assert not re.search(r"storm_jax/execution|sandbox(_\w+)?\.py", text), text
    return [(f, int(n)) for f, n in FRAME.findall(r.stderr)]


def test_syntax_error_names_the_program_line(pool, host_paths):
    r = pool.run("x = 1\ny = 2\ndef f(:\n    pass\n")
    assert r.status == "error"
    assert _check_clean(r, host_paths) == [("<program>", 3)]
    assert "Traceback" not in r.stderr  # nothing ran: no stack at all
    assert "def f(:" in r.stderr and r.stderr.rstrip().endswith("SyntaxError: invalid syntax")


def test_runtime_error_shows_only_program_frames(pool, host_paths):
    code = "import math\ndef f(x):\n    return math.sqrt(x)\ny = 1\nf(-1)\n"
    r = pool.run(code)
    assert r.status == "error"
    assert _check_clean(r, host_paths) == [("<program>", 5), ("<program>", 3)]
    assert r.stderr.startswith("Traceback (most recent call last):\n")
    assert "    return math.sqrt(x)\n" in r.stderr  # the program's source lines are shown
    assert r.stderr.rstrip().endswith("ValueError: math domain error")


def test_chained_exceptions_both_clean(pool, host_paths):
    r = pool.run("try:\n    1/0\nexcept ZeroDivisionError:\n    raise KeyError('k')\n")
    assert _check_clean(r, host_paths) == [("<program>", 2), ("<program>", 4)]
    assert "During handling of the above exception" in r.stderr


def test_error_inside_pyomo_has_library_relative_frames(pool, host_paths):
    code = "import pyomo.environ as pyo\nm = pyo.ConcreteModel()\nm.x = pyo.Var()\nprint(pyo.value(m.x))\n"
    r = pool.run(code)
    assert r.status == "error"
    frames = _check_clean(r, host_paths)
    assert frames[0] == ("<program>", 4)
    assert len(frames) >= 2 and all(f.startswith("pyomo/") and f.endswith(".py") for f, _ in frames[1:])
    assert "ValueError: No value for uninitialized" in r.stderr


def test_program_frame_called_back_from_pyomo(pool, host_paths):
    """A rule the program passes to pyomo fails: its line is shown below pyomo's frames."""
    code = (
        "import pyomo.environ as pyo\n"
        "m = pyo.ConcreteModel()\n"
        "m.x = pyo.Var()\n"
        "def rule(m):\n"
        "    return m.x >= 1 / 0\n"
        "m.c = pyo.Constraint(rule=rule)\n"
    )
    r = pool.run(code)
    frames = _check_clean(r, host_paths)
    assert frames[0] == ("<program>", 6) and frames[-1] == ("<program>", 5)
    assert any(f.startswith("pyomo/") for f, _ in frames[1:-1])
    assert "ZeroDivisionError" in r.stderr


def test_paths_in_messages_and_warnings_are_relative(pool, host_paths):
    # An ImportError names the module's file; caught and printed it reaches stdout. numpy warns from its
    # own files. The program also prints its cwd and interpreter.
    code = (
        "import os, sys, warnings\n"
        "try:\n"
        "    from pyomo.environ import NoSuchThing\n"
        "except ImportError as e:\n"
        "    print('caught:', e)\n"
        "print(os.getcwd(), sys.executable)\n"
        "import numpy as np\n"
        "np.mean([])\n"
        "from pyomo.environ import NoSuchThing\n"
    )
    r = pool.run(code)
    _check_clean(r, host_paths)
    assert (
        "caught: cannot import name 'NoSuchThing' from 'pyomo.environ' (pyomo/environ/__init__.py)\n"
        in r.stdout
    )
    assert "\n. <python>/" in r.stdout
    assert re.search(r"^numpy/\S+\.py:\d+: RuntimeWarning", r.stderr, re.M), r.stderr
    assert FRAME.findall(r.stderr) == [("<program>", "9")]


def test_host_paths_rewrite_rules(tmp_path):
    lib = tmp_path / "venv" / "lib" / "site-packages"
    lib.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(lib)
    cwd = tmp_path / "w" / "storm-exec-1"
    paths = HostPaths({str(tmp_path / "venv"): ("<python>/", "<python>"), str(link): ("", "<lib>")})
    paths = paths.with_dirs({str(tmp_path / "w"): "tmp"}, cwd=str(cwd))
    text = f"{lib}/pyomo/a.py {link}/b.py {tmp_path}/venv/bin/python {cwd}/m.lp {cwd} {tmp_path}/w/x {lib}"
    # Longest first (site-packages before its venv); a symlinked root matches by its real path too.
    assert paths.scrub(text) == "pyomo/a.py b.py <python>/bin/python m.lp . <tmp>/x <lib>"
    assert str(tmp_path) not in paths.scrub(text)
