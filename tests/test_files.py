import json
import os

import pytest

from pomonag_edge import files


def test_atomic_json_and_permissions(tmp_path):
    p = files.atomic_write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert json.loads(p.read_text()) == {"x": 1}
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~files._umask()
    assert [f.name for f in p.parent.iterdir()] == ["b.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    p = files.atomic_write_text(tmp_path / "c.txt", "old")

    def boom(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["c.txt"]
