"""edge_sdk.fileio.atomic_output: the one atomic-write mechanism (temp beside the file, fsync, rename)."""

from __future__ import annotations

import os
import stat

import pytest

from edge_sdk.fileio import atomic_output, atomic_write_bytes, is_temp_name


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as tmp:
            assert tmp.parent == tmp_path and is_temp_name(tmp.name) and tmp.name.endswith(".tmp")
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert os.listdir(str(tmp_path)) == ["state.json"]


def test_steps_run_in_order_and_the_new_file_replaces_the_old(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    steps = []
    atomic_write_bytes(path, b"new", on_step=steps.append)
    assert path.read_bytes() == b"new" and steps == ["written", "synced", "replaced"]
    assert os.listdir(str(tmp_path)) == ["state.json"]


def test_overwrite_false_refuses_an_existing_file(tmp_path):
    path = tmp_path / "key.pem"
    path.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first" and os.listdir(str(tmp_path)) == ["key.pem"]
    atomic_write_bytes(tmp_path / "new.pem", b"x", overwrite=False)
    assert (tmp_path / "new.pem").read_bytes() == b"x"


def test_mode_is_exact_whatever_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "public.pem", b"x", mode=0o644)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "public.pem").stat().st_mode) == 0o644


def test_only_names_it_makes_count_as_temp_names():
    assert is_temp_name(".status.json.0123456789ab.tmp")
    assert not is_temp_name("status.json") and not is_temp_name(".staging-0123") and not is_temp_name("a.tmp")
