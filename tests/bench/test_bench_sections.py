"""The bench's per-message section (each transport's µs/message and GB/s) and the offload ratio amortized over
a key epoch, present in ``results.json`` and ``report.md``; the section's measurement on its own."""

from __future__ import annotations

import json

import pytest

from blindtrain.bench import transports
from blindtrain.bench.cli import run_bench


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run_bench(preset="tiny", models="mlp-16", protocols="enclave,tempo", steps=2, device="cpu", out=out,
              progress=False, echo=lambda *a: None, command=["blindtrain", "bench"])
    return json.loads((out / "results.json").read_text()), (out / "report.md").read_text()


def test_transport_section_in_results_and_report(tiny):
    results, report = tiny
    section = results["transports"]
    assert set(section["figures"]) == {"inproc"} and not section["failed"]  # tiny: inproc only, no processes
    row = section["figures"]["inproc"]
    assert row["us_per_message"] > 0 and row["gb_s_to"] > 0 and row["gb_s_from"] > 0
    assert "## Transports: cost per message" in report and "| `inproc` |" in report


def test_offload_ratio_amortized_over_a_key_epoch(tiny):
    results, report = tiny
    cells = {c["protocol"]: c for c in results["cells"] if c["mode"] == "train"}
    tempo, enclave = cells["tempo"], cells["enclave"]
    assert tempo["key_epoch_steps"] == 100 and enclave["key_epoch_steps"] is None  # tempo encrypts weights
    assert len(tempo["warmup_enclave_seconds"]) == 1
    steady = tempo["per_step"]["enclave_seconds"]["median"]
    base = enclave["per_step"]["enclave_seconds"]["median"]
    excess = max(tempo["warmup_enclave_seconds"][0] - steady, 0.0)
    assert tempo["offload_ratio_amortized"] == pytest.approx((steady + excess / 100) / base)
    assert tempo["offload_ratio_amortized"] >= tempo["offload_ratio"]
    assert enclave["offload_ratio_amortized"] == pytest.approx(enclave["offload_ratio"]) == pytest.approx(1.0)
    assert "amortized over a key epoch" in report


def test_a_transport_that_cannot_start_is_reported_not_raised():
    result = transports.measure(settings=transports.Settings(rounds=1, messages=2, mib=1),
                                transports=("inproc", "pigeon"), echo=lambda *a: None)
    assert set(result["figures"]) == {"inproc"}
    assert "pigeon" in result["failed"] and "unknown transport" in result["failed"]["pigeon"]
    assert any("not measured" in line for line in transports.markdown(result))
