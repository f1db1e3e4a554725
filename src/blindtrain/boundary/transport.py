"""Transports: how a request reaches a worker.  Two implementations.

* :class:`InprocTransport` — the worker object lives in this process, but every
  tensor is copied across (never shared by reference) both ways.
* :class:`ProcessTransport` — the worker is a separate OS process (``spawn``);
  tensors travel as NumPy buffers through a pipe.  A worker that dies or stops
  answering raises :class:`~blindtrain.errors.WorkerCrashed`, never a hang.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import BlindtrainError, WorkerCrashed
from ..worker.worker import Worker, WorkerConfig
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
        response = self.worker.handle(_copy_request(request))
        result = None if response.result is None else response.result.detach().to("cpu", copy=True)
        return Response(result=result, worker_seconds=response.worker_seconds)

    def close(self) -> None:
        self.worker = None  # type: ignore[assignment]


# -- process transport -------------------------------------------------------------

@dataclass
class _WireRequest:
    """A request with tensors as NumPy arrays (what is pickled onto the pipe)."""

    instr: str
    args: dict
    tag: object
    params: dict
    keep: dict
    keep_result: str | None
    return_result: bool


def _to_wire(request: Request) -> _WireRequest:
    args = {name: (arg.tensor.detach().cpu().numpy(), arg.kind) if isinstance(arg, Sent) else arg
            for name, arg in request.args.items()}
    return _WireRequest(request.instr, args, request.tag, request.params, request.keep,
                        request.keep_result, request.return_result)


def _from_wire(wire: _WireRequest) -> Request:
    args = {name: Sent(torch.from_numpy(np.array(arg[0], copy=True)), arg[1]) if isinstance(arg, tuple) else arg
            for name, arg in wire.args.items()}
    return Request(wire.instr, args, wire.tag, wire.params, wire.keep, wire.keep_result, wire.return_result)


def _worker_main(conn, config: WorkerConfig) -> None:  # runs in the child process
    worker = Worker(config)
    conn.send(("ready", worker.device))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            response = worker.handle(_from_wire(message))
            result = None if response.result is None else response.result.detach().cpu().numpy()
            conn.send(("ok", result, response.worker_seconds))
        except Exception as exc:  # noqa: BLE001 - report to the trusted side, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


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
        status, self.device = self._receive(startup=True)

    def _receive(self, startup: bool = False):
        deadline = time.monotonic() + (120.0 if startup else self.timeout)
        while not self._conn.poll(0.05):
            if not self._process.is_alive():
                raise WorkerCrashed(f"worker {self.name!r} died (exit code {self._process.exitcode})")
            if time.monotonic() > deadline:
                self._process.kill()
                raise WorkerCrashed(f"worker {self.name!r} did not answer within {self.timeout:.0f} s")
        try:
            return self._conn.recv()
        except (EOFError, ConnectionError):
            self._process.join(1.0)
            raise WorkerCrashed(f"worker {self.name!r} died (exit code {self._process.exitcode})") from None

    def call(self, request: Request) -> Response:
        try:
            self._conn.send(_to_wire(request))
        except (BrokenPipeError, ConnectionError, OSError):
            raise WorkerCrashed(f"worker {self.name!r} is gone (exit code {self._process.exitcode})") from None
        reply = self._receive()
        if reply[0] == "error":
            raise BlindtrainError(f"worker {self.name!r} failed: {reply[1]}")
        _, result, worker_seconds = reply
        return Response(result=None if result is None else torch.from_numpy(result), worker_seconds=worker_seconds)

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._process.join(5.0)
            if self._process.is_alive():
                self._process.kill()
        self._conn.close()


TRANSPORTS = {"inproc": InprocTransport, "process": ProcessTransport}
