"""``--model path/to/file.py:factory``: the user's own model trains under every training protocol;
a bad file or factory is exit 2 with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from blindtrain.cli import main
from blindtrain.protocols import load_all

MODEL = str(Path(__file__).parent / "data" / "my_model.py")
TRAINING = sorted(name for name, cls in load_all().items() if cls.info.trains)


@pytest.mark.parametrize("protocol", TRAINING)
def test_a_users_model_file_trains_under_every_training_protocol(protocol, tmp_path):
    result = CliRunner().invoke(main, ["train", "--model", f"{MODEL}:build", "--protocol", protocol, "--steps", "3",
                                       "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "hidden" in result.output and "test accuracy" in result.output


@pytest.mark.parametrize("spec, message", [
    ("missing_file.py:build", "no such file"),
    (f"{MODEL}:nothing_here", "defines no function 'nothing_here'"),
    (f"{MODEL}:not_a_model", "returned str, not a torch.nn.Module"),
    (f"{MODEL}:broken", "factory exploded"),
])
def test_a_bad_model_file_is_exit_2_with_one_line(spec, message):
    result = CliRunner().invoke(main, ["train", "--model", spec, "--steps", "1", "--device", "cpu", "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_model_file_that_does_not_import_is_exit_2(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def build(:\n")
    result = CliRunner().invoke(main, ["train", "--model", f"{bad}:build", "--steps", "1", "--device", "cpu",
                                       "--quiet"])
    assert result.exit_code == 2 and "importing" in result.output and "SyntaxError" in result.output
