"""The bench's per-message section: each transport's latency (µs/message) and bandwidth (GB/s), measured.

Every transport (``inproc``, ``process``, ``dist``) gets a session of its own with one CPU worker, all open
at once, and is measured in interleaved rounds (so that load from other processes falls on all alike);
the median over rounds is reported.  Every crossing goes through the session's boundary, as a protocol's
would (so the figures include its framing, counting and copies):

* latency: the round trip of a request naming a held 8-byte tensor and its 8-byte answer (``fetch``),
  i.e. the fixed cost of one message each way, averaged over ``messages`` calls;
* bandwidth to the worker: ``store`` of a float32 tensor of ``mib`` MiB (no answer);
* bandwidth from the worker: ``fetch`` of that tensor back.

A transport that cannot start here (e.g. no loopback TCP for ``dist``) is reported with its reason.
``scripts/transport_bench.py`` measures the same with more options (bare pipe / gloo floors, concurrency).
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch

from ..boundary import Ref, Request, Sent, Tag
from ..boundary.transport import TRANSPORT_NAMES

TAG = Tag(step=0, layer="bench", op="forward")


@dataclass(frozen=True)
class Settings:
    """How much to measure: ``rounds`` interleaved rounds of ``messages`` latency calls and one
    ``mib``-MiB tensor each way."""

    rounds: int
    messages: int
    mib: int


QUICK = Settings(rounds=3, messages=30, mib=8)      # a few seconds, start-up of the workers included
FULL = Settings(rounds=5, messages=200, mib=64)


def _latency_us(boundary, messages: int) -> float:
    request = Request("fetch", {"X": Ref("small")}, TAG)
    start = time.perf_counter()
    for _ in range(messages):
        boundary.call(request)
    return (time.perf_counter() - start) / messages * 1e6


def _bandwidth_gb_s(boundary, big: torch.Tensor) -> tuple[float, float]:
    nbytes = big.numel() * big.element_size()
    start = time.perf_counter()
    boundary.call(Request("store", {"X": Sent(big, "clear")}, TAG, keep={"X": "big"}, return_result=False))
    to_worker = nbytes / (time.perf_counter() - start) / 1e9
    start = time.perf_counter()
    boundary.call(Request("fetch", {"X": Ref("big")}, TAG))
    from_worker = nbytes / (time.perf_counter() - start) / 1e9
    return to_worker, from_worker


def measure(*, settings: Settings = QUICK, transports=TRANSPORT_NAMES, echo=print) -> dict:
    """``{"settings": ..., "figures": {transport: {us_per_message, gb_s_to, gb_s_from}}, "failed": {transport:
    reason}}`` (medians over the interleaved rounds)."""
    from ..session import Session

    def start(name):  # the workers start concurrently: start-up (a process importing torch) dominates `quick`
        session = Session(protocol="tempo", transport=name, device="cpu", worker_threads=1, worker_timeout=120)
        try:
            session.boundary.call(Request("store", {"X": Sent(torch.zeros(2), "clear")}, TAG, keep={"X": "small"},
                                          return_result=False))
        except BaseException:
            session.close()
            raise
        return session

    sessions, failed = {}, {}
    with ThreadPoolExecutor(max_workers=len(transports) or 1) as pool:
        pending = {name: pool.submit(start, name) for name in transports}
        for name, future in pending.items():
            try:
                sessions[name] = future.result()
            except Exception as exc:  # noqa: BLE001 - a transport that cannot start here is a result, not a crash
                failed[name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]
    big = torch.randn(settings.mib * 2**18)
    samples = {name: {"us_per_message": [], "gb_s_to": [], "gb_s_from": []} for name in sessions}
    try:
        for _ in range(settings.rounds):
            for name, session in sessions.items():
                samples[name]["us_per_message"].append(_latency_us(session.boundary, settings.messages))
                to_worker, from_worker = _bandwidth_gb_s(session.boundary, big)
                samples[name]["gb_s_to"].append(to_worker)
                samples[name]["gb_s_from"].append(from_worker)
    finally:
        with ThreadPoolExecutor(max_workers=len(sessions) or 1) as pool:
            list(pool.map(lambda session: session.close(), sessions.values()))
    figures = {name: {key: statistics.median(values) for key, values in s.items()} for name, s in samples.items()}
    for name, row in figures.items():
        echo(f"transport {name}: {row['us_per_message']:.1f} µs/message, {row['gb_s_to']:.2f} GB/s to the worker, "
             f"{row['gb_s_from']:.2f} GB/s back")
    for name, reason in failed.items():
        echo(f"transport {name}: not measured ({reason})")
    return {"settings": asdict(settings), "figures": figures, "failed": failed}


def markdown(result: dict | None) -> list[str]:
    """The bench report's section (lines)."""
    if not result:
        return []
    s = result["settings"]
    lines = ["## Transports: cost per message", "",
             f"Measured on this machine through the session boundary, one CPU worker per transport, all open at once, "
             f"median of {s['rounds']} interleaved rounds: latency is the round trip of an 8-byte `fetch` "
             f"(mean of {s['messages']} calls), bandwidth a {s['mib']} MiB float32 tensor stored on the worker "
             f"and fetched back.", "",
             "| transport | µs/message | GB/s to worker | GB/s from worker |", "|---|---|---|---|"]
    for name, row in result["figures"].items():
        lines.append(f"| `{name}` | {row['us_per_message']:.1f} | {row['gb_s_to']:.2f} | {row['gb_s_from']:.2f} |")
    for name, reason in result.get("failed", {}).items():
        lines.append(f"| `{name}` | not measured: {reason} | | |")
    return lines + [""]


__all__ = ["FULL", "QUICK", "Settings", "markdown", "measure"]
