"""The ``dist`` transport: workers are ranks of a torch.distributed gloo group over TCP.

The trusted side is rank 0 and serves the rendezvous; workers are ranks 1..N.  A :class:`DistHub`
(one per session) either launches its N workers itself (``python -m blindtrain.worker`` processes on
loopback, at a free port) or, given ``rendezvous="tcp://HOST:PORT"``, waits for N remote workers
started with ``blindtrain worker --rendezvous tcp://HOST:PORT --rank R``.  The session asks for
workers by (role, index) — ``main0``, ``main1``, ``mask0`` … — and the hub gives each the next free
rank, tells it its name, and waits for it to report its device.

Every message is one wire frame (no pickle).  A worker that dies, or does not answer within the
timeout, raises :class:`~blindtrain.errors.WorkerCrashed`; nothing waits without a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..errors import IntegrityError, UsageError, WorkerCrashed
from ..worker.worker import WorkerConfig
from . import gloo, wire
from .messages import Request, Response
from .transport import Transport, serving

#: environment a locally launched worker inherits (nothing else: no key paths, no secrets)
_ENV_NAMES = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "BLINDTRAIN_NATIVE", "BLINDTRAIN_CACHE"}
_ENV_PREFIXES = ("PYTHON", "CUDA_", "NVIDIA_", "LD_LIBRARY", "OMP_", "MKL_", "GLOO_", "TORCH_")


def worker_names(protocol_options: dict) -> list[str]:
    """The workers the built-in protocols ask for, in rank order: tempo's ``workers`` main workers
    (``main0`` is rank 1, ``main1`` rank 2 ...), then otp's mask worker (``mask0``) if ``unmask=mask-worker``."""
    names = [f"main{i}" for i in range(int(protocol_options.get("workers") or 1))]
    return names + (["mask0"] if protocol_options.get("unmask") == "mask-worker" else [])


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    package_root = str(Path(__file__).resolve().parents[2])  # the directory holding this blindtrain
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class DistHub:
    """Rank 0 of one session's gloo group, and the N worker ranks it hands out.

    Args (keyword-only):
        workers: N, the number of worker ranks.
        names: worker names (``main0``, ``mask0`` ...) in rank order, so that an operator knows which
            machine plays which role; a name not listed takes the next rank after them.
        rendezvous: ``tcp://HOST:PORT`` to serve for remote workers; ``None`` launches N local workers.
        device: the local workers' device.
        threads: the local workers' torch threads.
        timeout: seconds a worker may take to answer one request.
        startup_timeout: seconds for all workers to join.
    """

    def __init__(self, *, workers: int, names: list[str] | None = None, rendezvous: str | None = None,
                 device: str = "cpu", threads: int | None = None, timeout: float = 600.0,
                 startup_timeout: float = 120.0) -> None:
        if workers < 1:
            raise UsageError("the dist transport needs at least one worker")
        self.workers = workers
        self.rendezvous = rendezvous
        self.device = device
        self.threads = threads
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        if rendezvous is not None:
            gloo.parse_rendezvous(rendezvous)  # a bad address is a usage error now, not at first use
        self.group = None
        self._store = None
        self.processes: dict[int, subprocess.Popen] = {}
        self.ranks = {name: rank for rank, name in enumerate(names or [], start=1) if rank <= workers}
        self._next_rank = len(self.ranks) + 1
        self._open: set[int] = set()
        self._closed_ranks: set[int] = set()
        self._finalizer = None
        self._closed = False

    # -- start-up ---------------------------------------------------------------------------
    def _start(self) -> None:
        local = self.rendezvous is None
        host, port = ("127.0.0.1", 0) if local else gloo.parse_rendezvous(self.rendezvous)
        try:
            store = gloo.open_store(host, port, is_master=True, timeout=self.startup_timeout)
        except Exception as exc:  # noqa: BLE001 - e.g. the port is taken
            raise UsageError(f"dist transport: cannot serve the rendezvous at {host}:{port}: {_first_line(exc)}") from None
        store.set(gloo.WORLD_KEY, str(self.workers + 1))
        self._store = store
        if local:
            address = f"tcp://127.0.0.1:{store.port}"
            for rank in range(1, self.workers + 1):
                command = [sys.executable, "-m", "blindtrain.worker", "--rendezvous", address, "--rank", str(rank),
                           "--device", self.device]
                if self.threads:
                    command += ["--threads", str(self.threads)]
                # its own session (as on its own machine): its own scheduling group under Linux autogroup
                self.processes[rank] = subprocess.Popen(command, env=_worker_env(), stdin=subprocess.DEVNULL,
                                                        stdout=subprocess.DEVNULL, start_new_session=True)
            self._finalizer = weakref.finalize(self, _reap, self.processes)
        deadline = time.monotonic() + self.startup_timeout
        keys = [gloo.UP_KEY.format(rank=r) for r in range(1, self.workers + 1)]
        while not store.check(keys):
            self._check_processes("while joining")
            if time.monotonic() > deadline:
                self._abandon()
                raise WorkerCrashed(f"dist transport: {self.workers} worker(s) did not all join "
                                    f"{'tcp://%s:%d' % (host, store.port)} within {self.startup_timeout:.0f} s")
            time.sleep(0.02)
        built: dict = {}

        def build():
            try:
                built["group"] = gloo.make_group(store, rank=0, world_size=self.workers + 1, host=host)
            except Exception as exc:  # noqa: BLE001 - reported below
                built["error"] = exc

        thread = threading.Thread(target=build, daemon=True, name="blindtrain-dist-rendezvous")
        thread.start()
        while thread.is_alive():
            thread.join(0.02)
            self._check_processes("while connecting")
            if time.monotonic() > deadline:
                self._abandon()
                raise WorkerCrashed(f"dist transport: the gloo group did not form within {self.startup_timeout:.0f} s")
        if "error" in built:
            self._abandon()
            raise WorkerCrashed(f"dist transport: the gloo group failed to form: {_first_line(built['error'])}")
        self.group = built["group"]

    def _check_processes(self, when: str) -> None:
        for rank, process in self.processes.items():
            if process.poll() is not None:
                self._abandon()
                raise WorkerCrashed(f"dist transport: worker rank {rank} exited (code {process.returncode}) {when}")

    def _abandon(self) -> None:
        _reap(self.processes, grace=0.0)
        self.group = None
        self._closed = True

    # -- handing out ranks ------------------------------------------------------------------
    def transport(self, config: WorkerConfig) -> "DistTransport":
        """A transport to the next free rank, configured as ``config`` (name, adversary)."""
        if self._closed:
            raise WorkerCrashed(f"worker {config.name!r}: this session's dist transport is closed")
        if self.group is None:
            self._start()
        rank = self.ranks.get(config.name)
        if rank is None:
            if self._next_rank > self.workers:
                raise UsageError(f"the dist transport has {self.workers} worker rank(s), all in use; worker "
                                 f"{config.name!r} needs another (start the session with more dist workers)")
            rank = self._next_rank
            self._next_rank += 1
        if rank in self._open:
            raise UsageError(f"dist worker rank {rank} ({config.name!r}) is already connected")
        self._open.add(rank)
        return DistTransport(config, hub=self, rank=rank)

    def exit_status(self, rank: int) -> int | None:
        """A local worker's exit code (``None``: running, or remote)."""
        process = self.processes.get(rank)
        return None if process is None else process.poll()

    def kill(self, rank: int) -> None:
        process = self.processes.get(rank)
        if process is not None and process.poll() is None:
            process.kill()

    def release(self, rank: int) -> None:
        """``rank``'s transport is closed: tell the worker, and close the group after the last one."""
        self._send_close(rank)
        self._open.discard(rank)
        if not self._open:
            self.close()

    def _send_close(self, rank: int) -> None:
        if self.group is None or rank in self._closed_ranks:
            return
        self._closed_ranks.add(rank)
        if self.exit_status(rank) is not None:
            return
        try:
            gloo.send_frame(self.group, rank, wire.encode(wire.Close()), timeout=5.0)
        except RuntimeError:
            pass  # it is gone already

    def close(self) -> None:
        """Close every worker (unused ranks too), then the group and the rendezvous."""
        for rank in range(1, self.workers + 1):
            self._send_close(rank)
        deadline = time.monotonic() + 5.0
        for process in self.processes.values():
            try:
                process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.group is not None:
            try:
                self.group.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the peers are gone
                pass
        self.group = None
        self._store = None
        self._closed = True


def _reap(processes: dict, grace: float = 2.0) -> None:
    for process in processes.values():
        if process.poll() is None:
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            if process.poll() is None:
                process.kill()
                process.wait()


class DistTransport(Transport):
    """One worker rank of a :class:`DistHub`; obtain it from :meth:`DistHub.transport`."""

    def __init__(self, config: WorkerConfig, *, hub: DistHub, rank: int) -> None:
        self.hub, self.rank, self.name = hub, rank, config.name
        self.timeout = hub.timeout
        configure = wire.Configure(name=config.name, adversary=asdict(config.adversary), threads=config.threads)
        deadline = time.monotonic() + hub.startup_timeout
        try:
            gloo.send_frame(hub.group, rank, wire.encode(configure), timeout=hub.startup_timeout)
            reply = gloo.recv_frame(hub.group, rank, timeout=deadline - time.monotonic())
        except (RuntimeError, ValueError) as exc:
            raise self._crashed(exc, hub.startup_timeout, deadline) from None
        self.device = wire.read_ready(reply, worker=self.name)

    def _crashed(self, exc: BaseException, timeout: float, deadline: float, tag=None) -> WorkerCrashed:
        """The worker's failure as a ``WorkerCrashed``; with ``tag``, naming the layer, op and step it served."""
        where = f" {serving(tag)}" if tag is not None else ""
        code = self.hub.exit_status(self.rank)
        if code is not None:
            return WorkerCrashed(f"worker {self.name!r} (rank {self.rank}) died (exit code {code}){where}")
        text = _first_line(exc)
        if time.monotonic() >= deadline - 0.01 or "timed out" in text.lower():
            self.hub.kill(self.rank)
            return WorkerCrashed(f"worker {self.name!r} (rank {self.rank}) did not answer within {timeout:.0f} s"
                                 f"{where}")
        time.sleep(0.2)  # a killed local process: let its exit status show
        code = self.hub.exit_status(self.rank)
        detail = f"died (exit code {code})" if code is not None else f"connection lost ({text})"
        return WorkerCrashed(f"worker {self.name!r} (rank {self.rank}) {detail}{where}")

    def _send(self, request: Request) -> Callable[[], Response]:
        """Send ``request`` now; return the function that reads its answer (:meth:`Transport.submit` wraps
        it in a :class:`~blindtrain.boundary.transport.Pending`).  Requests submitted to different ranks
        before any answer is read run on their workers at the same time."""
        if self.hub.group is None:
            raise WorkerCrashed(f"worker {self.name!r} (rank {self.rank}): the dist transport is closed")
        deadline = time.monotonic() + self.timeout
        try:
            gloo.send_frame(self.hub.group, self.rank, wire.encode(request), timeout=self.timeout)
        except RuntimeError as exc:
            raise self._crashed(exc, self.timeout, deadline, request.tag) from None
        return lambda: self._read_reply(request, deadline)

    def _read_reply(self, request: Request, deadline: float) -> Response:
        if self.hub.group is None:
            raise WorkerCrashed(f"worker {self.name!r} (rank {self.rank}): the dist transport is closed")
        try:
            data = gloo.recv_frame(self.hub.group, self.rank, timeout=deadline - time.monotonic())
        except RuntimeError as exc:
            raise self._crashed(exc, self.timeout, deadline, request.tag) from None
        except ValueError as exc:  # an impossible frame length
            tag = request.tag
            raise IntegrityError(layer=tag.layer, op=tag.op, step=tag.step,
                                 detail=f"worker {self.name!r} sent a malformed reply ({exc})") from None
        return wire.read_reply(data, request=request, worker=self.name)

    def close(self) -> None:
        self.hub.release(self.rank)

