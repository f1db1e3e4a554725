"""Untrusted dataset files: the CIFAR-10 loader runs no code from a pickle and refuses malformed
archives with exit 2 and one line."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest


class _Payload:
    """What an attacker puts in a pickle: code that runs when it is loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _archive(root, *, train=None, test=None, n=20):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"batch_label": b"training batch 1 of 5", b"filenames": [b"x.png"] * n}
    for name, batch in (("data_batch_1", train if train is not None else good),
                        ("test_batch", test if test is not None else good)):
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return good


def _train(cli, root, tmp_path):
    return cli("train", "--quiet", "--protocol", "enclave", "--dataset", "cifar10", "--data-dir", root,
               "--model", "lenet", "--steps", "1", "--batch-size", "4", "--metrics", tmp_path / "m.json")


def test_a_pickle_with_a_code_payload_runs_nothing_and_exits_2(cli, tmp_path):
    marker = tmp_path / "PWNED"
    root = tmp_path / "cifar"
    _archive(root, train={b"data": _Payload(marker), b"labels": [1]})
    result = _train(cli, root, tmp_path)
    assert result.exit_code == 2 and "refused to load" in result.output
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "m.json").exists()


def test_the_real_archive_layout_still_loads(cli, tmp_path):
    root = tmp_path / "cifar"
    _archive(root)
    assert _train(cli, root, tmp_path).exit_code == 0


def _good(n=20):
    rng = np.random.default_rng(1)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [int(v) for v in rng.integers(0, 10, n)]}


MALFORMED = {
    "a list": ([1, 2, 3], "expected a dict"),
    "label 11": ({**_good(), b"labels": [11] * 20}, "labels must lie in [0, 9]"),
    "label -1": ({**_good(), b"labels": [-1] * 20}, "labels must lie in [0, 9]"),
    "empty batch": ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "non-empty batch"),
    "NaN floats": ({b"data": np.full((20, 3072), np.nan), b"labels": _good()[b"labels"]}, "pixels must be uint8"),
    "wrong sample size": ({b"data": np.zeros((20, 100), np.uint8), b"labels": _good()[b"labels"]}, "shape [3072]"),
    "label count": ({**_good(), b"labels": [1] * 19}, "20 samples but 19 labels"),
    "object array": ({b"data": np.array([b"x"] * 3, dtype=object), b"labels": [1, 2, 3]}, "refused"),
    "string labels": ({**_good(), b"labels": [b"cat"] * 20}, "list of integers"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_archive_exits_2_in_one_line(cli, tmp_path, case):
    batch, expected = MALFORMED[case]
    root = tmp_path / "cifar"
    _archive(root, test=batch)
    result = _train(cli, root, tmp_path)
    assert result.exit_code == 2, result.output
    assert expected in result.output and result.output.count("\n") == 1 and "Traceback" not in result.output
