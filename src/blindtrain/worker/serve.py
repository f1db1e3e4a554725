"""Worker processes: the serving loops of the ``process`` and ``dist`` transports, and the entry point

    python -m blindtrain.worker --rendezvous tcp://HOST:PORT --rank R [--device auto|cpu|cuda]
    blindtrain worker --rendezvous tcp://HOST:PORT --rank R            (the same, from the CLI)

torchrun's variables (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``) stand in for the
flags.  The trusted side is rank 0; it tells each worker its role name when it connects.

This module imports only the worker side (no session, no keys): every message is a wire frame
(:mod:`blindtrain.boundary.wire`), decoded with its checks, never unpickled.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

import torch

from ..boundary import wire
from .adversaries import AdversarySpec
from .worker import Worker, WorkerConfig


def handle_frame(worker: Worker, data) -> bytearray | None:
    """Run one request frame on ``worker``: the reply frame (a response, or the failure's text), or
    ``None`` for a close message."""
    try:
        message = wire.decode(data, expect=("request", "close"))
        if isinstance(message, wire.Close):
            return None
        return wire.encode(worker.handle(message))
    except Exception as exc:  # noqa: BLE001 - reported to the trusted side; the worker keeps serving
        return wire.encode(wire.Failure(f"{type(exc).__name__}: {exc}"))


def serve_pipe(conn, config: WorkerConfig) -> None:
    """The ``process`` transport's child: frames over a multiprocessing pipe (bytes only)."""
    worker = Worker(config)
    conn.send_bytes(wire.encode(wire.Ready(worker.device)))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        reply = handle_frame(worker, data)
        if reply is None:
            return
        conn.send_bytes(reply)


def _adversary(spec: dict) -> AdversarySpec:
    known = {f.name for f in fields(AdversarySpec)}
    return AdversarySpec(**{k: v for k, v in spec.items() if k in known})


def serve_dist(*, host: str, port: int, rank: int, world_size: int | None = None, device: str = "auto",
               threads: int | None = None, connect_timeout: float = 120.0) -> int:
    """Join the trusted side's group as ``rank`` and serve until told to close (returns an exit code)."""
    from ..boundary import gloo

    if rank < 1:
        print("blindtrain worker: rank 0 is the trusted side; workers are ranks 1..N", file=sys.stderr)
        return 2
    store = gloo.open_store(host, port, is_master=False, timeout=connect_timeout)
    published = int(store.get(gloo.WORLD_KEY))
    if world_size is not None and world_size != published:
        print(f"blindtrain worker: WORLD_SIZE {world_size} differs from the trusted side's {published}",
              file=sys.stderr)
        return 2
    if rank >= published:
        print(f"blindtrain worker: rank {rank} is outside the world of {published}", file=sys.stderr)
        return 2
    store.set(gloo.UP_KEY.format(rank=rank), "1")
    group = gloo.make_group(store, rank=rank, world_size=published, host=host)
    try:
        first = wire.decode(gloo.recv_frame(group, 0), expect=("configure", "close"))
        if isinstance(first, wire.Close):
            return 0
        worker = Worker(WorkerConfig(name=first.name, device=device, threads=first.threads or threads,
                                     adversary=_adversary(first.adversary), in_process=False))
        gloo.send_frame(group, 0, wire.encode(wire.Ready(worker.device)))
        while True:
            reply = handle_frame(worker, gloo.recv_frame(group, 0))
            if reply is None:
                return 0
            gloo.send_frame(group, 0, reply)
    except RuntimeError as exc:  # the trusted side went away
        print(f"blindtrain worker {rank}: connection to the trusted side lost ({str(exc).splitlines()[0]})",
              file=sys.stderr)
        return 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blindtrain worker", description="an untrusted blindtrain worker "
                                     "(dist transport): joins the trusted side at the rendezvous as rank R")
    parser.add_argument("--rendezvous", help="tcp://HOST:PORT of the trusted side (default: "
                        "tcp://$MASTER_ADDR:$MASTER_PORT)")
    parser.add_argument("--rank", type=int, help="this worker's rank, 1..N (default: $RANK)")
    parser.add_argument("--world-size", type=int, help="1 + number of workers (default: $WORLD_SIZE, or the "
                        "trusted side's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="torch threads of this worker")
    parser.add_argument("--connect-timeout", type=float, default=120.0, help="seconds to reach the rendezvous")
    args = parser.parse_args(argv)
    return run(rendezvous=args.rendezvous, rank=args.rank, world_size=args.world_size, device=args.device,
               threads=args.threads, connect_timeout=args.connect_timeout)


def run(*, rendezvous: str | None, rank: int | None, world_size: int | None = None, device: str = "auto",
        threads: int | None = None, connect_timeout: float = 120.0) -> int:
    """Resolve flags against torchrun's environment and serve (the CLI's ``worker`` command)."""
    from ..boundary.gloo import parse_rendezvous
    from ..errors import UsageError

    try:
        if rendezvous is None:
            addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
            if not addr or not port:
                raise UsageError("give --rendezvous tcp://HOST:PORT (or set MASTER_ADDR and MASTER_PORT)")
            rendezvous = f"tcp://{addr}:{port}"
        host, port = parse_rendezvous(rendezvous)
        rank = rank if rank is not None else _env_int("RANK")
        if rank is None:
            raise UsageError("give --rank R (or set RANK)")
        world_size = world_size if world_size is not None else _env_int("WORLD_SIZE")
    except (UsageError, ValueError) as exc:
        print(f"blindtrain worker: {exc}", file=sys.stderr)
        return 2
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("blindtrain worker: --device cuda asked for, but no CUDA device is available here", file=sys.stderr)
        return 2
    return serve_dist(host=host, port=port, rank=rank, world_size=world_size, device=device, threads=threads,
                      connect_timeout=connect_timeout)
