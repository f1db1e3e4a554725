"""The enclave's thread policy (:mod:`blindtrain.threads`): small work on one thread, large passes on the
configured count, a serial training step for protocols whose enclave work scales with activations, and
counts changed for the calling thread only (a thread started meanwhile keeps the full count).  No timing."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import blindtrain as bt
from blindtrain import threads
from blindtrain.protocols import tempo as tempo_module
from blindtrain.protocols.tempo import projections as tempo_projections


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_small_passes_run_on_one_thread_and_large_ones_on_the_configured_count(two_threads):
    assert threads.threads_for(threads.SERIAL_BELOW - 1) == 1
    assert threads.threads_for(threads.SERIAL_BELOW) == 2
    with threads.parallel_if(1000):
        assert torch.get_num_threads() == 1
        with threads.parallel_if(threads.SERIAL_BELOW):  # a large pass inside a serial block gets them back
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_the_count_changes_for_the_calling_thread_only(two_threads):
    seen = []
    with threads.running_on(1):
        assert torch.get_num_threads() == 1
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
    assert seen == [2]  # e.g. the inproc worker's thread, started lazily inside a serial step
    assert torch.get_num_threads() == 2


def test_step_threads_serial_only_for_activation_scaled_protocols(two_threads):
    serial = threads.StepThreads(enclave_work="activations")
    serial.begin()
    serial.begin()  # several forwards in one step: still one step
    assert torch.get_num_threads() == 1 and threads.configured_threads() == 2
    serial.end()
    assert torch.get_num_threads() == 2
    unchanged = threads.StepThreads(enclave_work="products")
    unchanged.begin()
    assert torch.get_num_threads() == 2
    unchanged.end()
    with pytest.raises(ValueError):
        threads.StepThreads(enclave_work="everything")


def _counts_during_a_step(protocol, monkeypatch=None):
    """torch.get_num_threads() inside a nonlinear layer (the enclave's own small work) during a training step,
    and after the step."""
    torch.manual_seed(0)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return F.relu(x)

    model = torch.nn.Sequential(torch.nn.Linear(10, 8), Probe(), torch.nn.Linear(8, 3))
    session = bt.Session(protocol=protocol, device="cpu", seed=None)
    model, opt = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 10)), torch.randint(0, 3, (4,))).backward()
        opt.step()
    after = torch.get_num_threads()
    session.close()
    return seen, after


def test_a_tempo_step_runs_on_one_thread_and_its_weight_encryption_on_the_configured_count(two_threads, monkeypatch):
    encrypt_counts = []
    real = tempo_projections.weight_epoch

    def spy(*args, **kwargs):
        encrypt_counts.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(tempo_projections, "weight_epoch", spy)
    monkeypatch.setattr(threads, "SERIAL_BELOW", 1)  # these tiny weights count as a large pass
    seen, after = _counts_during_a_step("tempo")
    assert seen == [1, 1] and after == 2
    assert encrypt_counts and set(encrypt_counts) == {2}


def test_the_enclave_baseline_keeps_the_configured_count(two_threads):
    seen, after = _counts_during_a_step("enclave")
    assert seen == [2, 2] and after == 2


def test_an_op_on_large_activations_gets_the_configured_count_back_in_a_serial_step(two_threads, monkeypatch):
    """The layer glue's hook: in tempo's serial step, an op whose activations reach SERIAL_BELOW runs its
    enclave passes on the configured count; outside a serial step the hook changes nothing."""
    seen = []
    real = tempo_module.Tempo.forward

    def spy(self, site, x, weight):
        seen.append(torch.get_num_threads())
        return real(self, site, x, weight)

    monkeypatch.setattr(tempo_module.Tempo, "forward", spy)
    monkeypatch.setattr(threads, "SERIAL_BELOW", 40)  # first layer: 4×10 inputs (large), second: 4×8 (small)
    _counts_during_a_step("tempo")
    assert seen == [2, 1, 2, 1]
    with threads.for_pass(10**9):  # no serial step: nothing changes
        assert torch.get_num_threads() == 2
    with threads.running_on(1), threads.for_pass(10**9):
        assert torch.get_num_threads() == 1
