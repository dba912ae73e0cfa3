"""Disk full while `itkd train` / `itkd compress` write a checkpoint: one line, exit 2, the last complete
checkpoint intact and readable, and the exact command that resumes from it."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from itkd_cli.train import loop

TINY = ("model.grid.point_range=[-20.48, -20.48, -5.0, 20.48, 20.48, 3.0]", "model.grid.voxel_size=[0.64, 0.64, 8.0]",
        "model.vfe.filters=[8]", "model.backbone_2d.num_filters=[8, 8, 8]",
        "model.backbone_2d.num_upsample_filters=[8, 8, 8]", "model.head.shared_conv_channels=8",
        "model.head.head_conv_channels=8", "dataset.workers=0", "train.batch_size=1")


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from itkd_cli.data.synth.render import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, preset="small")
    return root


def _fail_on_save(monkeypatch, n: int) -> None:
    """The n-th checkpoint write finds the disk full half-way through its temporary file, as a real full disk does."""
    from itkd_cli.core.io import atomic_path

    real, calls = loop.save_checkpoint_dict, []

    def save(path, ckpt):
        calls.append(path)
        if len(calls) < n:
            return real(path, ckpt)
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loop, "save_checkpoint_dict", save)


def test_train_disk_full_keeps_the_last_checkpoint_and_says_how_to_resume(cli, world, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fail_on_save(monkeypatch, 2)  # epoch 1 saved, epoch 2's save finds the disk full
    result = cli("--quiet", "train", "--recipe", "synth-pillar", "--out", out, "--no-eval",
                 *_sets(f"dataset.root={world}", "train.epochs=3", *TINY))
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "last.pth: cannot write (No space left on device); the previous last.pth is intact" in line
    assert f"itkd train --resume {out}" in result.output and "Traceback" not in result.output
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    again = cli("--quiet", "train", "--resume", out, "--no-eval")
    assert again.exit_code == 0, again.output
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 3


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True)
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_train_on_a_real_full_tmpfs(world, tmp_path):
    """A 20 MB tmpfs holds one 12 MB checkpoint of the embedded teacher (weights + Adam state) but not a
    second beside it: the atomic write needs room for the new one before the old one goes."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "20m"):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN); the patched-writer test covers the logic")
    try:
        out = disk / "run"
        cmd = [sys.executable, "-m", "itkd_cli", "--quiet", "train", "--recipe", "synth-pillar", "--out", str(out),
               "--no-eval", *_sets(f"dataset.root={world}", "train.epochs=3", "dataset.workers=0", "train.batch_size=1")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            pytest.fail("two checkpoints fit into 20 MB: the test no longer fills the disk")
        assert done.returncode == 2, done.stderr
        assert "last.pth: cannot write (the disk is full: " in done.stderr
        assert "MiB free); the previous last.pth is intact" in done.stderr
        assert "Traceback" not in done.stderr and f"itkd train --resume {out}" in done.stderr
        assert torch.load(out / "last.pth", weights_only=True)["epoch"] >= 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)
