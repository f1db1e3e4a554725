"""The ledger: what a run cost, on which side, and what crossed the boundary.

The ledger knows nothing of any protocol. The boundary (the one choke point)
feeds it bytes, messages and worker time; protocols feed it integrity counts and
time their enclave-side work by category with :meth:`Ledger.timed`.

Time accounting
---------------
``enclave_seconds`` is the wall time of training steps (first forward of a step to
the end of ``optimizer.step()``) minus the time the trusted side spent waiting on
a worker.  A :meth:`timed` block subtracts the waits that happen inside it too, so
the categories never count worker time.  ``other`` is what no category claimed.
"""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Enclave-time categories every protocol reports (missing ones are 0).
CATEGORIES = ("masking", "unmask_factor", "both_private", "decode_verify", "nonlinear", "encode")

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


_statm: tuple[int, int] | None = None  # (pid, fd) of this process's open /proc/self/statm


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; falls back to the high-water mark).

    Sampled on every crossing, so the file stays open and is re-read with ``pread`` (a few µs instead of
    an open/read/close); it is reopened in a forked child (the fd would name the parent's ``/proc/<pid>``)."""
    global _statm
    try:
        pid = os.getpid()
        if _statm is None or _statm[0] != pid:
            _statm = (pid, os.open(f"/proc/{pid}/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
        return int(os.pread(_statm[1], 256, 0).split()[1]) * _PAGE
    except (OSError, AttributeError, IndexError, ValueError):  # pragma: no cover - non-Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Ledger:
    """Counters and timers of one session."""

    bytes_to_worker: int = 0
    bytes_from_worker: int = 0
    messages: int = 0
    integrity_checks: int = 0
    integrity_failures: int = 0
    integrity_soundness_bits: float | None = None
    weight_encryptions: int = 0
    worker_seconds: float = 0.0
    wait_seconds: float = 0.0
    step_seconds: float = 0.0
    steps: int = 0
    enclave_transitions: int = 0
    category_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    per_worker: dict[str, dict[str, float]] = field(default_factory=dict)
    _step_mark: tuple[float, float] | None = None
    _step_enclave_seconds: float = 0.0
    _rss_baseline: int = field(default_factory=current_rss_bytes)
    _rss_peak: int = 0

    # -- boundary side -----------------------------------------------------
    def record_crossing(self, *, worker: str, sent: int, received: int, waited: float, worker_time: float) -> None:
        """Account one request/response pair with ``worker`` (called by the boundary only)."""
        self.bytes_to_worker += sent
        self.bytes_from_worker += received
        self.messages += 1
        self.enclave_transitions += 2  # an ocall out and back in
        self.wait_seconds += waited
        self.worker_seconds += worker_time
        row = self.per_worker.setdefault(worker, {"bytes_to": 0, "bytes_from": 0, "messages": 0, "seconds": 0.0})
        row["bytes_to"] += sent
        row["bytes_from"] += received
        row["messages"] += 1
        row["seconds"] += worker_time
        self.sample_memory()

    def record_wait(self, seconds: float) -> None:
        """Account a span in which the trusted side waited on work running on the worker device
        (e.g. a model resident there): it is worker time, and not enclave time."""
        self.wait_seconds += seconds
        self.worker_seconds += seconds

    # -- spans of enclave time ----------------------------------------------
    def span_mark(self) -> tuple[float, float]:
        """The start of a span of enclave time: ``(clock, waits so far)``."""
        return time.perf_counter(), self.wait_seconds

    def own_seconds(self, mark: tuple[float, float]) -> float:
        """Seconds since ``mark`` less the worker waits inside them (never negative)."""
        start, wait_mark = mark
        return max((time.perf_counter() - start) - (self.wait_seconds - wait_mark), 0.0)

    # -- protocol side -----------------------------------------------------
    @contextmanager
    def timed(self, category: str):
        """Attribute the enclave time of the block (less any worker waits inside it) to ``category``."""
        if category not in self.category_seconds:
            raise KeyError(f"unknown enclave-time category {category!r}; known: {sorted(self.category_seconds)}")
        mark = self.span_mark()
        try:
            yield
        finally:
            self.category_seconds[category] += self.own_seconds(mark)

    def record_check(self, *, passed: bool) -> None:
        self.integrity_checks += 1
        if not passed:
            self.integrity_failures += 1

    # -- step timing (driven by the session's hooks) -------------------------
    def step_begin(self) -> None:
        if self._step_mark is None:
            self._step_mark = self.span_mark()

    def step_end(self) -> None:
        if self._step_mark is None:
            return
        self.step_seconds += time.perf_counter() - self._step_mark[0]
        self._step_enclave_seconds += self.own_seconds(self._step_mark)
        self._step_mark = None
        self.steps += 1
        self.sample_memory()

    @property
    def in_step(self) -> bool:
        return self._step_mark is not None

    def sample_memory(self) -> None:
        self._rss_peak = max(self._rss_peak, current_rss_bytes())

    # -- reporting -----------------------------------------------------------
    @property
    def enclave_seconds(self) -> float:
        return self._step_enclave_seconds

    def enclave_breakdown(self) -> dict[str, float]:
        """Enclave seconds per category; ``other`` is the remainder of ``enclave_seconds``."""
        breakdown = dict(self.category_seconds)
        breakdown["other"] = max(self.enclave_seconds - sum(breakdown.values()), 0.0)
        return breakdown

    @property
    def enclave_peak_bytes(self) -> int:
        """Peak resident memory of the trusted process above its level when the session began."""
        self.sample_memory()
        return max(self._rss_peak - self._rss_baseline, 0)

    def as_dict(self) -> dict:
        return {
            "enclave_seconds": self.enclave_seconds,
            "enclave_seconds_by_category": self.enclave_breakdown(),
            "worker_seconds": self.worker_seconds,
            "wait_seconds": self.wait_seconds,
            "bytes_to_worker": self.bytes_to_worker,
            "bytes_from_worker": self.bytes_from_worker,
            "messages": self.messages,
            "integrity_checks": self.integrity_checks,
            "integrity_failures": self.integrity_failures,
            "integrity_soundness_bits": self.integrity_soundness_bits,
            "weight_encryptions": self.weight_encryptions,
            "enclave_peak_bytes": self.enclave_peak_bytes,
            "per_worker": self.per_worker,
            "timed_steps": self.steps,
        }
