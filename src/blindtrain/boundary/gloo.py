"""torch.distributed plumbing shared by both ends of the ``dist`` transport (gloo over TCP).

Rendezvous: a ``TCPStore`` served by the trusted side (rank 0) at ``tcp://HOST:PORT``; it publishes the
world size, each worker marks itself up, then every rank builds one gloo process group (constructed
directly, not as torch.distributed's process-wide default group, so several sessions can follow one
another, or run side by side, in one process).

Messages are wire frames (:mod:`blindtrain.boundary.wire`) sent as uint8 tensors: a fixed-size first
chunk holding the length (int64) and the frame's start, then the rest if any.  Gloo's receive has no usable poll (a timed-out wait closes the pair), so
the trusted side waits with the whole remaining deadline and treats any gloo error — the peer's
connection closed, or the deadline passed — as the worker's crash.
"""

from __future__ import annotations

import datetime
import os
import time
from urllib.parse import urlsplit

import torch
import torch.distributed as dist

from ..errors import UsageError

WORLD_KEY = "blindtrain/world_size"
UP_KEY = "blindtrain/up/{rank}"
GROUP_PREFIX = "blindtrain/pg"
MESSAGE_TAG = 0
FIRST_CHUNK = 4096  # bytes of every message's first gloo send (length + the frame's start)
MAX_FRAME_BYTES = 2**36  # a worker's claimed length above this is refused before allocating
FOREVER = datetime.timedelta(days=30)  # the group's own timeout: waits that must not expire on their own


def parse_rendezvous(text: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (host, port)."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise UsageError(f"rendezvous must look like tcp://HOST:PORT, got {text!r}")
    return parts.hostname, port


def open_store(host: str, port: int, *, is_master: bool, timeout: float) -> dist.TCPStore:
    return dist.TCPStore(host, port, is_master=is_master, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=timeout))


def make_group(store, *, rank: int, world_size: int, host: str):
    """This rank's gloo group over ``store``.  On loopback both ends bind 127.0.0.1; elsewhere gloo
    picks the interface (``GLOO_SOCKET_IFNAME`` chooses it)."""
    prefixed = dist.PrefixStore(GROUP_PREFIX, store)
    loopback = host in ("127.0.0.1", "localhost", "::1") and not os.environ.get("GLOO_SOCKET_IFNAME")
    options_cls = getattr(dist.ProcessGroupGloo, "_Options", None)
    if loopback and options_cls is not None:
        options = options_cls()
        options._timeout = FOREVER
        options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
        return dist.ProcessGroupGloo(prefixed, rank, world_size, options)
    return dist.ProcessGroupGloo(prefixed, rank, world_size, FOREVER)


def _wait(work, timeout: float | None) -> None:
    if timeout is None:
        work.wait()
    else:
        work.wait(datetime.timedelta(seconds=max(timeout, 0.001)))


def send_frame(group, dst: int, frame: bytearray, *, timeout: float | None = None) -> None:
    """Send one frame to rank ``dst``: a fixed-size first chunk (the length, then the frame's start) and,
    for a frame longer than that, the rest.  A small message is one gloo send: each gloo receive costs
    the receiver a thread wake-up, which on a loaded machine is a scheduler tick.  Raises gloo's
    ``RuntimeError`` on a closed peer or a timeout."""
    first = torch.zeros(FIRST_CHUNK, dtype=torch.uint8)
    first[:8] = torch.tensor([len(frame)], dtype=torch.int64).view(torch.uint8)
    head = min(len(frame), FIRST_CHUNK - 8)
    first[8:8 + head] = torch.frombuffer(frame, dtype=torch.uint8, count=head)
    works = [group.send([first], dst, MESSAGE_TAG)]
    if len(frame) > head:
        works.append(group.send([torch.frombuffer(frame, dtype=torch.uint8, offset=head)], dst, MESSAGE_TAG))
    for work in works:
        _wait(work, timeout)


def recv_frame(group, src: int, *, timeout: float | None = None) -> memoryview:
    """Receive one frame from rank ``src``: a writable view of a fresh buffer (raises gloo's
    ``RuntimeError`` on a closed peer or timeout, ``ValueError`` on an impossible length)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    first = torch.empty(FIRST_CHUNK, dtype=torch.uint8)
    _wait(group.recv([first], src, MESSAGE_TAG), timeout)
    n = int(first[:8].view(torch.int64)[0])
    if not 0 < n <= MAX_FRAME_BYTES:
        raise ValueError(f"frame length {n} is out of range")
    head = min(n, FIRST_CHUNK - 8)
    if n == head:
        return memoryview(first[8:8 + n].numpy())
    payload = torch.empty(n, dtype=torch.uint8)
    payload[:head] = first[8:8 + head]
    remaining = None if deadline is None else deadline - time.monotonic()
    _wait(group.recv([payload[head:]], src, MESSAGE_TAG), remaining)
    return memoryview(payload.numpy())
