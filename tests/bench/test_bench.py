"""``blindtrain bench``: a tiny preset end to end (plain, enclave, a clear offload protocol with a
cost model, an inference-only one and one that always fails), the outputs and the ledger figures."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from blindtrain.boundary import Request, Sent, Tag
from blindtrain.cli import main
from blindtrain.costs import FLOAT32, StepCost
from blindtrain.protocols import PROTOCOLS, Protocol, ProtocolInfo, load_all
from blindtrain.bench import harness, plots, presets
from blindtrain.ledger import CATEGORIES


class _ClearOffload(Protocol):
    """Every bilinear op sent to the worker in the clear; a cost model that counts exactly that."""

    info = ProtocolInfo("bench-clear", "test", True, "nothing", "none", "everything (test protocol)",
                        "clear offload for the bench tests")

    def bilinear(self, site, op, fn, a, b, *, roles, params):
        with self.runtime.ledger.timed("masking"):  # a category, so the breakdown has something in it
            a, b = a.contiguous(), b.contiguous()
        return self.runtime.call(Request("bilinear", {"A": Sent(a, "clear"), "B": Sent(b, "clear")},
                                         Tag(self.runtime.step, site.name, op), params={"fn": fn, **params})).result

    def cost_model(self, ops, *, batch, input_numel, classes, training=True):
        used = ops if training else [op for op in ops if op.op == "forward"]
        return StepCost(enclave_elementwise=sum(op.numel("A") + op.numel("B") for op in used),
                        worker_flops=sum(op.flops for op in used),
                        bytes_to_worker=sum((op.numel("A") + op.numel("B")) * FLOAT32 for op in used),
                        bytes_from_worker=sum(op.numel("out") * FLOAT32 for op in used),
                        round_trips=len(used), workers=1, trust="test: the worker sees everything")


class _InferOnly(_ClearOffload):
    info = ProtocolInfo("bench-infer", "test", False, "nothing", "none", "everything (test protocol)",
                        "inference-only clear offload")


class _Broken(_ClearOffload):
    info = ProtocolInfo("bench-broken", "test", True, "nothing", "none", "-", "always runs out of memory")

    def bilinear(self, site, op, fn, a, b, *, roles, params):
        raise RuntimeError("CUDA out of memory (simulated)")


TEST_PROTOCOLS = (_ClearOffload, _InferOnly, _Broken)


@pytest.fixture
def test_protocols():
    load_all()
    for cls in TEST_PROTOCOLS:
        PROTOCOLS[cls.info.name] = cls
    yield [cls.info.name for cls in TEST_PROTOCOLS]
    for cls in TEST_PROTOCOLS:  # leave the registry as other tests expect it
        PROTOCOLS.pop(cls.info.name, None)


@pytest.fixture
def tiny_run(tmp_path, test_protocols):
    out = tmp_path / "bench"
    protocols = ",".join(["plain", "enclave", *test_protocols])
    result = CliRunner().invoke(main, ["bench", "--preset", "tiny", "--protocols", protocols, "--device", "cpu",
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, json.loads((out / "results.json").read_text()), result.output


LEDGER_KEYS = ("enclave_seconds", "enclave_seconds_by_category", "worker_seconds", "bytes_to_worker",
               "bytes_from_worker", "messages", "integrity_checks", "integrity_failures", "integrity_soundness_bits",
               "weight_encryptions", "enclave_peak_bytes", "modelled", "protocol_summary")


def test_tiny_preset_writes_all_outputs_and_consistent_figures(tiny_run):
    out, results, output = tiny_run
    # the three kinds of output
    assert (out / "report.md").is_file()
    for name in plots.PLOTS:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    meta = results["meta"]
    assert meta["command"].startswith("blindtrain bench") and meta["versions"]["torch"] == torch.__version__
    assert meta["device_label"] and results["worker_device"] == "cpu"

    cells = results["cells"]
    by = {(c["protocol"], c["model"], c["mode"]): c for c in cells}
    models = [m.label for m in presets.TINY.models]
    # inference-only protocol: only inference cells, with plain and enclave on the same batches
    for model in models:
        assert ("bench-infer", model, "train") not in by
        for name in ("bench-infer", "plain", "enclave"):
            assert by[(name, model, "infer")]["status"] == "ok"
    # a failing protocol is recorded with its reason and the run goes on
    broken = [c for c in cells if c["protocol"] == "bench-broken"]
    assert broken and all(c["status"] == "failed" and "out of memory" in c["reason"] for c in broken)
    assert "bench-broken` failed" in (out / "report.md").read_text()

    ok = [c for c in cells if c["status"] == "ok"]
    assert len(ok) == len(cells) - len(broken)
    for c in ok:
        name = f"{c['protocol']}/{c['model']}/{c['mode']}"
        for key in ("steps_per_second", "samples_per_second", "step_seconds"):
            s = c[key]
            assert 0 < s["min"] <= s["median"] <= s["max"], name
        assert c["samples_per_second"]["median"] == pytest.approx(c["steps_per_second"]["median"] * c["batch"])
        assert c["timed_steps"] == presets.TINY.steps and len(c["raw_steps"]) == c["timed_steps"]
        assert set(c["enclave_seconds_by_category"]) == set(CATEGORIES) | {"other"}
        for step in c["raw_steps"]:  # the categories add up to the enclave time of each step
            assert sum(step["by_category"].values()) == pytest.approx(step["enclave_seconds"], abs=1e-9)
            assert step["enclave_seconds"] <= step["wall_seconds"] + 1e-9
        for key in LEDGER_KEYS:
            assert key in c["ledger"], (name, key)
        assert c["enclave_peak_bytes"] is not None and "integrity_soundness_bits" in c
        assert c["protocol_summary"] is not None and c["modelled_sgx"]["note"].startswith("modelled")
        # cost model beside the measurement: bytes measured == bytes modelled, every timed step
        cost = c["cost_model"]
        assert cost["available"], name
        assert c["checks"]["bytes_ok"] is True, (name, c["checks"])
        assert c["measured_all_steps"]["bytes_to_worker"] == [cost["bytes_to_worker"]]
        assert c["measured_all_steps"]["bytes_from_worker"] == [cost["bytes_from_worker"]]
        steps_run = c["warmup_steps"] + c["timed_steps"]
        if c["mode"] == "infer":  # nothing else crossed: the session's own totals agree too
            assert c["ledger"]["bytes_to_worker"] == steps_run * cost["bytes_to_worker"] + cost["setup_bytes_to_worker"]
            assert c["ledger"]["bytes_from_worker"] == steps_run * cost["bytes_from_worker"]
        else:
            assert c["ledger"]["bytes_to_worker"] >= steps_run * cost["bytes_to_worker"]
            assert c["test_accuracy"] is not None and 0 <= c["test_accuracy"] <= 1
        if c["protocol"] in ("bench-clear", "bench-infer"):
            assert c["measured"]["messages"] == cost["round_trips"] > 0
            assert c["enclave_seconds_by_category"]["masking"] > 0
        if c["protocol"] == "enclave":
            assert c["measured"]["bytes_to_worker"] == 0 and c["offload_ratio"] == pytest.approx(1.0)
        if c["protocol"] == "plain":
            assert c["speed_vs_plain"] == pytest.approx(1.0)
        assert c["offload_ratio"] is not None and c["speed_vs_plain"] is not None
        for profile in results["profiles"]:
            projected = c["projections"][profile]
            assert projected["step_seconds"] > 0 and "projection" in projected["label"]
    # the clear offload is exact: it trains like plain on the same seed and batches
    for model in models:
        assert by[("bench-clear", model, "train")]["accuracy_vs_plain"] == pytest.approx(0.0, abs=0.05)

    # the report: tables per model, theory table, caveats, generated ordering check
    report = (out / "report.md").read_text()
    for model in models:
        assert f"### {model}" in report
    for heading in ("## Caveats", "## Protocols compared (theory)", "## Does the cost model order",
                    "CPU timings are not GPU timings", "projection"):
        assert heading in report
    for name in plots.PLOTS:
        assert f"]({name})" in report
    assert results["ordering"]
    for group in results["ordering"]:
        assert group["agree"] == (not group["inversions"])
        assert all(inv["explanation"] for inv in group["inversions"])
    assert "bytes measured = modelled in every cell with a cost model: yes" in output


def test_plan_and_selection():
    load_all()
    preset = presets.select(presets.QUICK, models="mlp,lenet", batch_sizes="4,8", steps=3)
    assert [m.label for m in preset.models] == ["mlp-256", "mlp-1024", "mlp-4096", "lenet"]
    assert all(m.batch_sizes == (4, 8) for m in preset.models) and preset.steps == 3
    assert [m.label for m in presets.select(presets.QUICK, models="mlp-512").models] == ["mlp-512"]
    cells = harness.plan(presets.select(presets.TINY, models="mlp-16"), ["plain", "enclave"])
    assert [(c["protocol"], c["mode"]) for c in cells] == [("plain", "train"), ("enclave", "train")]
    assert {m.model for m in presets.FULL.models} >= {"mlp", "lenet", "resnet18", "resnet50", "vit-tiny"}


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "unknown preset"),
    (["--protocols", "nope"], "unknown protocol"),
    (["--models", "alexnet"], "unknown bench model"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--batch-sizes", "x"], "--batch-sizes"),
    (["--steps", "0"], "--steps"),
    (["--device", "tpu"], "unknown device"),
    (["--profile", "abacus"], "--profile"),
])
def test_bad_input_exits_2(tmp_path, args, message):
    out = tmp_path / "never"
    preset = [] if "--preset" in args else ["--preset", "tiny"]
    result = CliRunner().invoke(main, ["bench", *preset, *args, "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_failed_cell_does_not_stop_the_run(test_protocols):
    preset = presets.select(presets.TINY, models="mlp-16", steps=1)
    results = harness.run(preset, ["enclave", "bench-broken"], device="cpu", progress=False)
    status = {c["protocol"]: c["status"] for c in results["cells"]}
    assert status == {"enclave": "ok", "bench-broken": "failed"}
    assert math.isfinite(results["cells"][0]["steps_per_second"]["median"])


def test_outputs_written_even_when_every_cell_fails(tmp_path, test_protocols):
    from blindtrain.bench import report

    preset = presets.select(presets.TINY, models="mlp-16,vit-micro", steps=1)
    results = harness.run(preset, ["bench-broken"], device="cpu", progress=False)
    assert all(c["status"] == "failed" for c in results["cells"])
    report.write(results, tmp_path, command=["blindtrain", "bench"])
    assert (tmp_path / "results.json").is_file() and (tmp_path / "report.md").is_file()
    assert all((tmp_path / name).is_file() for name in plots.PLOTS)
    assert "out of memory" in (tmp_path / "report.md").read_text()
