"""Writes that fail (disk full, read-only, quota): one ItkdError naming the file, the previous file intact,
no temporary file left behind; a training run says which checkpoint survived and how to resume."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from itkd_cli.core import io
from itkd_cli.core.io import WriteFailed, save_torch, write_json, write_text


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_text_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    target = write_text(tmp_path / "report.json", "previous\n")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(target), "write_text", full)
    with pytest.raises(WriteFailed) as exc:
        write_json(target, {"new": 1})
    assert exc.value.message.startswith(f"{target}: cannot write (No space left on device)")
    assert "the previous report.json is intact" in exc.value.message
    monkeypatch.undo()
    assert target.read_text() == "previous\n" and not _leftovers(tmp_path)


def test_torch_save_failing_half_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = save_torch(tmp_path / "last.pth", {"w": torch.ones(3)})
    real_save = torch.save

    def half_then_full(obj, path, *args, **kwargs):
        real_save(obj, path)
        with open(path, "r+b") as f:  # what a full disk leaves: a truncated zip
            f.truncate(10)
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(WriteFailed, match="last.pth: cannot write .*the previous last.pth is intact"):
        save_torch(target, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3)) and not _leftovers(tmp_path)


def test_other_runtime_errors_are_not_disguised_as_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a real bug")))
    with pytest.raises(RuntimeError, match="a real bug"):
        save_torch(tmp_path / "x.pth", {})
    assert not _leftovers(tmp_path)


def test_a_read_only_folder_says_nothing_was_written(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    with pytest.raises(WriteFailed, match=r"a.txt: cannot write \(Read-only file system\); nothing was written there"):
        write_text(tmp_path / "a.txt", "x")


def test_written_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    write_text(tmp_path / "a.txt", "x")
    assert any(".a.txt." in path for path in synced)  # the temporary file itself, before it becomes a.txt
    assert str(tmp_path) in synced  # and the folder, so the rename is durable too
