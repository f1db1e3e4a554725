"""The untrusted worker: runs bilinear ops and simple tensor bookkeeping on its device."""

from .worker import Worker, WorkerConfig

__all__ = ["Worker", "WorkerConfig"]
