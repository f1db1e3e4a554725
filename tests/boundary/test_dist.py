"""The ``dist`` transport (torch.distributed, gloo over loopback): same training as inproc, clear crashes,
remote-style workers joining a rendezvous, and a worker process that loads no trusted code."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import blindtrain as bt
from blindtrain import data as datasets
from blindtrain.boundary import Ref, Request, Sent, Tag
from blindtrain.boundary.dist import DistHub, worker_names
from blindtrain.models import build

pytest.importorskip("torch.distributed")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

KEY = bytes(range(32))  # one enclave key for both runs: same keys, so the same rounding
TAG = Tag(step=0, layer="fc", op="forward")
SRC = str(Path(bt.__file__).resolve().parents[1])


def _curve(protocol: str, transport: str, steps: int = 3, **options) -> tuple[list[float], dict]:
    digits = datasets.load("digits")
    torch.manual_seed(0)
    model = build("mlp", digits.input_shape, digits.num_classes, hidden=(32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    with bt.Session(protocol=protocol, transport=transport, seed=None, device="cpu", enclave_key=KEY,
                    worker_timeout=60, **options) as session:
        wrapped, optimizer = session.prepare(model, optimizer)
        for step in range(steps):
            x, y = digits.x_train[step * 32:(step + 1) * 32], digits.y_train[step * 32:(step + 1) * 32]
            optimizer.zero_grad()
            loss = F.cross_entropy(wrapped(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        metrics = session.metrics()
    return losses, metrics


@pytest.mark.parametrize("protocol, options", [  # each runs inproc, then starts worker processes: seconds
    pytest.param("tempo", {"workers": 1}, marks=pytest.mark.slow),
    pytest.param("tempo", {"workers": 2}, marks=pytest.mark.slow),
    pytest.param("tempo", {"workers": 4}, marks=pytest.mark.slow),
    pytest.param("otp", {}, marks=pytest.mark.slow),
    pytest.param("otp", {"unmask": "mask-worker"}, marks=pytest.mark.slow),
])
def test_dist_trains_like_inproc(protocol, options):
    inproc, inproc_metrics = _curve(protocol, "inproc", **options)
    dist, dist_metrics = _curve(protocol, "dist", **options)
    assert dist == inproc  # same keys, same ops, same order: bit for bit
    for key in ("bytes_to_worker", "bytes_from_worker", "messages", "integrity_failures"):
        assert dist_metrics[key] == inproc_metrics[key]
    assert dist_metrics["worker_seconds"] > 0 and dist_metrics["transport"] == "dist"


def _session(**kwargs):
    return bt.Session(protocol="tempo", transport="dist", device="cpu", **kwargs)


def test_worker_failure_is_a_worker_error_and_the_worker_keeps_serving():
    with _session(worker_timeout=60) as session:
        boundary = session.boundary
        boundary.call(Request("store", {"X": Sent(torch.arange(6.0), "clear")}, TAG, keep={"X": "h"}))
        with pytest.raises(bt.WorkerError, match="holds no tensor 'missing'"):
            boundary.call(Request("fetch", {"X": Ref("missing")}, TAG))
        torch.testing.assert_close(boundary.call(Request("fetch", {"X": Ref("h")}, TAG)).result, torch.arange(6.0))


def test_killed_worker_raises_worker_crashed_promptly():
    with _session(worker_timeout=60) as session:
        boundary = session.boundary
        boundary.call(Request("store", {"X": Sent(torch.ones(3), "clear")}, TAG, keep={"X": "h"}))
        hub = boundary.transport("main", 0).hub
        os.kill(hub.processes[1].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(bt.WorkerCrashed, match=r"worker 'main0' \(rank 1\) (died|connection lost)"):
            boundary.call(Request("fetch", {"X": Ref("h")}, TAG))
        assert time.monotonic() - start < 30  # the peer's closed socket, not the 60 s timeout


def test_silent_worker_raises_worker_crashed_at_the_timeout():
    with _session(worker_timeout=1.5) as session:
        boundary = session.boundary
        boundary.call(Request("store", {"X": Sent(torch.ones(3), "clear")}, TAG, keep={"X": "h"}))
        hub = boundary.transport("main", 0).hub
        os.kill(hub.processes[1].pid, signal.SIGSTOP)  # alive, never answers
        try:
            with pytest.raises(bt.WorkerCrashed, match="did not answer within 2 s"):
                boundary.call(Request("fetch", {"X": Ref("h")}, TAG))
        finally:
            if hub.processes[1].poll() is None:
                os.kill(hub.processes[1].pid, signal.SIGKILL)


def test_crash_adversary_mid_training_exits_with_worker_crashed():
    with pytest.raises(bt.WorkerCrashed, match="died"):
        _curve("tempo", "dist", steps=3, adversary="crash:step=1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_remote_workers_join_a_rendezvous_by_flag_and_by_torchrun_environment():
    """Two workers started by hand (one with --rank, one with torchrun's variables) serve a session."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC}
    by_flag = subprocess.Popen([sys.executable, "-m", "blindtrain.worker", "--rendezvous", f"tcp://127.0.0.1:{port}",
                                "--rank", "1", "--device", "cpu"], env=env)
    by_env = subprocess.Popen([sys.executable, "-m", "blindtrain", "worker"],
                              env={**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "2",
                                   "WORLD_SIZE": "3"})
    try:
        with _session(rendezvous=f"tcp://127.0.0.1:{port}", dist_workers=2, worker_timeout=60) as session:
            for index in (0, 1):
                back = session.boundary.call(Request("fetch", {"X": Sent(torch.full((2,), float(index)), "clear")},
                                                     TAG), index=index).result
                torch.testing.assert_close(back, torch.full((2,), float(index)))
        assert by_flag.wait(30) == 0 and by_env.wait(30) == 0  # told to close, they exit cleanly
    finally:
        for process in (by_flag, by_env):
            if process.poll() is None:
                process.kill()


def test_asking_for_more_workers_than_ranks_is_a_usage_error():
    with _session(dist_workers=1, worker_timeout=60) as session:
        session.boundary.transport("main", 0)
        with pytest.raises(bt.UsageError, match="1 worker rank"):
            session.boundary.transport("main", 1)


def test_bad_rendezvous_is_a_usage_error():
    with pytest.raises(bt.UsageError, match="tcp://HOST:PORT"):
        DistHub(workers=1, rendezvous="http://example:80")


def test_worker_process_imports_no_trusted_code():
    """What ``python -m blindtrain.worker`` loads: the worker side, never the session, keys or protocols."""
    probe = ("import runpy, sys; sys.argv = ['blindtrain.worker', '--help'];\n"
             "try:\n    runpy.run_module('blindtrain.worker', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "import blindtrain.worker.ops; blindtrain.worker.ops.load_all()\n"
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('blindtrain'))))")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    loaded = set(out.strip().splitlines()[-1].split())
    assert "blindtrain.worker.serve" in loaded
    trusted = {"blindtrain.session", "blindtrain.crypto", "blindtrain.crypto.keystore", "blindtrain.crypto.csprng",
               "blindtrain.protocols", "blindtrain.boundary.boundary", "blindtrain.ledger", "blindtrain.train"}
    assert not loaded & trusted, sorted(loaded & trusted)


def test_rendezvous_without_the_dist_transport_is_a_usage_error():
    with pytest.raises(bt.UsageError, match="transport 'dist'"):
        bt.Session(protocol="tempo", transport="process", rendezvous="tcp://127.0.0.1:29500")


@pytest.mark.slow
def test_a_tampering_dist_worker_is_caught():
    with pytest.raises(bt.IntegrityError, match="step 1"):
        _curve("tempo", "dist", steps=3, adversary="tamper:step=1")


@pytest.mark.slow
def test_cli_dist_crash_exits_3_with_a_clear_message():
    from click.testing import CliRunner

    from blindtrain.cli import main

    result = CliRunner().invoke(main, ["train", "--protocol", "otp", "--transport", "dist", "--adversary",
                                       "crash:step=1", "--steps", "3", "--quiet"])
    assert result.exit_code == 3, result.output
    assert "error: worker 'main0' (rank 1) died (exit code 17)" in result.output


def test_roles_have_fixed_ranks_whatever_order_they_are_first_used_in():
    """otp asks its mask worker first, yet rank 1 is main0: an operator knows which machine plays which role."""
    names = worker_names({"workers": 2, "unmask": "mask-worker"})
    assert names == ["main0", "main1", "mask0"]
    assert DistHub(workers=3, names=names).ranks == {"main0": 1, "main1": 2, "mask0": 3}
    assert worker_names({}) == ["main0"]
