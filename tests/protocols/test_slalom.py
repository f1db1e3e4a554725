"""``slalom``: private, verified inference; accuracy gap, sealed factors, integrity via the CLI."""

import copy

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from blindtrain import Session
from blindtrain.cli import main
from blindtrain.errors import IntegrityError, UsageError
from blindtrain.models import build
from blindtrain.train import TrainConfig, run_predict, run_training
from blindtrain.transcript import load as load_transcript


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("slalom")
    keystore = str(out / "key")
    paths = {}
    for model, steps in (("mlp", 69), ("lenet", 120)):  # mlp: 3 epochs of digits
        paths[model] = str(out / f"{model}.ckpt")
        run_training(TrainConfig(protocol="enclave", model=model, steps=steps, device="cpu", progress=False,
                                 checkpoint=paths[model], keystore=keystore), echo=lambda *a: None)
    return paths, keystore


@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_accuracy_within_quantization_error_of_float(checkpoints, model):
    paths, keystore = checkpoints
    plain = run_predict(checkpoint=paths[model], protocol="enclave", keystore=keystore, device="cpu")
    slalom = run_predict(checkpoint=paths[model], protocol="slalom", keystore=keystore, device="cpu",
                         batch_size=128)
    assert plain["test_accuracy"] > 0.5
    assert abs(plain["test_accuracy"] - slalom["test_accuracy"]) <= 0.01
    summary = slalom["protocol_summary"]
    assert slalom["integrity_checks"] == summary["offloaded_ops"] == summary["unmask_factors_consumed"] > 0
    assert summary["pads_all_distinct"] and summary["unmask_factors_sealed"] >= summary["unmask_factors_consumed"]
    assert slalom["integrity_soundness_bits"] >= 40


def _lenet_session(tmp_path=None, transcript=False, **options):
    torch.manual_seed(0)
    model = build("lenet", (1, 8, 8), 10).eval()
    ref = copy.deepcopy(model)
    session = Session(protocol="slalom", device="cpu", enclave_key=bytes(32), transcript=transcript,
                      store_dir=str(tmp_path) if tmp_path else None, **options)
    wrapped, _ = session.prepare(model)
    return session, wrapped, ref


def test_logits_close_to_float_and_factors_refilled(tmp_path):
    session, wrapped, ref = _lenet_session(precompute=2, transcript=True)
    with torch.no_grad():
        for _ in range(5):  # more batches than one offline phase precomputes
            x = torch.randn(8, 1, 8, 8)
            torch.testing.assert_close(wrapped(x), ref(x), atol=1e-3, rtol=1e-3)  # 16-bit weights, 61-bit field
        wrapped(torch.randn(3, 1, 8, 8))  # a smaller batch is zero-padded to the pool's shape
    summary = session.protocol.summary()
    assert summary["unmask_factors_consumed"] == 6 * 5  # five offloaded layers
    assert summary["inference_batches"] == 6 and session.step == 5
    assert summary["weight_upload_bytes"] == 2 * sum(p.numel() for n, p in ref.named_parameters() if "weight" in n)
    session.save_transcripts(tmp_path / "t.npz")
    meta, arrays = load_transcript(tmp_path / "t.npz")
    assert {m["kind"] for m in meta} == {"masked", "public"}
    assert sum(m["kind"] == "public" for m in meta) == 5  # the model crosses once
    assert sum(m["kind"] == "masked" for m in meta) == 30
    session.close()


def test_tampered_sealed_factor_is_an_integrity_violation(tmp_path):
    session, wrapped, _ = _lenet_session(tmp_path)
    with torch.no_grad():
        wrapped(torch.randn(4, 1, 8, 8))
        for blob in tmp_path.glob("*.bin"):  # the untrusted host flips a bit in every stored factor
            data = bytearray(blob.read_bytes())
            data[-1] ^= 1
            blob.write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match="authentication"):
            wrapped(torch.randn(4, 1, 8, 8))
    session.close()


def test_cannot_train():
    session, wrapped, _ = _lenet_session()
    with pytest.raises(UsageError, match="inference"):
        Session(protocol="slalom").prepare(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1))
    session.close()
    result = CliRunner().invoke(main, ["train", "--protocol", "slalom", "--steps", "1", "--quiet"])
    assert result.exit_code == 2 and "inference" in result.output and "predict --protocol slalom" in result.output


# (the cost model against the ledger and every adversary: tests/conformance, over every protocol)
