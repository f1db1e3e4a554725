"""``blindtrain export``: the plaintext state_dict of a sealed checkpoint loads into the model and predicts
as the checkpoint does; a tampered checkpoint or an unwritable output is exit 2 and writes nothing."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from blindtrain import checkpoint as ckpt
from blindtrain.cli import main
from blindtrain.crypto import KeyStore
from blindtrain.models import build


def _trained(tmp_path):
    keystore, checkpoint = tmp_path / "key", tmp_path / "run.ckpt"
    result = CliRunner().invoke(main, ["train", "--steps", "3", "--device", "cpu", "--quiet", "--checkpoint",
                                       str(checkpoint), "--keystore", str(keystore)])
    assert result.exit_code == 0, result.output
    return keystore, checkpoint


def test_export_writes_the_checkpoints_plaintext_weights(tmp_path):
    keystore, checkpoint = _trained(tmp_path)
    out = tmp_path / "model.pt"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out", str(out),
                                       "--keystore", str(keystore)])
    assert result.exit_code == 0, result.output
    assert "at step 3" in result.output
    exported = torch.load(out, weights_only=True)
    sealed = ckpt.load(checkpoint, keystore=KeyStore(str(keystore)))
    assert exported["step"] == 3 and exported["model_spec"]["model"] == "mlp"
    model = build("mlp", (1, 8, 8), 10)
    model.load_state_dict(exported["state_dict"])  # loads into an ordinary model
    for name, tensor in sealed["model_state"].items():
        assert torch.equal(exported["state_dict"][name], tensor.cpu()), name


def test_export_refuses_a_tampered_checkpoint_and_writes_nothing(tmp_path):
    keystore, checkpoint = _trained(tmp_path)
    data = bytearray(checkpoint.read_bytes())
    data[-20] ^= 1
    checkpoint.write_bytes(bytes(data))
    out = tmp_path / "model.pt"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out", str(out),
                                       "--keystore", str(keystore)])
    assert result.exit_code == 2 and not out.exists(), result.output


def test_export_to_an_unwritable_place_is_exit_2(tmp_path):
    keystore, checkpoint = _trained(tmp_path)
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint), "--out",
                                       str(tmp_path / "run.ckpt" / "model.pt"), "--keystore", str(keystore)])
    assert result.exit_code == 2 and "--out" in result.output, result.output
