"""``--dataset folder:DIR``: a folder of images per class trains from the CLI; every malformed folder or
file is exit 2 with one line naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from blindtrain import data
from blindtrain.cli import main
from blindtrain.errors import UsageError


def _write_images(root, *, classes=("cat", "dog"), per_class=6, size=(8, 6), mode="L", seed=0):
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            # class 0 dark, class 1 bright: learnable
            pixels = rng.integers(0, 100, shape) + 120 * label
            Image.fromarray(pixels.astype(np.uint8), mode).save(root / name / f"{i:03d}.png")


def test_classes_are_sorted_folder_names_and_pixels_are_read_exactly(tmp_path):
    _write_images(tmp_path, classes=("b_dog", "a_cat"), per_class=5)
    dataset = data.load(f"folder:{tmp_path}", seed=0)
    assert dataset.num_classes == 2 and dataset.input_shape == (1, 6, 8)
    assert len(dataset.y_train) + len(dataset.y_test) == 10
    # "a_cat" (label 0) was written as the brighter class (written second, label 1 of the writer)
    x = np.concatenate([dataset.x_train.numpy(), dataset.x_test.numpy()])
    y = np.concatenate([dataset.y_train.numpy(), dataset.y_test.numpy()])
    assert x[y == 0].mean() > x[y == 1].mean()


def test_train_and_test_subfolders_are_the_split_and_colour_is_rgb(tmp_path):
    _write_images(tmp_path / "train", per_class=4, mode="RGB")
    _write_images(tmp_path / "test", per_class=2, mode="RGB", seed=1)
    dataset = data.load(f"folder:{tmp_path}")
    assert dataset.input_shape == (3, 6, 8)
    assert dataset.y_train.tolist() == [0] * 4 + [1] * 4 and dataset.y_test.tolist() == [0, 0, 1, 1]


def test_an_image_folder_trains_from_the_cli(tmp_path):
    _write_images(tmp_path, per_class=10)
    result = CliRunner().invoke(main, ["train", "--dataset", f"folder:{tmp_path}", "--protocol", "tempo",
                                       "--steps", "3", "--batch-size", "8", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output


def _broken(tmp_path, case):
    _write_images(tmp_path, per_class=3)
    if case == "not an image":
        (tmp_path / "cat" / "fake.png").write_bytes(b"#!/bin/sh\necho pwned\n")
    elif case == "one size":
        Image.new("L", (9, 9)).save(tmp_path / "dog" / "big.png")
    elif case == "one class":
        for f in (tmp_path / "dog").iterdir():
            f.unlink()
        (tmp_path / "dog").rmdir()
    elif case == "empty class":
        (tmp_path / "bird").mkdir()
    elif case == "bomb":
        Image.new("L", (5000, 4000)).save(tmp_path / "cat" / "huge.png")
    return tmp_path


@pytest.mark.parametrize("case, words", [("not an image", "fake.png is not a readable image"),
                                         ("one size", "all images must have one size"),
                                         ("one class", "one sub-folder per class"),
                                         ("empty class", "holds no images"),
                                         ("bomb", "pixel limit")])
def test_malformed_folders_are_exit_2_with_one_line(tmp_path, case, words):
    root = _broken(tmp_path, case)
    with pytest.raises(UsageError, match=words):
        data.load(f"folder:{root}")
    result = CliRunner().invoke(main, ["train", "--dataset", f"folder:{root}", "--steps", "1", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output


def test_a_missing_folder_is_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["train", "--dataset", f"folder:{tmp_path / 'nope'}", "--steps", "1"])
    assert result.exit_code == 2 and "no such directory" in result.output
