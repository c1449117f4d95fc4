"""Atomic writes: all or nothing, with ordinary file permissions."""

import os
import stat

import pytest

from protobench.files import atomic_path, atomic_write_text


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
        with atomic_path(tmp_path / "b.bin") as tmp:
            open(tmp, "wb").write(b"1")
    finally:
        os.umask(old)
    for name in ("a.csv", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
