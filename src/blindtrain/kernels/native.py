"""Build and load the enclave's C kernels (``*.c`` beside this file) with the machine's C compiler.

A kernel is compiled once per source, compiler and machine into a cache folder
(``$BLINDTRAIN_CACHE``, else ``$XDG_CACHE_HOME/blindtrain`` or ``~/.cache/blindtrain``, else the temp
folder) and loaded with :mod:`ctypes`.  It links the OpenMP runtime PyTorch has already loaded
(``libgomp.so.1``), so the kernels and PyTorch share one thread pool; a compiler without OpenMP
builds them serial.  Anything else that fails — no compiler, a compile error, an unwritable cache,
``BLINDTRAIN_NATIVE=0`` — makes :func:`load` return ``None`` with the reason in :func:`status`, and the
callers use their PyTorch implementation.

(A real enclave would ship these kernels built into its measured image; compiling at first use is this
emulation's way of running them without a build step.)
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent
_LOADED: dict[str, ctypes.CDLL | None] = {}
_STATUS: dict[str, str] = {}


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_tag() -> str:
    """What ``-march=native`` depends on: a cache shared across machines must not hand one CPU's
    build to another."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{flags}"


def _cache_dir() -> Path:
    base = os.environ.get("BLINDTRAIN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "blindtrain")
    path = Path(base) / "native"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    path = Path(tempfile.gettempdir()) / f"blindtrain-native-{os.getuid() if hasattr(os, 'getuid') else 0}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try in order: with OpenMP (threads), then without (serial)."""
    base = ["-O3", "-std=c11", "-shared", "-fPIC"]
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        base.append("-march=native")
    return [base + ["-fopenmp"], base]


def _build(name: str) -> Path:
    """Compile ``name.c`` (beside this file) if its build is not cached; the library's path."""
    source = (_HERE / f"{name}.c").read_bytes()
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    errors = []
    for flags in _flag_sets():
        digest = hashlib.sha256(b"\0".join([source, cc.encode(), version.encode(), " ".join(flags).encode(),
                                            _cpu_tag().encode(), sys.platform.encode()])).hexdigest()[:16]
        target = _cache_dir() / f"{name}-{digest}.so"
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, lib = Path(tmp) / f"{name}.c", Path(tmp) / f"{name}.so"
            src.write_bytes(source)
            run = subprocess.run([cc, *flags, str(src), "-o", str(lib)], capture_output=True, text=True,
                                 check=False)
            if run.returncode == 0:
                os.replace(lib, target)  # atomic: a concurrent build of the same source writes the same file
                return target
            errors.append(run.stderr.strip()[:300])
    raise RuntimeError(f"{Path(cc).name} failed: {' | '.join(errors)}")


def load(name: str) -> ctypes.CDLL | None:
    """The compiled kernel library ``name`` (``name.c`` beside this file; built on first use), or ``None``
    (see :func:`status`)."""
    if name in _LOADED:
        return _LOADED[name]
    lib = None
    if os.environ.get("BLINDTRAIN_NATIVE", "1") == "0":
        _STATUS[name] = "torch (BLINDTRAIN_NATIVE=0)"
    else:
        try:
            import torch  # noqa: F401  (loads PyTorch's OpenMP runtime first: the kernels link to it)

            path = _build(name)
            lib = ctypes.CDLL(str(path))
            _STATUS[name] = f"native ({path.name})"
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _STATUS[name] = f"torch (native build unavailable: {exc})"
            log.warning("blindtrain: %s kernels fall back to PyTorch: %s", name, exc)
    _LOADED[name] = lib
    return lib


def status(name: str) -> str:
    """Which implementation serves kernel library ``name``: ``native (...)`` or ``torch (why)``."""
    load(name)
    return _STATUS[name]
