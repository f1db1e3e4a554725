"""Exceptions that carry the CLI's exit-code contract (DESIGN.md).

* :class:`UsageError` -> exit 2: bad usage or bad input, one clear line, nothing written.
* :class:`IntegrityError` -> exit 3: a worker result failed verification.
* :class:`WorkerCrashed` -> exit 3: a worker died mid-step. blindtrain does not
  silently retry on a fresh worker: a crashed worker may hold state (tempo keeps
  the obfuscated weights on the worker), so the step is aborted and no checkpoint
  is written from it. Resume from the last checkpoint.
"""

from __future__ import annotations


class BlindtrainError(Exception):
    """Base class of every error blindtrain raises on purpose."""

    exit_code = 1


class UsageError(BlindtrainError, ValueError):
    """Bad usage or bad input (exit code 2)."""

    exit_code = 2


class IntegrityError(BlindtrainError):
    """A worker's result failed an integrity check (exit code 3).

    The message names the layer, the op and the step so an operator can tell
    where the worker misbehaved.
    """

    exit_code = 3

    def __init__(self, *, layer: str, op: str, step: int, detail: str = ""):
        self.layer, self.op, self.step, self.detail = layer, op, step, detail
        message = f"integrity violation: layer {layer!r}, op {op!r}, step {step}"
        super().__init__(message + (f": {detail}" if detail else ""))


class WorkerCrashed(BlindtrainError):
    """The untrusted worker died or stopped answering (exit code 3)."""

    exit_code = 3


class WorkerError(WorkerCrashed):
    """A worker reported that it could not run a request (exit code 3), on every transport.  A kind of
    :class:`WorkerCrashed`: the step cannot go on, and the audit files are written as for a crash.

    The worker is untrusted, so its text is quoted with control characters escaped and cut to a
    bounded length (:func:`untrusted_text`).
    """

    exit_code = 3


class TrainingDiverged(BlindtrainError):
    """NaN or Inf arose on the trusted side from honest results (exit code 1): the optimisation
    diverged (learning rate too high, ...).  Not an integrity violation: no worker misbehaved."""

    exit_code = 1

    def __init__(self, *, step: int, detail: str = ""):
        self.step, self.detail = step, detail
        super().__init__(f"training diverged at step {step}" + (f": {detail}" if detail else "")
                         + "; lower --lr or check the hyper-parameters")


def untrusted_text(text: object, *, limit: int = 200) -> str:
    """Text that came from an untrusted party (a worker's error message), made safe to print.

    Control characters (newlines, carriage returns, escape sequences) and non-ASCII characters are
    shown escaped (``\\n``, ``\\x1b``, ``\\u202e``), so the text stays on one line and cannot move the
    cursor, recolour the terminal or fake blindtrain's own output; it is cut after ``limit``
    characters."""
    escaped = str(text).encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in escaped)
    if len(escaped) > limit:
        escaped = f"{escaped[:limit]}... ({len(escaped) - limit} more characters)"
    return escaped
