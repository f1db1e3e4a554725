"""Transports: how a request reaches a worker.  Two implementations.

* :class:`InprocTransport` — the worker object lives in this process, but every
  tensor is copied across (never shared by reference) both ways.
* :class:`ProcessTransport` — the worker is a separate OS process (``spawn``);
  messages travel as wire frames (:mod:`.wire`: a JSON header and raw tensor
  bytes, never pickle) through a pipe.  A worker that dies or stops answering raises :class:`~blindtrain.errors.WorkerCrashed`, never a hang.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from abc import ABC, abstractmethod
from dataclasses import replace

import torch

from ..errors import WorkerCrashed, WorkerError
from ..worker.worker import Worker, WorkerConfig
from . import wire
from .messages import Request, Response, Sent


class Transport(ABC):
    """Delivers requests to one worker."""

    device: str

    @abstractmethod
    def call(self, request: Request) -> Response: ...

    @abstractmethod
    def close(self) -> None: ...


def _copy_request(request: Request) -> Request:
    args = {name: Sent(arg.tensor.detach().clone(), arg.kind) if isinstance(arg, Sent) else arg
            for name, arg in request.args.items()}
    return replace(request, args=args)


class InprocTransport(Transport):
    """Worker in this process; tensors copied on the way in and out."""

    def __init__(self, config: WorkerConfig) -> None:
        self.worker = Worker(config)
        self.device = self.worker.device

    def call(self, request: Request) -> Response:
        try:
            response = self.worker.handle(_copy_request(request))
        except WorkerCrashed:
            raise
        except Exception as exc:  # noqa: BLE001 - one WorkerError on every transport
            raise WorkerError(f"worker {self.worker.config.name!r} failed: "
                              f"{wire.quote_worker_text(f'{type(exc).__name__}: {exc}')}") from exc
        result = None if response.result is None else response.result.detach().to("cpu", copy=True)
        return Response(result=result, worker_seconds=response.worker_seconds)

    def close(self) -> None:
        self.worker = None  # type: ignore[assignment]


# -- process transport -------------------------------------------------------------

def _worker_main(conn, config: WorkerConfig) -> None:  # runs in the child process
    from ..worker.serve import serve_pipe

    serve_pipe(conn, config)


class ProcessTransport(Transport):
    """Worker in a separate process, over a pipe.

    Args:
        config: the worker's configuration.
        timeout: seconds to wait for one answer before declaring the worker dead.
    """

    def __init__(self, config: WorkerConfig, *, timeout: float = 600.0) -> None:
        context = mp.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_worker_main, args=(child_conn, config), daemon=True,
                                        name=f"blindtrain-worker-{config.name}")
        self._process.start()
        child_conn.close()
        self.timeout = timeout
        self.name = config.name
        self.device = wire.read_ready(self._receive(startup=True), worker=self.name)

    def _receive(self, startup: bool = False):
        deadline = time.monotonic() + (120.0 if startup else self.timeout)
        while not self._conn.poll(0.05):
            if not self._process.is_alive():
                raise WorkerCrashed(f"worker {self.name!r} died (exit code {self._process.exitcode})")
            if time.monotonic() > deadline:
                self._process.kill()
                raise WorkerCrashed(f"worker {self.name!r} did not answer within {self.timeout:.0f} s")
        try:
            return self._conn.recv_bytes()
        except (EOFError, ConnectionError):
            self._process.join(1.0)
            raise WorkerCrashed(f"worker {self.name!r} died (exit code {self._process.exitcode})") from None

    def call(self, request: Request) -> Response:
        try:
            self._conn.send_bytes(wire.encode(request))
        except (BrokenPipeError, ConnectionError, OSError):
            raise WorkerCrashed(f"worker {self.name!r} is gone (exit code {self._process.exitcode})") from None
        return wire.read_reply(self._receive(), request=request, worker=self.name)

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send_bytes(wire.encode(wire.Close()))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(5.0)
            if self._process.is_alive():
                self._process.kill()
        self._conn.close()


def _dist_transport(*args, **kwargs):
    """``DistTransport(config, hub=..., rank=...)``; a session gets them from its ``DistHub`` (boundary/dist.py)."""
    from .dist import DistTransport

    return DistTransport(*args, **kwargs)


TRANSPORTS = {"inproc": InprocTransport, "process": ProcessTransport, "dist": _dist_transport}
