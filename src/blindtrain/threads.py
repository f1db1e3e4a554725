"""The enclave's thread policy: how many threads each piece of trusted-side work runs on.

Why.  An intra-op parallel region (an OpenMP ``parallel for``: ATen's ``parallel_for``, an MKL or oneDNN
GEMM, the native gather pass) ends at a barrier where the calling thread waits for every thread of its
team.  On a busy machine (a laptop with a browser open, a confidential VM sharing its cores with the
process feeding the GPU) one of those threads is often descheduled, and the barrier then costs a
scheduler tick (milliseconds) instead of microseconds.  An op that takes 20 µs on one thread then takes
1-2 ms on two.  Tempo's enclave does many such small ops per step (encode, decode, checks: O(activations)
each), so under one competing busy process on 2 cores its step went from 17 ms to 600 ms
(issue 15; reproduce with ``scripts/contention.py``).

What was chosen.

* **Serial threshold** :data:`SERIAL_BELOW` = 2^21 elements.  A pass over fewer elements takes about a
  millisecond or less on one core, about one scheduler tick: splitting it over threads saves less, when
  the machine is idle, than it loses when a thread is descheduled.  :func:`threads_for` and
  :func:`parallel_if` apply it.
* **Per-step policy.**  A protocol whose enclave work per training step scales with the activations,
  not with the weights (``Protocol.enclave_work == "activations"``: tempo), runs its whole training step
  on one thread (:class:`StepThreads`, entered and left by the session's step hooks): its encode /
  decode / check passes, the nonlinear layers, the loss and the bias updates are each far below the
  threshold for most models this project runs (mlp-4096 at batch 64: 262,144 elements per activation).
  Its large passes opt back into the configured count: the weight encryption of each key epoch
  (:func:`parallel_if`), and an op whose activations reach the threshold (resnet18's first layers at batch
  32: 2^21 elements; :func:`for_pass`, called by the layer glue around each offloaded op).  Protocols
  whose enclave computes products as large as the layer's own (``enclave``, ``otp``'s enclave-side unmask
  factors: ``enclave_work == "products"``) keep the configured count.
* **Thread count** (``--threads``, ``Session(threads=)``): the default stays PyTorch's (one per core), which
  the large passes and the ``enclave`` baseline use.
* **Calling thread only.**  Counts are changed for the calling thread alone (the two calls
  ``torch.set_num_threads`` makes, ``omp_set_num_threads`` and ``mkl_set_num_threads_local``, without
  ``torch.set_num_threads``'s process-wide default), so that a thread started meanwhile — the inproc
  worker, which emulates the GPU and must keep every core — still starts with the full count (tested).
  Where those symbols cannot be found (another OpenMP runtime) ``torch.set_num_threads`` is used.
* **Wait policy.**  OpenMP's (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) is fixed when its runtime loads,
  before blindtrain runs, and is left alone: with small work serial no thread waits at a barrier in the
  steady state, and a passive policy would make the large passes pay a futex wake-up per region.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

#: passes over fewer elements than this run on one thread (see the module docstring)
SERIAL_BELOW = 1 << 21

_SETTER: list[Callable[[int], None]] = []


def _thread_local_setter() -> Callable[[int], None] | None:
    """``omp_set_num_threads`` + ``mkl_set_num_threads_local`` from the runtime PyTorch loaded, checked by a
    probe to move this thread's OpenMP and MKL counts; ``None`` if they are not there or do not.

    PyTorch's bundled MKL exports ``mkl_set_num_threads_local`` with the Fortran convention (the count by
    reference; by value it crashes), so it is called that way, and the probe checks the result with
    ``mkl_get_max_threads``; a build where that is wrong is repaired with ``torch.set_num_threads``."""
    path = Path(torch.__file__).resolve().parent / "lib" / "libtorch_cpu.so"
    try:
        lib = ctypes.CDLL(str(path))  # already loaded: dlopen returns the same library (and its libgomp)
        omp = lib.omp_set_num_threads
        mkl_set, mkl_get = lib.mkl_set_num_threads_local, lib.mkl_get_max_threads
    except (OSError, AttributeError):
        return None
    omp.argtypes, omp.restype = [ctypes.c_int], None
    mkl_set.argtypes, mkl_set.restype = [ctypes.POINTER(ctypes.c_int)], ctypes.c_int
    mkl_get.argtypes, mkl_get.restype = [], ctypes.c_int

    def set_local(n: int) -> None:
        omp(n)
        mkl_set(ctypes.byref(ctypes.c_int(n)))

    before = torch.get_num_threads()  # also runs PyTorch's lazy per-thread initialisation first
    probe = 1 if before != 1 else 2
    set_local(probe)
    works = torch.get_num_threads() == probe and mkl_get() == probe
    set_local(before)
    works = works and torch.get_num_threads() == before and mkl_get() == before
    if not works:
        torch.set_num_threads(before)
    return set_local if works else None


def set_threads_here(n: int) -> None:
    """Run this thread's intra-op work on ``n`` threads (other threads and new ones are unaffected where
    the OpenMP runtime allows: see the module docstring)."""
    if n < 1:
        raise ValueError("a thread count is at least 1")
    if not _SETTER:
        _SETTER.append(_thread_local_setter() or torch.set_num_threads)
    if torch.get_num_threads() != n:
        _SETTER[0](n)


def threads_for(elements: int, *, threads: int | None = None) -> int:
    """The threads a pass over ``elements`` elements gets: 1 below :data:`SERIAL_BELOW`, else ``threads``
    (default: :func:`configured_threads`)."""
    full = threads if threads is not None else configured_threads()
    return 1 if elements < SERIAL_BELOW else max(full, 1)


_LOCAL = threading.local()


def _outer_counts() -> list[int]:
    if not hasattr(_LOCAL, "outer"):
        _LOCAL.outer = []
    return _LOCAL.outer


def configured_threads() -> int:
    """This thread's count outside every policy block: ``--threads`` (``Session(threads=)``), else
    PyTorch's default (one per core)."""
    outer = _outer_counts()
    return outer[0] if outer else torch.get_num_threads()


@contextmanager
def running_on(n: int) -> Iterator[None]:
    """This thread's intra-op work inside the block runs on ``n`` threads; the count before is restored."""
    before = torch.get_num_threads()
    outer = _outer_counts()
    outer.append(before)
    set_threads_here(n)
    try:
        yield
    finally:
        outer.pop()
        set_threads_here(before)


def parallel_if(elements: int):
    """A block that makes one pass over ``elements`` elements: on the configured threads if it is large
    (:func:`threads_for`), else on one.  Used around the passes that stay large in a serial step (weight
    encryption at each key epoch)."""
    return running_on(threads_for(elements))


def for_pass(elements: int):
    """Around one offloaded op's enclave work (the layer glue): inside a serial step, the op's passes over
    ``elements`` elements get :func:`threads_for` of it (large activations get the configured count back);
    outside a serial step nothing changes (an ``enclave`` op's work is its product, not its activations)."""
    if not getattr(_LOCAL, "serial_step", False):
        return nullcontext()
    return running_on(threads_for(elements))


class StepThreads:
    """The per-step policy of a session: :meth:`begin` at a training step's first forward, :meth:`end`
    after ``optimizer.step()`` (and at close).  For ``enclave_work == "activations"`` the step runs on one
    thread; otherwise nothing changes.  ``begin`` twice (several forwards per step) is one step."""

    def __init__(self, *, enclave_work: str) -> None:
        if enclave_work not in ("activations", "products"):
            raise ValueError("enclave_work is 'activations' or 'products'")
        self.serial = enclave_work == "activations"
        self._restore: int | None = None

    def begin(self) -> None:
        if self.serial and self._restore is None:
            self._restore = torch.get_num_threads()
            _outer_counts().append(self._restore)
            _LOCAL.serial_step = True
            set_threads_here(1)

    def end(self) -> None:
        if self._restore is not None:
            restore, self._restore = self._restore, None
            _LOCAL.serial_step = False
            outer = _outer_counts()
            if outer:
                outer.pop()
            set_threads_here(restore)


__all__ = ["SERIAL_BELOW", "StepThreads", "configured_threads", "for_pass", "parallel_if", "running_on",
           "set_threads_here", "threads_for"]
