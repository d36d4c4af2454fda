"""Atomic writes and content hashes."""

import pytest

from edgekd.artifacts import atomic_path, sha256_path, write_json, write_text


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"v": 2')  # half-written
        raise RuntimeError("killed")
    assert path.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp files left behind


def test_atomic_folder_replaces_as_a_whole(tmp_path):
    target = tmp_path / "d"
    for version in ("1", "2"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "a").write_text(version)
    assert (target / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_hash_of_a_folder_depends_on_names_and_bytes(tmp_path):
    (tmp_path / "x").mkdir()
    write_text(tmp_path / "x" / "a", "1")
    first = sha256_path(tmp_path / "x")
    (tmp_path / "x" / "a").rename(tmp_path / "x" / "b")
    assert sha256_path(tmp_path / "x") != first
    write_text(tmp_path / "x" / "b", "2")
    assert sha256_path(tmp_path / "x") not in (first,)
