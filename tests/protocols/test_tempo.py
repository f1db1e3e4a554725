"""tempo end to end: loss curves vs plain, resident SGD, rotation, transcript, adversaries, read-out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import blindtrain as bt
from blindtrain.cli import main
from blindtrain.models import build
from blindtrain.kernels import gather, native
from tests.protocols.conftest import max_relative


def _curve(protocol, model_name, dataset, *, steps=20, batch=32, lr=0.05, model_kwargs=None, optimizer="sgd",
           transcript=False, **options):
    torch.manual_seed(0)
    model = build(model_name, dataset.input_shape, dataset.num_classes, **(model_kwargs or {}))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    session = bt.Session(protocol=protocol, enclave_key=bytes(32), seed=None, device="cpu",
                         transcript=transcript, **options)
    model, opt = session.prepare(model, opt)
    model.train()
    losses, batches = [], []
    for index, (x, y) in enumerate(dataset.batches(batch_size=batch, epoch=0, seed=0)):
        if index == steps:
            break
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        batches.append(x)
    return losses, session, model, batches


def test_mlp_digits_loss_curve_matches_plain(digits):
    plain, s1, _, _ = _curve("plain", "mlp", digits)
    tempo, s2, _, _ = _curve("tempo", "mlp", digits)
    s1.close()
    metrics = s2.metrics()
    s2.close()
    assert max_relative(tempo, plain) <= 1e-4
    assert metrics["integrity_failures"] == 0
    assert metrics["weight_encryptions"] == 3  # 3 layers, one key epoch (default rotation: 100 steps)


def test_mlp_trains_alike_without_the_native_pass(digits, monkeypatch):
    """Without a C compiler the fused encode / decode pass falls back to PyTorch ops: same curve, same checks."""
    fused, s1, _, _ = _curve("tempo", "mlp", digits, steps=6)
    fused_pass = s1.protocol.summary()["encode_decode_pass"]
    monkeypatch.setattr(gather, "_LIB", [None])  # as if the native build had failed
    monkeypatch.setattr(gather, "_native", lambda *args: pytest.fail("the native pass ran"))
    fallback, s2, _, _ = _curve("tempo", "mlp", digits, steps=6)
    checks = s2.metrics()["integrity_checks"]
    failures = s2.metrics()["integrity_failures"]
    fallback_pass = s2.protocol.summary()["encode_decode_pass"]
    s1.close(), s2.close()
    assert fused_pass.startswith("native" if native._compiler() else "torch") and fallback_pass.startswith("torch")
    assert max_relative(fallback, fused) <= 1e-5
    assert checks > 0 and failures == 0


def test_batch_keys_are_fresh_on_every_call(digits):
    """A step's batch keys are drawn in batches and handed out once each: more calls than a batch holds
    still give distinct permutations and scales (16! and 9^16 values: a repeat would be a reused key)."""
    _, session, _, _ = _curve("tempo", "mlp", digits, steps=1)
    protocol = session.protocol
    keys = [protocol._batch_key(16) for _ in range(3 * len(protocol.layers) + 1)]
    assert len({tuple(p.tolist()) for p, _ in keys}) == len(keys)
    assert len({tuple(c.tolist()) for _, c in keys}) == len(keys)
    assert all(sorted(p.tolist()) == list(range(16)) for p, _ in keys)
    assert {float(v) for _, c in keys for v in c} <= {2.0 ** e for e in range(-4, 5)}
    session.close()


@pytest.mark.slow
def test_lenet_synthetic_loss_curve_matches_plain(synthetic):
    plain, s1, _, _ = _curve("plain", "lenet", synthetic, batch=16, lr=0.02)
    tempo, s2, _, _ = _curve("tempo", "lenet", synthetic, batch=16, lr=0.02)
    s1.close(), s2.close()
    assert max_relative(tempo, plain) <= 1e-4


@pytest.mark.slow
def test_small_vit_synthetic_loss_curve_matches_plain(synthetic):
    # vit-tiny's architecture at a test size: depth 2, dim 32, 2 heads (patch 4 on 32×32: 65 tokens)
    kwargs = {"depth": 2, "dim": 32, "heads": 2}
    plain, s1, _, _ = _curve("plain", "vit-tiny", synthetic, batch=8, lr=0.02, model_kwargs=kwargs)
    tempo, s2, _, _ = _curve("tempo", "vit-tiny", synthetic, batch=8, lr=0.02, model_kwargs=kwargs,
                             transcript=True)
    metrics = s2.metrics()
    path = "/tmp/_tempo_vit_transcript.npz"
    s2.save_transcripts(path)
    s1.close(), s2.close()
    assert max_relative(tempo, plain) <= 1e-4
    assert metrics["integrity_failures"] == 0
    meta = json.loads(str(np.load(path)["meta"]))
    offloaded = {(m["layer"].split(".")[-1], m["op"]) for m in meta}
    for product in ("scores", "mix"):  # the attention products run on the worker, all three ops
        assert {(product, "forward"), (product, "grad_input"), (product, "grad_weight")} <= offloaded


def test_adam_runs_enclave_side_and_matches_plain(digits):
    plain, s1, _, _ = _curve("plain", "mlp", digits, steps=8, optimizer="adam")
    tempo, s2, _, _ = _curve("tempo", "mlp", digits, steps=8, optimizer="adam")
    metrics = s2.metrics()
    s1.close(), s2.close()
    assert max_relative(tempo, plain) <= 1e-4
    assert metrics["weight_encryptions"] == 3 * 8  # enclave-side update: re-encrypted every step
    assert "enclave" in metrics["protocol_summary"]["optimizer_update"]


def test_rotation_reencrypts_once_per_key_epoch_and_materialize_gives_plain_weights(digits):
    torch.manual_seed(0)
    reference = build("mlp", digits.input_shape, digits.num_classes)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    for index, (x, y) in enumerate(digits.batches(batch_size=32, epoch=0, seed=0)):
        if index == 12:
            break
        ref_opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        ref_opt.step()
    torch.manual_seed(0)
    model = build("mlp", digits.input_shape, digits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    with bt.Session(protocol="tempo", enclave_key=bytes(32), seed=None, device="cpu", rotate_every=5) as session:
        wrapped, opt = session.prepare(model, opt)
        for index, (x, y) in enumerate(digits.batches(batch_size=32, epoch=0, seed=0)):
            if index == 12:
                break
            opt.zero_grad()
            F.cross_entropy(wrapped(x), y).backward()
            opt.step()
        # between rotations the enclave holds no plaintext weight
        assert all(layer.param.numel() == 0 for layer in session.protocol.layers.values())
        metrics = session.metrics()
        assert metrics["weight_encryptions"] == 3 * 3  # epochs starting at steps 0, 5, 10
        plain = session.plaintext_model()
        for (name, p), (_, q) in zip(plain.named_parameters(), reference.named_parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
        for p, q in zip(reference.parameters(), plain.parameters()):
            if p.dim() == 2:
                torch.testing.assert_close(opt.state[q]["momentum_buffer"], ref_opt.state[p]["momentum_buffer"],
                                           rtol=1e-4, atol=1e-5)


def test_transcript_never_holds_weights_or_inputs_in_the_clear(digits):
    losses, session, model, batches = _curve("tempo", "mlp", digits, steps=6, transcript=True, rotate_every=3)
    session.protocol.materialize()
    plaintexts = [x.reshape(x.shape[0], -1) for x in batches]
    plaintexts += [p.detach() for p in model.parameters() if p.dim() == 2]
    path = "/tmp/_tempo_transcript_test.npz"
    session.save_transcripts(path)
    session.close()
    archive = np.load(path)
    meta = json.loads(str(archive["meta"]))
    clear = [m for m in meta if m["kind"] != "obfuscated"]
    # in the clear only the rank-one factors that rescale G₁ into G₂ on the worker: 1-D powers of two
    assert meta and clear and all(m["kind"] == "public" and m["op"] == "backward"
                                  and m["operand"].startswith(("rows", "cols")) for m in clear)
    for m in clear:
        factor = archive[m["key"]]
        assert factor.ndim == 1 and np.all(np.exp2(np.round(np.log2(factor))) == factor)
    for entry in meta:
        sent = torch.from_numpy(archive[entry["key"]])
        for plain in plaintexts:
            if plain.shape == sent.shape:
                assert not torch.allclose(sent, plain, rtol=1e-3, atol=1e-6), entry
                assert not torch.allclose(sent.abs(), plain.abs(), rtol=1e-3, atol=1e-6), entry
    # weights cross once per key epoch and layer (6 steps, rotation every 3: epochs at 0 and 3)
    encrypt = [m for m in meta if m["op"] == "encrypt"]
    assert len({(m["layer"], m["step"]) for m in encrypt}) == 3 * 2


# every result adversary on every layer kind and op: tests/conformance; here what only tempo has (a tampered
# resident update found at the next check, and corrupted worker-held weights)
@pytest.mark.parametrize("adversary", ["tamper:op=grad_weight,step=2", "tamper:target=state,step=2",
                                       "noise:target=state,step=3", "zeros:target=state,step=2,layer=3"])
def test_adversaries_are_caught_with_exit_3(adversary, tmp_path):
    runner = CliRunner()
    metrics = tmp_path / "m.json"
    result = runner.invoke(main, ["train", "--protocol", "tempo", "--steps", "4", "--quiet", "--device", "cpu",
                                  "--adversary", adversary, "--metrics", str(metrics)])
    assert result.exit_code == 3, result.output
    assert "integrity violation" in result.output


def test_honest_run_passes_and_reports_privacy_and_detection(tmp_path):
    runner = CliRunner()
    metrics = tmp_path / "m.json"
    result = runner.invoke(main, ["train", "--steps", "3", "--quiet", "--device", "cpu", "--metrics", str(metrics)])
    assert result.exit_code == 0, result.output
    data = json.loads(metrics.read_text())
    assert data["protocol"] == "tempo"  # the default protocol
    summary = data["protocol_summary"]
    assert summary["privacy"]["1"]["key_entropy_bits"] > 100
    assert data["integrity_soundness_bits"] > 0 and data["integrity_failures"] == 0


@pytest.mark.slow
def test_resnet50_runs_a_training_step(synthetic):
    losses, session, _, _ = _curve("tempo", "resnet50", synthetic, steps=1, batch=2, lr=0.01)
    metrics = session.metrics()
    session.close()
    assert np.isfinite(losses[0]) and metrics["integrity_failures"] == 0
    assert metrics["weight_encryptions"] == 54  # 53 convs (incl. 4 projection shortcuts) + the classifier


@pytest.mark.parametrize("model_name,dataset_name", [("mlp", "digits"), ("lenet", "synthetic")])
def test_fused_activations_match_plain_and_run_on_the_worker(model_name, dataset_name, digits, synthetic):
    dataset = digits if model_name == "mlp" else synthetic
    plain, s1, _, _ = _curve("plain", model_name, dataset, steps=6, batch=16, lr=0.02)
    fused, s2, model, _ = _curve("tempo", model_name, dataset, steps=6, batch=16, lr=0.02, transcript=True,
                                 fuse_activations=True)
    metrics = s2.metrics()
    path = "/tmp/_tempo_fused_transcript.npz"
    s2.save_transcripts(path)
    s1.close(), s2.close()
    assert max_relative(fused, plain) <= 1e-4
    assert metrics["integrity_failures"] == 0
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d)) for m in model.modules())
    assert set(model.state_dict()) == set(build(model_name, dataset.input_shape, dataset.num_classes).state_dict())


@pytest.mark.parametrize("workers,model_name", [(2, "lenet")])  # one worker: tests/conformance
def test_cost_model_equals_the_ledger_in_steady_state(workers, model_name, digits, synthetic):
    import math

    from blindtrain.costs import trace_ops

    dataset = digits if model_name == "mlp" else synthetic
    torch.manual_seed(0)
    model = build(model_name, dataset.input_shape, dataset.num_classes)
    ops = trace_ops(model, dataset.input_shape, batch=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with bt.Session(protocol="tempo", device="cpu", workers=workers, seed=None) as session:
        model, opt = session.prepare(model, opt)
        batches = dataset.batches(batch_size=8, epoch=0, seed=0)
        for index in range(3):
            x, y = next(batches)
            if index == 2:
                ledger = session.ledger
                before = (ledger.bytes_to_worker, ledger.bytes_from_worker, ledger.messages)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        cost = session.protocol.cost_model(ops, batch=8, input_numel=math.prod(dataset.input_shape),
                                           classes=dataset.num_classes)
        measured = (ledger.bytes_to_worker - before[0], ledger.bytes_from_worker - before[1],
                    ledger.messages - before[2])
    assert (cost.bytes_to_worker, cost.bytes_from_worker, cost.round_trips) == measured


@pytest.mark.parametrize("model_name", ["lenet", "mlp"])
@pytest.mark.parametrize("data", ["signed", "relu", "positive"])
def test_weight_gradient_projections_and_abs_bounds_against_the_plain_gradient(model_name, data, synthetic):
    """What the enclave tracks instead of ΔW = dYᵀX: its projections ΔWᵀρ, ΔWσ equal the plain ones, and the
    abs bounds hold (conv: per tap, the max over the wide channel), with X signed or X ≥ 0 (after a ReLU).
    "positive": X, dY ≥ 0 and the input channels scaled 1..100, so that nothing cancels and the bounds are
    within a small factor of the true values (a bound that missed the largest channel would fail)."""
    _, session, _, _ = _curve("tempo", model_name, synthetic, steps=1, batch=8)
    protocol = session.protocol
    generator = torch.Generator().manual_seed(1)
    for layer in protocol.layers.values():
        shape = layer.site.weight_shape
        if layer.conv:
            x = torch.randn(8, layer.n, 12, 12, generator=generator)
            gy = torch.randn(F.conv2d(x, torch.zeros(shape), **layer.site.conv_params).shape, generator=generator)
        else:
            x, gy = torch.randn(8, layer.n, generator=generator), torch.randn(8, layer.m, generator=generator)
        if data == "relu":
            x = x.relu()
        elif data == "positive":
            scales = torch.logspace(0, 2, layer.n)[torch.randperm(layer.n, generator=generator)]
            x, gy = x.abs() * scales.view(1, -1, *[1] * (x.dim() - 2)), gy.abs()
        protocol._encode_forward(layer, x, *protocol._batch_key(x.shape[0]))
        protocol._encode_grad_input(layer, gy, x.shape)
        got = protocol._grad_projections(layer, x, gy)
        if layer.conv:
            dw = torch.nn.grad.conv2d_weight(x.double(), shape, gy.double(), **layer.site.conv_params)
        else:
            dw = gy.double().t() @ x.double()
        t = layer.t
        for d, proj, vec in (("q", protocol._proj_q, t["rho"]), ("v", protocol._proj_v, t["sigma"])):
            want = proj(layer, dw, vec.double())
            assert torch.allclose(got[d], want, rtol=1e-4, atol=1e-4 * float(want.abs().max())), (layer.site.name, d)
            bound = protocol._reduce(layer, d, proj(layer, dw.abs(), vec.abs().double()))
            assert bool((got[d + "a"] >= bound * (1 - 1e-5)).all()), (layer.site.name, d)
    session.close()


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_tolerance_holds_for_same_sign_operands_the_worst_honest_case(kind):
    """The tolerance is a bound, not a fit to typical data: inputs ≥ 0 and weights > 0 (partial sums grow
    linearly: the largest honest rounding errors), a long inner dimension — an honest worker still passes
    every check, and the summary reports how much of the tolerance it used (headroom > 1)."""
    torch.manual_seed(0)
    if kind == "linear":
        model = torch.nn.Sequential(torch.nn.Linear(4096, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        x = torch.rand(32, 4096)
    else:
        model = torch.nn.Sequential(torch.nn.Conv2d(256, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(16 * 8 * 8, 10))
        x = torch.rand(8, 256, 8, 8)
    with torch.no_grad():
        for module in model:
            if hasattr(module, "weight"):
                module.weight.uniform_(0.5, 1.0)
    y = torch.randint(0, 10, (x.shape[0],))
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    with bt.Session(protocol="tempo", device="cpu", seed=None, rotate_every=2) as session:
        wrapped, opt = session.prepare(model, opt)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(wrapped(x), y).backward()
            opt.step()
        metrics = session.metrics()
    tolerance = metrics["protocol_summary"]["tolerance"]
    assert metrics["integrity_failures"] == 0 and metrics["integrity_checks"] > 0
    assert tolerance["headroom"] > 1 and {"forward", "grad_input", "held"} <= set(tolerance["per_check"])


def test_headroom_is_in_the_metrics_of_every_run(tmp_path):
    metrics = tmp_path / "m.json"
    result = CliRunner().invoke(main, ["train", "--steps", "2", "--quiet", "--device", "cpu", "--metrics",
                                       str(metrics)])
    assert result.exit_code == 0, result.output
    tolerance = json.loads(metrics.read_text())["protocol_summary"]["tolerance"]
    assert 0 < tolerance["max_used_fraction"] < 1 and tolerance["headroom"] == 1 / tolerance["max_used_fraction"]
