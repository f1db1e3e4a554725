"""``otp``: oracle tests against plain PyTorch, training accuracy, transcript privacy, integrity via the CLI."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats
from torch import nn

from blindtrain import Session
from blindtrain import data as datasets
from blindtrain.cli import main
from blindtrain.errors import UsageError
from blindtrain.field import codec
from blindtrain.models import build
from blindtrain.train import TrainConfig, run_training
from blindtrain.transcript import load as load_transcript

P = codec.DEFAULT_MODULUS


def _oracle(layer: nn.Module, x_shape, unmask: str):
    torch.manual_seed(0)
    ref = copy.deepcopy(layer)
    session = Session(protocol="otp", device="cpu", enclave_key=bytes(32), unmask=unmask)
    model, _ = session.prepare(nn.Sequential(layer))
    x = torch.randn(x_shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = model(x), ref(x_ref)
    g = torch.randn(y.shape)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    exps = session.protocol.exponents
    session.close()
    return x, x_ref, y, y_ref, g, ref, exps


@pytest.mark.parametrize("unmask", ["enclave", "mask-worker"])
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_oracle_forward_and_both_gradients(kind, unmask):
    torch.manual_seed(1)
    if kind == "linear":
        layer, x_shape = nn.Linear(40, 24), (16, 40)
    else:
        layer, x_shape = nn.Conv2d(3, 8, 3, stride=2, padding=1), (4, 3, 9, 9)
    x, x_ref, y, y_ref, g, ref, exps = _oracle(layer, x_shape, unmask)
    w = ref.weight.detach().double()
    la, lb = exps["0.forward"]
    if kind == "linear":
        fwd = codec.error_bound("matmul", x_ref.detach(), w.t(), 0.5 * 2.0**-la, 0.5 * 2.0**-lb, {})
    else:
        params = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1)}
        fwd = codec.error_bound("conv2d", x_ref.detach(), w, 0.5 * 2.0**-la, 0.5 * 2.0**-lb, params)
    err = (y.detach().double() - y_ref.detach().double()).abs()
    assert bool((err <= fwd + 1e-5).all()), float((err - fwd).max())
    assert float(err.max()) > 0  # it really went through the field
    # input gradient: dY stochastically rounded (error < 2^-la), weights rounded to nearest
    la, lb = exps["0.grad_input"]
    if kind == "linear":
        bwd = codec.error_bound("matmul", g, w, 2.0**-la, 0.5 * 2.0**-lb, {})
    else:
        bwd = codec.error_bound("conv2d_input", g, w, 2.0**-la, 0.5 * 2.0**-lb,
                                {**params, "input_size": tuple(x_shape)})
    err = (x.grad.double() - x_ref.grad.double()).abs()
    assert bool((err <= bwd + 1e-5).all())
    # weight gradient: a both-private product, computed in the enclave in float32
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad)


def test_mask_worker_results_are_verified_too():
    from blindtrain.errors import IntegrityError
    from blindtrain.worker.adversaries import Adversary, AdversarySpec

    session = Session(protocol="otp", device="cpu", unmask="mask-worker")
    model, _ = session.prepare(nn.Sequential(nn.Linear(8, 4)))
    model(torch.randn(2, 8))  # starts the mask worker
    session.boundary.transport("mask", 0).worker.adversary = Adversary(AdversarySpec("tamper", step=0),
                                                                       in_process=True)
    with pytest.raises(IntegrityError, match="mask worker"):
        model(torch.randn(2, 8))
    session.close()


def test_non_finite_values_fail_clearly():
    from blindtrain.errors import BlindtrainError

    session = Session(protocol="otp", device="cpu")
    model, _ = session.prepare(nn.Sequential(nn.Linear(8, 4)))
    with pytest.raises(BlindtrainError, match="non-finite"):
        model(torch.full((2, 8), float("nan")))
    session.close()


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="unmask"):
        Session(protocol="otp", unmask="cloud")
    with pytest.raises(UsageError, match="prime"):
        Session(protocol="otp", modulus=2**24 - 2)


def _accuracy(protocol, activation, lr, epochs=3, **options):
    metrics = run_training(TrainConfig(protocol=protocol, activation=activation, epochs=epochs, lr=lr, seed=0,
                                       device="cpu", progress=False, protocol_options=options),
                           echo=lambda *a: None)
    return metrics["test_accuracy"]


def test_mlp_relu_trains_like_plain():
    """Acceptance: 3 epochs of mlp on digits within 3 points of plain (the other activations: slow tests)."""
    plain, otp = _accuracy("plain", "relu", 0.05), _accuracy("otp", "relu", 0.05)
    assert plain > 0.85
    assert abs(plain - otp) <= 0.03


@pytest.mark.slow
@pytest.mark.parametrize("activation,lr", [("sigmoid", 0.5), ("arctan", 0.05), ("softplus", 0.05)])
def test_mlp_every_activation_trains_like_plain(activation, lr):
    plain, otp = _accuracy("plain", activation, lr), _accuracy("otp", activation, lr)
    assert plain > 0.6
    assert abs(plain - otp) <= 0.03


def test_mask_worker_mode_trains():
    assert _accuracy("otp", "relu", 0.05, epochs=1, unmask="mask-worker") > 0.6


# -- the transcript ----------------------------------------------------------------------------

def _chi_square(values, p=P, bins=256):
    values = np.asarray(values, dtype=np.int64).ravel()
    edges = np.array([i * p // bins for i in range(bins + 1)], dtype=np.int64)  # no int64 overflow for p ~ 2^61
    observed = np.bincount(np.searchsorted(edges, values, side="right") - 1, minlength=bins)[:bins]
    return float(stats.chisquare(observed, np.diff(edges).astype(np.float64) / p * values.size).pvalue)


@pytest.fixture(scope="module")
def otp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("otp")
    metrics = run_training(TrainConfig(protocol="otp", steps=6, batch_size=64, device="cpu", progress=False,
                                       transcript=str(out / "run.npz"), metrics=str(out / "m.json"),
                                       protocol_options={"unmask": "mask-worker"}), echo=lambda *a: None)
    return out, metrics


def test_transcript_masked_tensors_are_uniform_and_uncorrelated(otp_run):
    out, metrics = otp_run
    meta, arrays = load_transcript(out / "run.npz")
    assert {m["kind"] for m in meta} == {"masked", "public"}
    masked = [m for m in meta if m["kind"] == "masked"]
    assert all(m["modulus"] == P and m["operand"] == "A" for m in masked)
    values = np.concatenate([arrays[m["key"]].ravel() for m in masked])
    assert values.min() >= 0 and values.max() < P and np.all(values == np.floor(values))
    assert _chi_square(values) > 1e-4
    # the first layer's masked input against the plaintext training batch it hides
    data = datasets.load("digits", seed=0)
    batches = list(data.batches(batch_size=64, epoch=0, seed=0))
    checked = 0
    for m in masked:
        if m["layer"] == "1" and m["op"] == "forward" and m["step"] < 6:
            x = batches[m["step"]][0].reshape(64, -1).numpy().ravel()
            r = stats.pearsonr(arrays[m["key"]].ravel(), x).statistic
            assert abs(r) < 5 / math.sqrt(x.size)
            assert _chi_square(arrays[m["key"]], bins=16) > 1e-5
            checked += 1
    assert checked == 6
    # no two masked messages are equal, and every pad was fresh
    summary = metrics["protocol_summary"]
    assert summary["pads_drawn"] == len(masked) and summary["pads_all_distinct"]
    assert len({arrays[m["key"]].tobytes() for m in masked}) == len(masked)


def test_mask_worker_sees_only_pads_and_weights(otp_run):
    out, _ = otp_run
    meta, arrays = load_transcript(out / "run.mask.npz")
    main_meta, main_arrays = load_transcript(out / "run.npz")
    assert {m["kind"] for m in meta} == {"pad", "public"}
    pads = [arrays[m["key"]] for m in meta if m["kind"] == "pad"]
    assert len(pads) == sum(m["kind"] == "masked" for m in main_meta)
    assert _chi_square(np.concatenate([p.ravel() for p in pads])) > 1e-4
    masked = {main_arrays[m["key"]].tobytes() for m in main_meta if m["kind"] == "masked"}
    assert not any(p.tobytes() in masked for p in pads)


def test_metrics_split_enclave_time(tmp_path):
    metrics = run_training(TrainConfig(protocol="otp", model="lenet", steps=2, device="cpu", progress=False,
                                       metrics=str(tmp_path / "m.json")), echo=lambda *a: None)
    split = json.loads((tmp_path / "m.json").read_text())["enclave_seconds_by_category"]
    for category in ("masking", "unmask_factor", "both_private", "decode_verify", "encode"):
        assert split[category] > 0, category
    assert {"nonlinear", "other"} <= set(split)
    assert metrics["integrity_soundness_bits"] >= 40
    assert metrics["integrity_checks"] == metrics["protocol_summary"]["offloaded_ops"] > 0
    assert metrics["protocol_summary"]["both_private_ops_in_enclave"] > 0


def test_protocols_table_states_the_leak():
    out = CliRunner().invoke(main, ["protocols"]).output
    block = out[out.index("otp "):]
    assert "sees every weight" in block and "gradients can leak the training data" in block


# (the cost model against the ledger and every adversary: tests/conformance, over every protocol)


def test_constant_digits_pixels_are_masked_like_the_rest(otp_run):
    """Pixels that are the same in every digits image (blank corners) reach the worker as x̃ + r with a
    fresh pad each time: their masked values are uniform in F_p and spread like every other pixel's."""
    out, _ = otp_run
    meta, arrays = load_transcript(out / "run.npz")
    data = datasets.load("digits", seed=0)
    constant = (data.x_train.reshape(len(data.x_train), -1).std(0) == 0).nonzero().flatten().numpy()
    assert len(constant) >= 3  # digits has blank pixels
    first = [arrays[m["key"]].reshape(-1, 64) for m in meta  # training and evaluation batches
             if m["kind"] == "masked" and m["layer"] == "1" and m["op"] == "forward"]
    stacked = np.concatenate(first)
    blank = stacked[:, constant].ravel()
    others = np.delete(stacked, constant, axis=1).ravel()
    assert _chi_square(blank, bins=16) > 1e-4
    assert stats.ks_2samp(blank / P, others / P).pvalue > 1e-3
    assert abs(blank.std() / (P / math.sqrt(12)) - 1) < 0.05


def test_summary_reports_bits_engine_and_wire(otp_run):
    out, metrics = otp_run
    summary = metrics["protocol_summary"]
    assert summary["modulus"] == P == 2**61 - 1 and summary["modulus_bits"] == 61
    assert summary["wire_dtypes"] == {"field_elements": "int64", "weights": "int32"}  # 24-bit weights
    bits = summary["operand_bits"]
    assert set(bits) == {"1.forward", "3.forward", "5.forward", "3.grad_input", "5.grad_input"}
    for name, used in bits.items():
        assert used["B"] <= 24 and used["A"] >= 25, (name, used)  # weights capped; activations take the rest
    engine = summary["field_engine"]
    ran = {b for per_fn in engine["worker_backends"].values() for b in per_fn}
    assert ran <= {"int8", "float64"} and ran
    meta, arrays = load_transcript(out / "run.npz")
    assert {m["dtype"] for m in meta if m["kind"] == "masked"} == {"int64"}
    assert {m["dtype"] for m in meta if m["kind"] == "public"} == {"int32"}


def _adam_parameters(protocol: str, steps: int = 20, **options):
    torch.manual_seed(0)
    data = datasets.load("digits", seed=0)
    model = build("mlp", data.input_shape, data.num_classes)
    session = None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if protocol != "plain-torch":
        session = Session(protocol=protocol, device="cpu", enclave_key=bytes(32), **options)
        model, optimizer = session.prepare(model, optimizer)
    batches = data.batches(batch_size=64, epoch=0, seed=0)
    for _ in range(steps):
        x, y = next(batches)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    if session is not None:
        session.close()
    return params


def test_adam_parameters_within_1e3_of_plain():
    """Acceptance: otp with Adam on mlp/digits keeps every parameter tensor within 1e-3 relative
    (‖θ_otp − θ_plain‖ / ‖θ_plain‖, per tensor) of plain PyTorch's after 20 steps."""
    plain, otp = _adam_parameters("plain-torch"), _adam_parameters("otp")
    start = _adam_parameters("plain-torch", steps=0)
    for name, value in plain.items():
        moved = float((value - start[name]).norm())
        assert moved > 0, name  # training really moved it
        relative = float((otp[name] - value).norm() / value.norm())
        assert relative < 1e-3, (name, relative)
        assert float((otp[name] - value).norm()) < 0.05 * moved, name  # small against the training motion too


def test_modulus_option_and_flag(tmp_path):
    """--modulus trades precision for speed: a 31-bit prime runs on int32 field elements; bad values exit 2."""
    result = CliRunner().invoke(main, ["train", "--protocol", "otp", "--steps", "2", "--device", "cpu", "--quiet",
                                       "--modulus", str(2**31 - 1), "--transcript", str(tmp_path / "t.npz"),
                                       "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    meta, arrays = load_transcript(tmp_path / "t.npz")
    masked = [m for m in meta if m["kind"] == "masked"]
    assert masked and all(m["modulus"] == 2**31 - 1 and m["dtype"] == "int32" for m in masked)
    summary = json.loads((tmp_path / "m.json").read_text())["protocol_summary"]
    assert summary["modulus"] == 2**31 - 1
    assert max(bits["A"] for bits in summary["operand_bits"].values()) < 31
    bad = CliRunner().invoke(main, ["train", "--protocol", "otp", "--steps", "1", "--quiet", "--modulus", "1000"])
    assert bad.exit_code == 2 and "prime" in bad.output


@pytest.mark.parametrize("backend", ["int8", "float64"])
def test_each_backend_gives_the_same_training_step(backend):
    """The back-ends are exact: forcing either gives bit-identical results to auto."""
    torch.manual_seed(3)
    layer = nn.Linear(40, 24)
    x = torch.randn(16, 40)
    outs = {}
    for choice in ("auto", backend):
        session = Session(protocol="otp", device="cpu", enclave_key=bytes(32), field_backend=choice)
        model, _ = session.prepare(nn.Sequential(copy.deepcopy(layer)))
        outs[choice] = model(x).detach()
        if choice == backend:
            assert session.protocol.summary()["field_engine"]["worker_backends"] == {"matmul": {backend: 1}}
        session.close()
    assert torch.equal(outs["auto"], outs[backend])
