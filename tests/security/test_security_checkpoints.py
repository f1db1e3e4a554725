"""Checkpoints bind their configuration, step and run: a changed header, a resume under another
configuration and a rollback to an older checkpoint of the same run are all refused (exit 2)."""

from __future__ import annotations

import json
import shutil

import pytest

from blindtrain import checkpoint
from blindtrain.crypto import KeyStore

TRAIN = ["train", "--quiet", "--protocol", "enclave", "--batch-size", "64"]


def test_the_header_is_authenticated(cli, tmp_path):
    ckpt = tmp_path / "ck"
    assert cli(*TRAIN, "--steps", "2", "--checkpoint", ckpt).exit_code == 0
    blob = ckpt.read_bytes()
    assert b'"step":2' in blob
    ckpt.write_bytes(blob.replace(b'"step":2', b'"step":9'))  # claim another step, keep the sealed payload
    result = cli(*TRAIN, "--steps", "1", "--resume", ckpt)
    assert result.exit_code == 2 and "failed authentication" in result.output
    ckpt.write_bytes(blob.replace(b'"protocol":"enclave"', b'"protocol":"tempoXX"'))
    assert cli("predict", "--checkpoint", ckpt).exit_code == 2


MISMATCHES = {
    "protocol": (["--protocol", "plain"], "--protocol: checkpoint enclave, this run plain"),
    "hidden": (["--hidden", "32"], "--hidden: checkpoint 128,64, this run 32"),
    "activation": (["--activation", "sigmoid"], "--activation: checkpoint relu, this run sigmoid"),
    "model": (["--model", "lenet"], "--model: checkpoint mlp, this run lenet"),
    "batch size": (["--batch-size", "32"], "--batch-size: checkpoint 64, this run 32"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_resuming_under_another_configuration_is_exit_2_naming_it(cli, tmp_path, case):
    ckpt = tmp_path / "ck"
    assert cli(*TRAIN, "--steps", "2", "--checkpoint", ckpt).exit_code == 0
    args, expected = MISMATCHES[case]
    result = cli(*TRAIN, "--steps", "1", "--resume", ckpt, "--metrics", tmp_path / "m.json", *args)
    assert result.exit_code == 2, result.output
    assert "cannot resume" in result.output and expected in result.output
    assert not (tmp_path / "m.json").exists()
    assert cli(*TRAIN, "--steps", "1", "--resume", ckpt).exit_code == 0  # the same configuration resumes


def test_rollback_to_an_older_checkpoint_of_the_run_is_refused_unless_allowed(cli, tmp_path):
    ckpt, old = tmp_path / "ck", tmp_path / "step2.ck"
    assert cli(*TRAIN, "--steps", "2", "--checkpoint", ckpt).exit_code == 0
    shutil.copy(ckpt, old)
    assert cli(*TRAIN, "--steps", "3", "--resume", ckpt, "--checkpoint", ckpt).exit_code == 0
    assert checkpoint.load(ckpt, keystore=KeyStore())["step"] == 5
    shutil.copy(old, ckpt)  # the attack: an older checkpoint of the same run copied over the newer one
    for args in ([*TRAIN, "--steps", "1", "--resume", ckpt], ["predict", "--checkpoint", ckpt]):
        result = cli(*args)
        assert result.exit_code == 2 and "rollback" in result.output and "--allow-rollback" in result.output
    result = cli(*TRAIN, "--steps", "1", "--resume", ckpt, "--allow-rollback", "--metrics", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())["global_step"] == 3
    assert cli("predict", "--checkpoint", ckpt, "--allow-rollback").exit_code == 0


def test_a_second_run_has_its_own_identity_and_counter(cli, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert cli(*TRAIN, "--steps", "1", "--checkpoint", first).exit_code == 0
    assert cli(*TRAIN, "--steps", "1", "--checkpoint", second).exit_code == 0
    store = KeyStore()
    a, b = (checkpoint.load(p, keystore=store)["header"] for p in (first, second))
    assert a.run_id != b.run_id and a.counter == b.counter == 1
    assert cli("predict", "--checkpoint", first).exit_code == 0  # not a rollback of the other run


def test_a_corrupt_counter_store_is_exit_2(cli, tmp_path, isolated_keystore):
    ckpt = tmp_path / "ck"
    assert cli(*TRAIN, "--steps", "1", "--checkpoint", ckpt).exit_code == 0
    counters = isolated_keystore.with_name(isolated_keystore.name + ".counters")
    counters.write_bytes(counters.read_bytes()[:-3] + b"xyz")
    result = cli(*TRAIN, "--steps", "1", "--resume", ckpt)
    assert result.exit_code == 2 and "counters" in result.output
