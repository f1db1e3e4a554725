"""Per-message latency (µs/message) and bandwidth (GB/s) of each transport, measured side by side.

    PYTHONPATH=src python scripts/transport_bench.py [--rounds 5] [--messages 200] [--mib 64] [--raw]
                                                     [--concurrent N] [--json OUT]

All three transports (inproc, process, dist) are open at once and measured in interleaved rounds, so
that load from other processes falls on all of them alike; the median over rounds is reported.
* latency: a round trip of a request naming a held 8-byte tensor and its 8-byte answer (``fetch``),
  i.e. the fixed cost of one message each way;
* bandwidth to the worker: ``store`` of a float32 tensor of ``--mib`` MiB (no answer);
* bandwidth from the worker: ``fetch`` of that tensor back.
Every crossing goes through the session's boundary, as a protocol's would.

``--concurrent N``: two dist workers (one thread each) each multiply a held N×N matrix by a sent one;
the wall time of calling them one after the other is compared, in interleaved rounds, with submitting
both before waiting for either (``DistTransport.submit``; the boundary itself still calls one at a time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import blindtrain as bt
from blindtrain.bench.transports import _bandwidth_gb_s as _bandwidth, _latency_us as _latency
from blindtrain.boundary import Ref, Request, Sent, Tag

TRANSPORTS = ("inproc", "process", "dist")
TAG = Tag(step=0, layer="bench", op="forward")


def _raw_ping_pong(messages: int, rounds: int) -> dict:
    """The floor under each transport: 512-byte ping-pong over a bare multiprocessing pipe and over a bare gloo
    pair (one send each way, no blindtrain framing), between this process and one child."""
    import datetime
    import multiprocessing as mp
    import subprocess
    import sys

    import torch.distributed as dist

    context = mp.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_pipe_echo, args=(theirs,), daemon=True)
    child.start()
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=120))
    echo = subprocess.Popen([sys.executable, __file__, "--gloo-echo", str(store.port), "--messages", str(messages),
                             "--rounds", str(rounds)])
    group = dist.ProcessGroupGloo(dist.PrefixStore("raw", store), 0, 2, datetime.timedelta(seconds=120))
    buffer = torch.zeros(512, dtype=torch.uint8)
    pipe, gloo = [], []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(messages):
                ours.send_bytes(bytes(512))
                ours.recv_bytes()
            pipe.append((time.perf_counter() - start) / messages * 1e6)
            start = time.perf_counter()
            for _ in range(messages):
                group.send([buffer], 1, 0).wait()
                group.recv([buffer], 1, 0).wait()
            gloo.append((time.perf_counter() - start) / messages * 1e6)
    finally:
        ours.send_bytes(b"")
        echo.wait(60)
        child.join(10)
    return {"pipe_us_per_round_trip": statistics.median(pipe), "gloo_us_per_round_trip": statistics.median(gloo)}


def _pipe_echo(conn) -> None:
    while True:
        data = conn.recv_bytes()
        if not data:
            return
        conn.send_bytes(data)


def _gloo_echo(port: int, messages: int, rounds: int) -> None:
    import datetime

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=120))
    group = dist.ProcessGroupGloo(dist.PrefixStore("raw", store), 1, 2, datetime.timedelta(seconds=120))
    buffer = torch.zeros(512, dtype=torch.uint8)
    for _ in range(messages * rounds):
        group.recv([buffer], 0, 0).wait()
        group.send([buffer], 0, 0).wait()


def _concurrency(n: int, rounds: int) -> dict:
    from blindtrain.boundary.dist import DistHub
    from blindtrain.worker import WorkerConfig

    hub = DistHub(workers=2, device="cpu", threads=1, timeout=600)
    try:
        workers = [hub.transport(WorkerConfig(name=f"main{i}", threads=1)) for i in range(2)]
        for worker in workers:
            worker.call(Request("store", {"B": Sent(torch.randn(n, n), "clear")}, TAG, keep={"B": "b"},
                                return_result=False))
        request = Request("bilinear", {"A": Sent(torch.randn(n, n), "clear"), "B": Ref("b")}, TAG,
                          params={"fn": "matmul"}, return_result=False)
        sequential, concurrent = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            for worker in workers:
                worker.call(request)
            sequential.append(time.perf_counter() - start)
            start = time.perf_counter()
            for pending in [worker.submit(request) for worker in workers]:
                pending.result()
            concurrent.append(time.perf_counter() - start)
    finally:
        hub.close()
    seq, con = statistics.median(sequential), statistics.median(concurrent)
    return {"n": n, "sequential_s": seq, "concurrent_s": con, "ratio": con / seq}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--concurrent", type=int, metavar="N", help="also time 2 dist workers on N×N matmuls")
    parser.add_argument("--raw", action="store_true", help="also time bare pipe and bare gloo ping-pong")
    parser.add_argument("--gloo-echo", type=int, help=argparse.SUPPRESS)  # (the --raw child)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.gloo_echo:
        _gloo_echo(args.gloo_echo, args.messages, args.rounds)
        return
    raw = _raw_ping_pong(args.messages, args.rounds) if args.raw else None
    if raw:
        print(f"bare 512-byte ping-pong: pipe {raw['pipe_us_per_round_trip']:.1f} µs, gloo "
              f"{raw['gloo_us_per_round_trip']:.1f} µs per round trip (median of {args.rounds} interleaved rounds)")
    if args.concurrent:
        c = _concurrency(args.concurrent, args.rounds)
        print(f"2 dist workers, {c['n']}×{c['n']} matmul each: one after the other {c['sequential_s'] * 1e3:.1f} ms, "
              f"submitted together {c['concurrent_s'] * 1e3:.1f} ms (ratio {c['ratio']:.2f}; median of "
              f"{args.rounds} interleaved rounds)")
    sessions = {name: bt.Session(protocol="tempo", transport=name, device="cpu", worker_threads=1)
                for name in TRANSPORTS}
    big = torch.randn(args.mib * 2**18)
    figures: dict[str, dict[str, list[float]]] = {n: {"us_per_message": [], "gb_s_to": [], "gb_s_from": []}
                                                  for n in TRANSPORTS}
    try:
        for session in sessions.values():
            session.boundary.call(Request("store", {"X": Sent(torch.zeros(2), "clear")}, TAG, keep={"X": "small"},
                                          return_result=False))
        for _ in range(args.rounds):
            for name, session in sessions.items():
                figures[name]["us_per_message"].append(_latency(session.boundary, args.messages))
                to_worker, from_worker = _bandwidth(session.boundary, big)
                figures[name]["gb_s_to"].append(to_worker)
                figures[name]["gb_s_from"].append(from_worker)
    finally:
        for session in sessions.values():
            session.close()
    result = {name: {key: statistics.median(values) for key, values in f.items()} for name, f in figures.items()}
    print(f"{'transport':10s} {'µs/message':>11s} {'GB/s to':>8s} {'GB/s from':>10s}   "
          f"(median of {args.rounds} interleaved rounds; {args.mib} MiB tensors)")
    for name, row in result.items():
        print(f"{name:10s} {row['us_per_message']:11.1f} {row['gb_s_to']:8.2f} {row['gb_s_from']:10.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rounds": args.rounds, "messages": args.messages, "mib": args.mib, "figures": result,
                       "concurrency": c if args.concurrent else None, "raw": raw}, handle, indent=2)


if __name__ == "__main__":
    main()
