"""Outputs are checked before the first step: an unwritable path or a corrupt key store is exit 2
with nothing written and no worker started; links and special files are never replaced."""

from __future__ import annotations

import os

import pytest

from blindtrain import session as session_module


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a session (workers, training) is ever started."""

    def refuse(*args, **kwargs):
        raise AssertionError("a session was started before the outputs were checked")

    monkeypatch.setattr(session_module.Session, "__init__", refuse)


def _outputs(tmp_path):
    return {"--metrics": tmp_path / "out" / "m.json", "--transcript": tmp_path / "out" / "t.npz",
            "--checkpoint": tmp_path / "out" / "c.ckpt"}


def _nothing_written(tmp_path, allowed=("keystore", "blocker", "link-target", "fifo", "out")):
    names = {p.name for p in tmp_path.rglob("*")}
    return names <= set(allowed) | {"sealing.key", "sealing.key.counters", "sealing.key.lock"}


@pytest.mark.parametrize("flag", ["--metrics", "--transcript", "--checkpoint"])
def test_an_unwritable_output_is_exit_2_before_training_and_nothing_is_written(cli, tmp_path, flag, no_training):
    (tmp_path / "blocker").write_text("a regular file where a folder should be")
    outputs = {k: str(v) for k, v in _outputs(tmp_path).items()}
    outputs[flag] = str(tmp_path / "blocker" / "sub" / "file")
    args = [item for pair in outputs.items() for item in pair]
    result = cli("train", "--quiet", "--protocol", "enclave", "--steps", "50", *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {flag}: cannot write") and result.output.count("\n") == 1
    assert _nothing_written(tmp_path)


def test_a_symlinked_output_is_refused_and_its_target_untouched(cli, tmp_path, no_training):
    target = tmp_path / "link-target"
    target.write_text("precious")
    link = tmp_path / "m.json"
    link.symlink_to(target)
    result = cli("train", "--quiet", "--protocol", "enclave", "--steps", "2", "--metrics", link)
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert link.is_symlink() and target.read_text() == "precious"


def test_a_fifo_output_is_refused_without_blocking(cli, tmp_path, no_training):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = cli("train", "--quiet", "--protocol", "enclave", "--steps", "2", "--transcript", fifo)
    assert result.exit_code == 2 and "FIFO" in result.output


def test_a_corrupt_key_store_is_exit_2_before_training(cli, tmp_path, isolated_keystore, no_training):
    isolated_keystore.parent.mkdir(parents=True)
    isolated_keystore.write_bytes(b"too short")
    result = cli("train", "--quiet", "--protocol", "enclave", "--steps", "50", "--checkpoint", tmp_path / "c.ckpt")
    assert result.exit_code == 2 and "key store" in result.output and "corrupt" in result.output
    assert not (tmp_path / "c.ckpt").exists()


def test_metrics_written_through_a_character_device(cli):
    result = cli("train", "--quiet", "--protocol", "enclave", "--steps", "1", "--metrics", os.devnull)
    assert result.exit_code == 0, result.output
    assert os.path.exists(os.devnull) and not os.path.isfile(os.devnull)  # still the device, not replaced
