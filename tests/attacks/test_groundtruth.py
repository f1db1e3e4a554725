"""Ground truth: sealed like a checkpoint, recorded by training, and never read by an attack."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

import blindtrain.attacks as attacks_package
from blindtrain import checkpoint, groundtruth
from blindtrain.attacks import generic, lab, registry
from blindtrain.attacks.cli import attack_view
from blindtrain.crypto import KeyStore, SealError


def test_ground_truth_holds_the_true_batches_and_the_final_model(plain_run):
    truth = groundtruth.load(plain_run.truth, keystore=KeyStore(plain_run.keystore))
    assert sorted(truth.batches) == [0, 1, 2, 3]
    x, y = truth.batches[0]
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,)
    final = checkpoint.load(plain_run.checkpoint, keystore=KeyStore(plain_run.keystore))["model_state"]
    assert set(truth.model_state) == set(final)
    for name, value in final.items():
        assert np.array_equal(truth.model_state[name].numpy(), value.numpy())
    assert set(truth.gradients[0]) == {"1.weight", "3.weight"}  # first and last weight


def test_ground_truth_is_sealed(plain_run, tmp_path):
    blob = bytearray(plain_run.truth.read_bytes())
    assert b"model_state" not in blob  # encrypted, not merely signed
    blob[len(blob) // 2] ^= 1
    tampered = tmp_path / "tampered.gt"
    tampered.write_bytes(bytes(blob))
    with pytest.raises(SealError):
        groundtruth.load(tampered, keystore=KeyStore(plain_run.keystore))
    with pytest.raises(SealError):  # a checkpoint is not ground truth
        groundtruth.load(plain_run.checkpoint, keystore=KeyStore(plain_run.keystore))
    with pytest.raises(SealError):  # nor under another key
        groundtruth.load(plain_run.truth, keystore=KeyStore(tmp_path / "other.key"))


@pytest.mark.parametrize("options", [{}, {"fuse_activations": True}], ids=["tempo", "fused"])
def test_tempo_records_its_row_permutation(tmp_path, options):
    from .conftest import _train

    run = _train(tmp_path, "tempo", **options)
    truth = groundtruth.load(run.truth, keystore=KeyStore(run.keystore))
    order = truth.orders[0]["1"]
    assert sorted(order.tolist()) == list(range(32)) and order.tolist() != list(range(32))


# ---------------------------------------------------------------------------- attacks never read it ----
def test_an_attack_that_opens_the_ground_truth_fails_the_run(plain_run, monkeypatch):
    def cheating(messages, knowledge):
        Path(plain_run.truth).read_bytes()

    monkeypatch.setattr(generic, "labels", cheating)
    with pytest.raises(lab.GroundTruthRead):
        attack_view(transcript=plain_run.transcript, metrics=plain_run.metrics, ground_truth=plain_run.truth,
                    keystore=plain_run.keystore, targets=("labels",))


def test_an_attack_that_swallows_the_refusal_still_fails(plain_run, monkeypatch):
    def sneaky(messages, knowledge):
        try:
            open(plain_run.truth, "rb").close()
        except Exception:
            pass
        return generic.Recovery(attack="sneaky")

    monkeypatch.setattr(generic, "inputs", sneaky)
    with pytest.raises(lab.GroundTruthRead):
        attack_view(transcript=plain_run.transcript, metrics=plain_run.metrics, ground_truth=plain_run.truth,
                    keystore=plain_run.keystore, targets=("inputs",))


def test_the_guard_is_lifted_for_the_scorer(plain_run):
    with pytest.raises(lab.GroundTruthRead):
        with lab.sealed_off([plain_run.truth]):
            plain_run.truth.read_bytes()
    with pytest.raises(lab.GroundTruthRead):  # the refusal is remembered when the block ends
        with lab.sealed_off([plain_run.truth]):
            try:
                plain_run.truth.read_bytes()
            except lab.GroundTruthRead:
                pass
    assert plain_run.truth.read_bytes()


def test_attacks_take_only_messages_and_knowledge():
    for target, name in registry.GENERIC.items():
        parameters = list(inspect.signature(registry.resolve(name)).parameters)
        assert parameters == ["messages", "knowledge"], name
    package = Path(attacks_package.__file__).parent
    for path in package.glob("*.py"):
        if path.name in ("score.py", "cli.py"):  # the scorer and the command that runs it after the attacks
            continue
        imported = {alias.name for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module or "" for node in ast.walk(ast.parse(path.read_text()))
                                                if isinstance(node, ast.ImportFrom)}
        assert not any("groundtruth" in name for name in imported), f"{path.name} imports the ground truth"
