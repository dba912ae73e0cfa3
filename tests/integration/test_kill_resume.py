"""Fault injection: SIGINT and SIGKILL at random steps of `itkd train` and `itkd compress`, then resume.

Real processes on the small world: every checkpoint left on disk must load, and the resumed run's final
weights must equal an uninterrupted run's bit for bit (CPU, same seed). A second run on a folder in use
is refused by its lock.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

TINY = ("model.grid.point_range=[-20.48, -20.48, -5.0, 20.48, 20.48, 3.0]", "model.grid.voxel_size=[0.64, 0.64, 8.0]",
        "model.vfe.filters=[8]", "model.backbone_2d.num_filters=[8, 8, 8]",
        "model.backbone_2d.num_upsample_filters=[8, 8, 8]", "model.head.shared_conv_channels=8",
        "model.head.head_conv_channels=8", "dataset.workers=0", "train.batch_size=1", "train.log_every=1",
        "train.epochs=4")
STEPS = 12  # 3 training frames of the small world x 4 epochs
POINTS = sorted(random.Random(44).sample(range(1, STEPS), 5))  # where the signal arrives (after that step)


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _itkd(*args) -> list[str]:
    return [sys.executable, "-m", "itkd_cli", "--quiet", *map(str, args)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from itkd_cli.data.synth.render import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, preset="small")
    return root


def _train_cmd(world: Path, out: Path) -> list[str]:
    return _itkd("train", "--recipe", "synth-pillar", "--out", out, "--no-eval", *_sets(f"dataset.root={world}", *TINY))


def _compress_cmd(world: Path, teacher: Path, out: Path) -> list[str]:
    return _itkd("compress", "--teacher", teacher, "--recipe", "synth-pillar-itkd-1-4", "--out", out,
                 *_sets(f"dataset.root={world}", *TINY))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True, map_location="cpu")["model_state"]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _interrupt(cmd: list[str], log: Path, after_step: int, sig: int) -> int:
    """Start ``cmd``, send ``sig`` once its metrics log shows ``after_step``; returns the exit code."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.is_file() else []
        steps = [json.loads(x).get("step", 0) for x in lines if x.strip().endswith("}")]
        if steps and max(steps) >= after_step:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    return proc.returncode


def _all_checkpoints_load(folder: Path) -> None:
    for path in folder.rglob("*.pth"):
        torch.load(path, weights_only=True, map_location="cpu")  # never a half-written file


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """Uninterrupted runs: the teacher (also the teacher of every compress run) and one student."""
    base = tmp_path_factory.mktemp("reference")
    assert _run(_train_cmd(world, base / "teacher")).returncode == 0
    teacher = base / "teacher" / "last.pth"
    assert _run(_compress_cmd(world, teacher, base / "student")).returncode == 0
    return teacher, _weights(teacher), _weights(base / "student" / "student.pth")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("after", POINTS)
def test_train_killed_then_resumed_equals_uninterrupted(world, reference, tmp_path, sig, after):
    out = tmp_path / "run"
    code = _interrupt(_train_cmd(world, out), out / "metrics.jsonl", after, sig)
    assert code in ((130, 0) if sig == signal.SIGINT else (-signal.SIGKILL, 0))
    _all_checkpoints_load(out)
    if (out / "last.pth").is_file():
        done = _run(_itkd("train", "--resume", out, "--no-eval"))
    else:  # killed before its first checkpoint: the folder's logs are moved aside, the run starts again
        done = _run([*_train_cmd(world, out), "--force"])
    assert done.returncode == 0, done.stderr
    assert _equal(_weights(out / "last.pth"), reference[1])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("after", POINTS)
def test_compress_killed_then_resumed_equals_uninterrupted(world, reference, tmp_path, sig, after):
    out = tmp_path / "c25"
    cmd = _compress_cmd(world, reference[0], out)
    code = _interrupt(cmd, out / "train" / "metrics.jsonl", after, sig)
    assert code in ((130, 0) if sig == signal.SIGINT else (-signal.SIGKILL, 0))
    _all_checkpoints_load(out)
    done = _run([*cmd, "--resume"] if (out / "train" / "last.pth").is_file() else [*cmd, "--force"])
    assert done.returncode == 0, done.stderr
    assert _equal(_weights(out / "student.pth"), reference[2])


def test_a_second_run_on_a_folder_in_use_is_refused(world, tmp_path):
    out = tmp_path / "run"
    long_run = [*_train_cmd(world, out), "--set", "train.epochs=400"]  # still training when the second one starts
    first = subprocess.Popen(long_run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = out / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (log.is_file() and log.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for extra in ([], ["--force"]):  # neither a new run nor a replacement may touch a folder in use
            second = _run([*_train_cmd(world, out), *extra])
            assert second.returncode == 2, second.stderr
            assert f"in use by a running `itkd train` (pid {first.pid}" in second.stderr
        assert first.poll() is None, "the first run must still be running, untouched"
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=300)
    assert first.returncode == 130 and not (out / ".itkd.lock").exists()  # the owner cleared its lock
    torch.load(out / "last.pth", weights_only=True)
