"""core.run_dir: a run folder is refused, continued or replaced (moved aside), and locked against a second owner."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.run_dir import LOCK, claim, claim_file, locked

PRODUCTS = ("last.pth", "metrics.jsonl")


def _finished_run(folder):
    folder.mkdir(parents=True)
    (folder / "last.pth").write_bytes(b"weights")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    return folder


def test_fresh_folder_is_created_locked_and_unlocked(tmp_path):
    run = tmp_path / "run"
    with claim(run, "itkd train", PRODUCTS) as folder:
        owner = json.loads((folder / LOCK).read_text())
        assert owner["pid"] == os.getpid() and owner["command"] == "itkd train"
    assert run.is_dir() and not (run / LOCK).exists()


def test_a_folder_holding_a_run_is_refused_and_left_untouched(tmp_path):
    run = _finished_run(tmp_path / "run")
    with pytest.raises(ItkdError) as exc:
        with claim(run, "itkd train", PRODUCTS):
            pytest.fail("the block must not run")
    assert "already holds a run (last.pth, metrics.jsonl); nothing was changed" in exc.value.message
    assert "--resume" in exc.value.hint and "--force" in exc.value.hint
    assert (run / "last.pth").read_bytes() == b"weights" and sorted(p.name for p in run.iterdir()) == list(PRODUCTS)


def test_without_resume_the_hint_does_not_offer_it(tmp_path):
    run = _finished_run(tmp_path / "ev")
    with pytest.raises(ItkdError) as exc:
        with claim(run, "itkd eval", PRODUCTS, can_resume=False):
            pass
    assert "--resume" not in exc.value.hint and "--force" in exc.value.hint


def test_resume_continues_in_place(tmp_path):
    run = _finished_run(tmp_path / "run")
    with claim(run, "itkd train", PRODUCTS, resume=True):
        (run / "last.pth").write_bytes(b"more")
    assert (run / "last.pth").read_bytes() == b"more"


def test_force_moves_the_old_run_aside_whole(tmp_path):
    run = _finished_run(tmp_path / "run")
    said = []
    with claim(run, "itkd train", PRODUCTS, force=True, say=said.append):
        assert [p.name for p in run.iterdir()] == [LOCK]  # a fresh folder: nothing of the old run mixed in
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "last.pth").read_bytes() == b"weights"
    assert str(aside[0]) in said[0]


def test_resume_and_force_together_are_refused(tmp_path):
    with pytest.raises(ItkdError, match="pick one"):
        with claim(tmp_path / "run", "itkd train", PRODUCTS, resume=True, force=True):
            pass


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(ItkdError, match="is a file, not a folder"):
        with claim(tmp_path / "run", "itkd train", PRODUCTS):
            pass


def test_a_run_failing_before_it_wrote_anything_leaves_no_folder(tmp_path):
    with pytest.raises(ItkdError):
        with claim(tmp_path / "run", "itkd eval", PRODUCTS):
            raise ItkdError("bad input")
    assert not (tmp_path / "run").exists()


def _lock_held_by(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "command": "itkd compress",
                                           "started": "2026-12-04T10:00:00"}))


def test_a_live_owner_refuses_a_second_run_even_with_force(tmp_path):
    run = _finished_run(tmp_path / "run")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_held_by(run, owner.pid)
        for kwargs in ({"resume": True}, {"force": True}):
            with pytest.raises(ItkdError) as exc:
                with claim(run, "itkd train", PRODUCTS, **kwargs):
                    pass
            assert f"in use by a running `itkd compress` (pid {owner.pid}" in exc.value.message
        assert (run / "last.pth").read_bytes() == b"weights"  # force moved nothing under a live owner
    finally:
        owner.kill()
        owner.wait()
    with claim(run, "itkd train", PRODUCTS, resume=True):  # the owner is gone: its lock is stale
        assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()


def test_locked_names_its_own_file(tmp_path):
    with locked(tmp_path, "itkd export", ".student.onnx.lock") as lock:
        assert lock.name == ".student.onnx.lock"
        with pytest.raises(ItkdError, match="in use"):
            other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            try:
                lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
                with locked(tmp_path, "itkd export", ".student.onnx.lock"):
                    pass
            finally:
                other.kill()
                other.wait()


def test_claim_file(tmp_path):
    target = tmp_path / "model.onnx"
    claim_file(target)  # absent: fine
    target.write_bytes(b"old")
    with pytest.raises(ItkdError, match="already exists; nothing was changed"):
        claim_file(target)
    claim_file(target, force=True)
    with pytest.raises(ItkdError, match="is a folder"):
        claim_file(tmp_path)
