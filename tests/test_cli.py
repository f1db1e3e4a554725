"""The CLI contract: defaults that learn, exit 2 on bad input with nothing written, exit 3 on a crash."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest


def test_default_train_reaches_90_percent_on_digits(cli, tmp_path):
    metrics_path = tmp_path / "m.json"
    result = cli("train", "--quiet", "--metrics", metrics_path)
    assert result.exit_code == 0, result.output
    assert "privacy [" in result.output and "test accuracy" in result.output
    metrics = json.loads(metrics_path.read_text())
    assert metrics["model"] == "mlp" and metrics["dataset"] == "digits"
    assert metrics["test_accuracy"] >= 0.90


def test_protocols_table_lists_the_baselines(cli):
    result = cli("protocols")
    assert result.exit_code == 0
    assert "plain" in result.output and "enclave" in result.output and "integrity" in result.output
    table = json.loads(cli("protocols", "--json").output)
    assert {"plain", "enclave"} <= {row["name"] for row in table}


BAD_INPUTS = {
    "unknown model": (["--model", "gpt5"], "unknown model"),
    "unknown dataset": (["--dataset", "mnist"], "unknown dataset"),
    "unknown protocol": (["--protocol", "magic"], "unknown protocol"),
    "unknown activation": (["--activation", "tanhh"], "unknown activation"),
    "zero batch size": (["--batch-size", "0"], "--batch-size must be positive"),
    "negative batch size": (["--batch-size", "-4"], "--batch-size must be positive"),
    "negative steps": (["--steps", "-1"], "--steps must be positive"),
    "negative lr": (["--lr", "-0.1"], "--lr must be positive"),
    "missing data dir": (["--dataset", "cifar10"], "--data-dir"),
    "unreadable data dir": (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "no CIFAR-10"),
    "bad adversary": (["--adversary", "evil"], "unknown adversary"),
    "bad hidden widths": (["--hidden", "64,0"], "positive widths"),
    "hidden for a convnet": (["--model", "lenet", "--hidden", "8"], "--hidden applies to --model mlp"),
    "unknown protocol option": (["--option", "frobnicate=1"], "--option frobnicate: no such option"),
    "unknown transport": (["--transport", "carrier-pigeon"], "unknown transport"),
    "plain in another process": (["--protocol", "plain", "--transport", "process"], "inproc"),
    "zero workers": (["--workers", "0"], "--workers"),
    "negative momentum": (["--momentum", "-5"], "--momentum must be a finite number >= 0"),
    "NaN momentum": (["--momentum", "nan"], "--momentum must be a finite number >= 0"),
    "NaN weight decay": (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
    "zero worker timeout": (["--worker-timeout", "0"], "--worker-timeout must be positive"),
    "NaN worker timeout": (["--worker-timeout", "nan"], "--worker-timeout must be positive"),
    "model too large for memory": (["--hidden", "1000000000"], "model too large"),
    "bad malformed form": (["--adversary", "malformed:form=teapot"], "form="),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(cli, tmp_path, case):
    args, expected = BAD_INPUTS[case]
    outputs = [tmp_path / "m.json", tmp_path / "t.npz", tmp_path / "c.ckpt"]
    result = cli("train", "--quiet", "--steps", "2", "--metrics", outputs[0], "--transcript", outputs[1],
                 "--checkpoint", outputs[2], *args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not any(p.exists() for p in outputs)
    assert all(p.name == "keystore" for p in tmp_path.iterdir())  # no temporary or partial files either


def test_checkpoint_resume_gives_the_straight_run(cli, tmp_path):
    straight, first, second = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    common = ["train", "--quiet", "--model", "lenet", "--batch-size", "32"]
    assert cli(*common, "--steps", "9", "--metrics", straight).exit_code == 0
    assert cli(*common, "--steps", "5", "--checkpoint", tmp_path / "ck", "--metrics", first).exit_code == 0
    assert cli(*common, "--steps", "4", "--resume", tmp_path / "ck", "--metrics", second).exit_code == 0
    full = json.loads(straight.read_text())["loss_curve"]
    resumed = json.loads(first.read_text())["loss_curve"] + json.loads(second.read_text())["loss_curve"]
    assert resumed == pytest.approx(full, rel=1e-6)
    assert json.loads(second.read_text())["global_step"] == 9


def test_resume_across_an_epoch_boundary(cli, tmp_path):
    # digits: 1437 training images, batch 500 -> 3 steps per epoch
    common = ["train", "--quiet", "--batch-size", "500"]
    assert cli(*common, "--steps", "5", "--metrics", tmp_path / "a.json").exit_code == 0
    assert cli(*common, "--steps", "2", "--checkpoint", tmp_path / "ck", "--metrics", tmp_path / "b.json").exit_code == 0
    assert cli(*common, "--steps", "3", "--resume", tmp_path / "ck", "--metrics", tmp_path / "c.json").exit_code == 0
    curve = lambda name: json.loads((tmp_path / name).read_text())["loss_curve"]  # noqa: E731
    assert curve("b.json") + curve("c.json") == pytest.approx(curve("a.json"), rel=1e-6)


def test_tampered_checkpoint_is_rejected_with_exit_2(cli, tmp_path):
    ckpt = tmp_path / "ck"
    assert cli("train", "--quiet", "--steps", "2", "--checkpoint", ckpt).exit_code == 0
    blob = bytearray(ckpt.read_bytes())
    blob[len(blob) // 3] ^= 0x20
    ckpt.write_bytes(bytes(blob))
    for args in (["train", "--quiet", "--steps", "1", "--resume", ckpt], ["predict", "--checkpoint", ckpt]):
        result = cli(*args)
        assert result.exit_code == 2 and "failed authentication" in result.output


def test_predict_reads_a_checkpoint_and_rejects_a_mismatched_dataset(cli, tmp_path):
    ckpt = tmp_path / "ck"
    assert cli("train", "--quiet", "--checkpoint", ckpt).exit_code == 0
    result = cli("predict", "--checkpoint", ckpt, "--metrics", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p.json").read_text())["test_accuracy"] >= 0.90
    wrong = cli("predict", "--checkpoint", ckpt, "--dataset", "synthetic")
    assert wrong.exit_code == 2 and "does not fit" in wrong.output


@pytest.mark.parametrize("transport", ["inproc", "process"])
def test_a_crashing_worker_exits_3_and_leaves_only_checkpoints_from_before(cli, tmp_path, transport):
    from blindtrain.protocols import PROTOCOLS

    from .conftest import ClearOffload

    PROTOCOLS["clear-offload"] = ClearOffload
    try:
        ckpt = tmp_path / "ck"
        result = cli("train", "--quiet", "--protocol", "clear-offload", "--transport", transport, "--steps", "6",
                     "--adversary", "crash:step=3", "--checkpoint", ckpt, "--checkpoint-every", "1",
                     "--metrics", tmp_path / "m.json")
    finally:
        PROTOCOLS.pop("clear-offload")
    assert result.exit_code == 3, result.output
    assert "worker" in result.output and ("died" in result.output or "crashed" in result.output)
    assert "serving layer" in result.output and "step 3" in result.output
    from blindtrain import checkpoint
    from blindtrain.crypto import KeyStore

    assert checkpoint.load(ckpt, keystore=KeyStore())["step"] == 3  # the last completed step, not the crashed one
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["status"] == "worker_crashed" and metrics["steps"] == 3


def _write_tiny_cifar(root, n=20):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(root / name, "wb") as handle:
            pickle.dump(batch, handle)


def test_cifar10_from_a_local_archive(cli, tmp_path):
    _write_tiny_cifar(tmp_path / "cifar-10-batches-py")
    result = cli("train", "--quiet", "--dataset", "cifar10", "--data-dir", tmp_path, "--model", "lenet",
                 "--steps", "2", "--batch-size", "8", "--metrics", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["dataset"] == "cifar10"


def test_a_corrupt_cifar_batch_exits_2(cli, tmp_path):
    root = tmp_path / "cifar"
    _write_tiny_cifar(root)
    (root / "data_batch_2").write_bytes(b"not a pickle")
    result = cli("train", "--quiet", "--dataset", "cifar10", "--data-dir", root, "--steps", "1")
    assert result.exit_code == 2 and "cannot read CIFAR-10 batch" in result.output
