"""Atomic output files: all or nothing."""

from __future__ import annotations

import pytest

from blindtrain.files import atomic_file, atomic_write


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_an_error_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npz"]


def test_a_part_file_left_by_a_killed_writer_is_removed_and_a_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.json.{dead.stdout.strip()}.abc123.part"
    live = tmp_path / f".out.json.{os.getpid()}.def456.part"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    atomic_write(tmp_path / "out.json", b"{}")
    assert not stale.exists() and live.exists()
    assert (tmp_path / "out.json").read_bytes() == b"{}"


def test_links_and_fifos_are_refused_and_devices_written_through(tmp_path):
    import os

    from blindtrain.errors import UsageError

    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UsageError, match="symbolic link"):
        atomic_write(tmp_path / "link", b"x")
    assert (tmp_path / "link").is_symlink() and target.read_bytes() == b"keep"
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match="FIFO"):
        atomic_write(tmp_path / "fifo", b"x")
    atomic_write(os.devnull, b"x")
    assert not os.path.isfile(os.devnull)


def test_check_writable_leaves_nothing_behind(tmp_path):
    from blindtrain.errors import UsageError
    from blindtrain.files import check_writable

    check_writable(tmp_path / "new" / "deeper" / "m.json", flag="--metrics")
    assert list(tmp_path.iterdir()) == []  # folders are not created by the check
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UsageError, match="--metrics: cannot write"):
        check_writable(tmp_path / "file" / "m.json", flag="--metrics")
    with pytest.raises(UsageError, match="directory"):
        check_writable(tmp_path, flag="--metrics")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
