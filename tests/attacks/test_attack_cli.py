"""``blindtrain attack`` and ``predict --transcript``: what they print, what they write, their exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _attack(cli, run, *extra):
    return cli("attack", "--transcript", run.transcript, "--metrics", run.metrics, "--keystore", run.keystore, *extra)


def test_plain_is_fully_recovered(cli, plain_run, tmp_path):
    out = tmp_path / "attack.json"
    result = _attack(cli, plain_run, "--ground-truth", plain_run.truth, "--json", out)
    assert result.exit_code == 0, result.output
    assert "chance" in result.output and "attacker knows" in result.output and "command: blindtrain attack" in result.output
    best = json.loads(out.read_text())["best"]
    assert best["labels"]["value"] == 1.0 and best["inputs"]["value"] == 1.0
    assert best["model"]["value"] == 1.0 and best["gradients"]["value"] > 0.999


def test_without_ground_truth_it_lists_what_was_recovered(cli, plain_run):
    result = _attack(cli, plain_run, "--attacks", "labels")
    assert result.exit_code == 0, result.output
    assert "recovered labels: 128 rows over 4 steps (true class indices)" in result.output
    assert "accuracy" not in result.output


def test_enclave_has_nothing_to_attack(cli, enclave_run):
    result = _attack(cli, enclave_run, "--ground-truth", enclave_run.truth)
    assert result.exit_code == 0, result.output
    assert "nothing to attack" in result.output and "0 messages" in result.output


@pytest.mark.parametrize("case", ["missing transcript", "missing role", "bad attacks", "not a transcript",
                                  "metrics not json", "tampered ground truth", "missing ground truth"])
def test_bad_input_exits_2_with_one_line(cli, plain_run, tmp_path, case):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    bad_json = tmp_path / "m.json"
    bad_json.write_text("{")
    tampered = tmp_path / "t.gt"
    blob = bytearray(plain_run.truth.read_bytes())
    blob[-1] ^= 1
    tampered.write_bytes(bytes(blob))
    args = {
        "missing transcript": ["--transcript", tmp_path / "none.npz", "--metrics", plain_run.metrics],
        "missing role": ["--transcript", plain_run.transcript, "--role", "mask", "--metrics", plain_run.metrics],
        "bad attacks": ["--transcript", plain_run.transcript, "--metrics", plain_run.metrics, "--attacks", "keys"],
        "not a transcript": ["--transcript", garbage, "--metrics", plain_run.metrics],
        "metrics not json": ["--transcript", plain_run.transcript, "--metrics", bad_json],
        "tampered ground truth": ["--transcript", plain_run.transcript, "--metrics", plain_run.metrics,
                                  "--ground-truth", tampered],
        "missing ground truth": ["--transcript", plain_run.transcript, "--metrics", plain_run.metrics,
                                 "--ground-truth", tmp_path / "none.gt"],
    }[case]
    result = cli("attack", *args, "--keystore", plain_run.keystore)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1


def test_predict_records_a_transcript_and_ground_truth(cli, plain_run, tmp_path):
    transcript, truth, metrics = tmp_path / "serve.npz", tmp_path / "serve.gt", tmp_path / "serve.json"
    result = cli("predict", "--checkpoint", plain_run.checkpoint, "--protocol", "slalom", "--keystore",
                 plain_run.keystore, "--transcript", transcript, "--record-ground-truth", truth, "--metrics", metrics)
    assert result.exit_code == 0, result.output
    with np.load(transcript) as data:
        meta = json.loads(str(data["meta"]))
    assert {m["kind"] for m in meta} == {"public", "masked"}
    attacked = cli("attack", "--transcript", transcript, "--metrics", metrics, "--ground-truth", truth,
                   "--keystore", plain_run.keystore, "--attacks", "inputs")
    assert attacked.exit_code == 0, attacked.output
    assert "exact_fraction 0.0000" in attacked.output  # one-time pads hide the inputs
