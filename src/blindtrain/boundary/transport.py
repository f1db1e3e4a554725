"""Transports: how a request reaches a worker.  Three implementations.

* :class:`InprocTransport` — the worker object lives in this process, on a thread of its own;
  every tensor is copied across (never shared by reference) both ways.
* :class:`ProcessTransport` — the worker is a separate OS process started with a scrubbed
  environment (:func:`worker_environment`: no key store path, nothing secret) and its output
  captured, never on the user's terminal; messages travel over a socket as wire frames
  (:mod:`.wire`: a JSON header and raw tensor bytes, checked on decoding; never pickle).
* ``dist`` (:mod:`.dist`) — workers on this or other machines, over torch.distributed (gloo), the
  same wire frames; the enclave is rank 0.

Every transport is asynchronous: :meth:`Transport.submit` hands a request to its worker and returns a
:class:`Pending` at once; its :meth:`Pending.result` waits for the answer.  Requests submitted to
different workers before any answer is awaited run on those workers at the same time
(:meth:`Transport.call` is ``submit(request).result()``).  One worker has at most one request in
flight: submitting a second collects the first's answer (kept for its own ``result()``) before sending,
so a large answer can never stall a large request on the same connection.

On each, a worker that dies, fails or does not answer within ``timeout`` seconds raises
:class:`~blindtrain.errors.WorkerCrashed` naming the layer, op and step it was serving, never a
hang.  Text that comes from a worker (an error message, its last output) is shown escaped and
truncated (:func:`blindtrain.errors.untrusted_text`).  Whether a result is well formed is the
boundary's check, not the transport's: a transport hands back whatever the worker answered.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from multiprocessing.connection import Connection

import torch

from ..errors import WorkerCrashed, WorkerError, untrusted_text
from ..worker.worker import Worker, WorkerConfig
from . import wire
from .messages import Request, Response, Sent, Tag

DEFAULT_TIMEOUT = 600.0
STARTUP_TIMEOUT = 120.0

#: Environment variables a worker process inherits (exact names, then prefixes); nothing else.
INHERITED_ENVIRONMENT = ("PATH", "PYTHONPATH", "PYTHONHASHSEED", "LANG", "LANGUAGE", "TZ", "TMPDIR",
                         "LD_LIBRARY_PATH", "VIRTUAL_ENV", "SYSTEMROOT", "CC", "XDG_CACHE_HOME", "BLINDTRAIN_NATIVE",
                         "BLINDTRAIN_CACHE")
INHERITED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "OMP_", "MKL_", "OPENBLAS_", "TORCH_", "NCCL_")


def worker_environment(environ=None) -> dict[str, str]:
    """The environment a worker process starts with: only what running PyTorch needs.

    Everything else is dropped — in particular ``BLINDTRAIN_KEYSTORE`` and ``HOME`` (whose
    ``.config/blindtrain`` holds the emulated enclave's key), and anything a user exported."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items()
            if name in INHERITED_ENVIRONMENT or name.startswith(INHERITED_PREFIXES)}


def serving(tag: Tag) -> str:
    """``serving layer 'fc1', op 'forward', step 3`` (for crash messages)."""
    return f"serving layer {tag.layer!r}, op {tag.op!r}, step {tag.step}"


class Pending:
    """A request handed to one worker whose answer has not been collected yet (a transport's future).

    ``collect()`` (given by the transport) waits for the answer until the request's deadline and returns
    the :class:`Response` or raises (``WorkerCrashed`` at the deadline, ``WorkerError`` ...).  It runs at
    most once: :meth:`result` returns, or raises again, what it gave."""

    def __init__(self, transport: "Transport", request: Request, collect: Callable[[], Response]) -> None:
        self.transport, self.request = transport, request
        self._collect: Callable[[], Response] | None = collect
        self._response: Response | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        """Whether the answer (or the failure) has been collected."""
        return self._collect is None

    def wait(self) -> None:
        """Collect the answer (or the failure) now, without raising."""
        if self._collect is None:
            return
        collect, self._collect = self._collect, None
        try:
            self._response = collect()
        except BaseException as exc:  # noqa: BLE001 - kept for result()
            self._error = exc
        finally:
            if self.transport._in_flight is self:
                self.transport._in_flight = None

    def result(self) -> Response:
        """The worker's answer (waits for it); raises what collecting it raised."""
        self.wait()
        if self._error is not None:
            raise self._error
        assert self._response is not None
        return self._response


class Transport(ABC):
    """Delivers requests to one worker (see the module docstring: asynchronous, one request in flight)."""

    device: str
    _in_flight: Pending | None = None

    @abstractmethod
    def _send(self, request: Request) -> Callable[[], Response]:
        """Hand ``request`` to the worker now; return the function that waits for its answer."""

    def submit(self, request: Request) -> Pending:
        """Send ``request`` now; the returned :class:`Pending`'s ``result()`` waits for the answer."""
        previous = self._in_flight
        if previous is not None:
            previous.wait()  # one request in flight per worker; its answer stays with its Pending
        pending = Pending(self, request, self._send(request))
        self._in_flight = pending
        return pending

    def call(self, request: Request) -> Response:
        return self.submit(request).result()

    @abstractmethod
    def close(self) -> None: ...


def _copy_request(request: Request) -> Request:
    args = {name: Sent(arg.tensor.detach().clone(), arg.kind) if isinstance(arg, Sent) else arg
            for name, arg in request.args.items()}
    return replace(request, args=args)


class InprocTransport(Transport):
    """Worker in this process, on its own thread; tensors copied on the way in and out.

    The caller waits at most ``timeout`` seconds for each answer; a worker thread that hangs is
    abandoned (it is a daemon thread) and the worker is declared dead.  The worker thread runs each
    request under the caller's autograd mode (grad / no-grad / inference mode)."""

    def __init__(self, config: WorkerConfig, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.worker = Worker(config)
        self.device = self.worker.device
        self.name = config.name
        self.timeout = timeout
        self._dead: str | None = None
        self._inbox: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name=f"blindtrain-worker-{config.name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            request, modes, future = item
            grad, inference = modes
            try:
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    future.set_result(self.worker.handle(request))
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
                future.set_exception(exc)

    def _send(self, request: Request) -> Callable[[], Response]:
        if self._dead:
            raise WorkerCrashed(f"worker {self.name!r} is gone ({self._dead}); cannot serve "
                                f"{serving(request.tag).removeprefix('serving ')}")
        future: Future = Future()
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        self._inbox.put((_copy_request(request), modes, future))
        deadline = time.monotonic() + self.timeout
        return lambda: self._collect(request, future, deadline)

    def _collect(self, request: Request, future: Future, deadline: float) -> Response:
        try:
            response = future.result(timeout=max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            self._dead = f"no answer within {self.timeout:g} s"
            raise WorkerCrashed(f"worker {self.name!r} did not answer within {self.timeout:g} s "
                                f"{serving(request.tag)}") from None
        except WorkerCrashed as exc:
            self._dead = "crashed"
            raise WorkerCrashed(f"worker {self.name!r} crashed {serving(request.tag)}: "
                                f"{untrusted_text(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - a worker-side failure (one WorkerError on every transport)
            raise WorkerError(f"worker {self.name!r} failed {serving(request.tag)}: "
                              f"{untrusted_text(f'{type(exc).__name__}: {exc}')}") from None
        result = response.result
        if torch.is_tensor(result):
            result = result.detach().to("cpu", copy=True)
        return Response(result=result, worker_seconds=response.worker_seconds)

    def close(self) -> None:
        """Stop the worker thread and wait for it (briefly; a hung one stays abandoned): a thread still inside
        a PyTorch op while the interpreter shuts down aborts the process ("terminate called without an active
        exception")."""
        if self.worker is not None:
            self._inbox.put(None)
            if not self._dead and self._thread is not threading.current_thread():
                self._thread.join(timeout=min(self.timeout, 10.0))
        self.worker = None  # type: ignore[assignment]


# -- process transport -------------------------------------------------------------

def worker_main(fd: int) -> None:  # runs in the worker process
    """Serve requests on the connection ``fd`` until it closes.  The first message is the worker's
    configuration from the trusted side; everything after is wire frames both ways
    (:func:`blindtrain.worker.serve.serve_pipe`)."""
    from ..worker.serve import serve_pipe

    conn = Connection(fd)
    serve_pipe(conn, conn.recv())


_BOOTSTRAP = ("import json, sys; sys.path[:0] = json.loads(sys.argv[2]); "
              "from blindtrain.boundary.transport import worker_main; worker_main(int(sys.argv[1]))")


class ProcessTransport(Transport):
    """Worker in a separate process, over a socket.

    The process starts from a fresh interpreter with :func:`worker_environment` (no key path, no
    secret), no inherited file descriptors but its socket, stdin closed, and stdout/stderr captured
    in an anonymous file: the worker can print nothing onto the user's terminal; its last output is
    quoted, escaped, if it dies.  It runs in a session of its own, as it would on its own machine:
    under Linux's scheduler autogroups a session shares one CPU share among all its processes, so N
    workers in the trusted side's session could not compute faster than one; and a terminal's Ctrl-C
    reaches the trusted side only, which closes its workers (a worker also exits when its socket
    closes).

    Args:
        config: the worker's configuration.
        timeout: seconds to wait for one answer before declaring the worker dead.
    """

    def __init__(self, config: WorkerConfig, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        parent, child = socket.socketpair()
        self._output = tempfile.TemporaryFile(prefix=".blindtrain-worker-")
        paths = [p for p in sys.path if p]
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(child.fileno()), json.dumps(paths)],
                env=worker_environment(), pass_fds=(child.fileno(),), close_fds=True,
                stdin=subprocess.DEVNULL, stdout=self._output, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            child.close()
        self._conn = Connection(parent.detach())
        self.timeout = timeout
        self.name = config.name
        self._conn.send(config)  # trusted side -> worker: the only pickle, and it flows away from the enclave
        self.device = wire.read_ready(self._receive(None, startup=True), worker=self.name)

    @property
    def pid(self) -> int:
        return self._process.pid

    def _last_output(self) -> str:
        try:
            self._output.seek(0, os.SEEK_END)
            size = self._output.tell()
            self._output.seek(max(size - 400, 0))
            text = self._output.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return f"; its last output: {untrusted_text(text, limit=300)}" if text else ""

    def _died(self, tag: Tag | None) -> WorkerCrashed:
        self._process.poll()
        where = f" {serving(tag)}" if tag is not None else " while starting"
        return WorkerCrashed(f"worker {self.name!r} died (exit code {self._process.returncode}){where}"
                             f"{self._last_output()}")

    def _receive(self, tag: Tag | None, startup: bool = False, deadline: float | None = None):
        limit = STARTUP_TIMEOUT if startup else self.timeout
        deadline = time.monotonic() + limit if deadline is None else deadline
        while not self._conn.poll(0.05):
            if self._process.poll() is not None:
                raise self._died(tag)
            if time.monotonic() > deadline:
                self._process.kill()
                self._process.wait()
                where = serving(tag) if tag is not None else "while starting"
                raise WorkerCrashed(f"worker {self.name!r} did not answer within {limit:g} s {where}")
        try:
            return self._conn.recv_bytes()  # bytes only: decoded and checked by :mod:`.wire`
        except (EOFError, ConnectionError, OSError):
            self._process.wait(1.0)
            raise self._died(tag) from None

    def _send(self, request: Request) -> Callable[[], Response]:
        try:
            self._conn.send_bytes(wire.encode(request))
        except (BrokenPipeError, ConnectionError, OSError):
            raise self._died(request.tag) from None
        deadline = time.monotonic() + self.timeout
        return lambda: wire.read_reply(self._receive(request.tag, deadline=deadline), request=request,
                                       worker=self.name)

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._conn.send_bytes(wire.encode(wire.Close()))
            except (BrokenPipeError, OSError):
                pass
            try:
                self._process.wait(5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._conn.close()
        self._output.close()


#: the transports a session builds one per worker; ``dist``'s come from the session's own DistHub (boundary/dist.py)
TRANSPORTS = {"inproc": InprocTransport, "process": ProcessTransport}
TRANSPORT_NAMES = (*TRANSPORTS, "dist")
