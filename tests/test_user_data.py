"""``--dataset npz:FILE``: the user's own arrays train under every training protocol; bad arrays are
exit 2 with one clear line, and nothing in the file can run code (no pickle)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from blindtrain import data
from blindtrain.cli import main
from blindtrain.protocols import load_all

TRAINING = sorted(name for name, cls in load_all().items() if cls.info.trains)


def _blobs(n=120, features=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, features)) * 3
    return (centres[y] + rng.normal(size=(n, features))).astype(np.float32), y


@pytest.fixture
def arrays(tmp_path):
    x, y = _blobs()
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.mark.parametrize("protocol", TRAINING)
def test_a_users_arrays_train_under_every_training_protocol(protocol, arrays):
    result = CliRunner().invoke(main, ["train", "--dataset", f"npz:{arrays}", "--protocol", protocol, "--steps", "3",
                                       "--batch-size", "16", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"npz:{arrays}" in result.output and "test accuracy" in result.output


def test_features_images_and_a_given_test_split_load_as_chw(tmp_path):
    x, y = _blobs(n=50, features=12)
    np.savez(tmp_path / "f.npz", x=x, y=y)
    loaded = data.load(f"npz:{tmp_path / 'f.npz'}")
    assert loaded.input_shape == (1, 1, 12) and len(loaded.y_train) == 40 and loaded.num_classes == 3
    images = np.random.default_rng(1).random((30, 5, 5)).astype(np.float32)
    np.savez(tmp_path / "i.npz", x=images, y=np.arange(30) % 2, x_test=images[:6], y_test=np.arange(6) % 2)
    loaded = data.load(f"npz:{tmp_path / 'i.npz'}")
    assert loaded.input_shape == (1, 5, 5) and len(loaded.y_train) == 30 and len(loaded.y_test) == 6
    assert abs(float(loaded.x_train.mean())) < 1e-5  # standardized with the training split's statistics


@pytest.mark.parametrize("case, arrays, message", [
    ("nan", lambda x, y: {"x": np.where(x > 2, np.nan, x), "y": y}, "NaN or infinite"),
    ("negative label", lambda x, y: {"x": x, "y": y - 1}, "label"),
    ("no labels", lambda x, y: {"x": x}, "missing array(s) y"),
    ("label count", lambda x, y: {"x": x, "y": y[:-1]}, "samples but"),
    ("float labels", lambda x, y: {"x": x, "y": y.astype(np.float32)}, "labels must be"),
    ("object array", lambda x, y: {"x": np.array([object()] * len(y)), "y": y}, "not a readable .npz"),
    ("half a test split", lambda x, y: {"x": x, "y": y, "x_test": x}, "x_test and y_test"),
])
def test_bad_arrays_are_exit_2_with_one_line(tmp_path, case, arrays, message):
    x, y = _blobs()
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays(x, y))
    result = CliRunner().invoke(main, ["train", "--dataset", f"npz:{path}", "--steps", "1", "--device", "cpu",
                                       "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_missing_or_non_npz_file_is_exit_2(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    for spec, message in ((f"npz:{tmp_path / 'absent.npz'}", "no such file"), (f"npz:{text}", "not a readable")):
        result = CliRunner().invoke(main, ["train", "--dataset", spec, "--steps", "1", "--device", "cpu", "--quiet"])
        assert result.exit_code == 2 and message in result.output, result.output
