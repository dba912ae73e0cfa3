"""`itkd data synth` after a SIGKILL: the next run clears the killed run's staging folder, and only ours
whose owner is gone (#45 item 8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from itkd_cli.data.synth import MARKER, generate
from itkd_cli.data.synth import staging
from itkd_cli.data.synth.staging import STAGING

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(target: Path, **record) -> Path:
    """A staging folder as a killed run leaves it: owner record, some rendered files, no marker."""
    folder = staging.make(target, {"preset": "small"})
    data = json.loads((folder / STAGING).read_text())
    (folder / STAGING).write_text(json.dumps({**data, **record}))
    (folder / "samples" / "LIDAR_TOP").mkdir(parents=True)
    (folder / "samples" / "LIDAR_TOP" / "x.pcd.bin").write_bytes(b"\0" * 1000)
    return folder


def test_leftover_of_a_dead_run_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    dead = _leftover(out, pid=_dead_pid())
    summary = generate(out, preset="small", scenes=2, frames=1)
    assert not dead.exists() and summary["cleared_staging"] == [str(dead)]
    assert (out / MARKER).is_file() and not (out / STAGING).exists()  # the record never stays in the dataset
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_reuse_also_clears_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    generate(out, preset="small", scenes=2, frames=1)
    dead = _leftover(out, pid=_dead_pid())
    summary = generate(out, preset="small", scenes=2, frames=1)
    assert summary["reused"] and not dead.exists()


def test_what_is_not_provably_ours_and_dead_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    running = _leftover(out)  # owner: this very process, still running
    elsewhere = _leftover(out, pid=_dead_pid(), host="another-machine")  # its pid means nothing here
    other_out = _leftover(out, pid=_dead_pid(), out=str(tmp_path / "elsewhere"))
    foreign = tmp_path / f"{staging.prefix(out)}mine"  # our name, not our record
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    broken = tmp_path / f"{staging.prefix(out)}broken"
    broken.mkdir()
    (broken / STAGING).write_text("{not json")
    summary = generate(out, preset="small", scenes=2, frames=1)
    for folder in (running, elsewhere, other_out, foreign, broken):
        assert folder.is_dir(), folder
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert summary["cleared_staging"] == []
    assert sorted(summary["unknown_staging"]) == sorted(map(str, (other_out, foreign, broken)))


def test_a_recycled_pid_does_not_keep_a_leftover(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    recycled = _leftover(out, pid=os.getpid(), started="1")  # our pid, but a process started at another time
    staging.clear_leftovers(out)
    if staging.process_start(os.getpid()) is None:  # no /proc: the pid alone cannot tell, so it stays
        assert recycled.exists()
    else:
        assert not recycled.exists()


def test_cli_says_what_it_removed(tmp_path: Path, cli) -> None:
    out = tmp_path / "synth"
    dead = _leftover(out, pid=_dead_pid())
    res = cli("data", "synth", "--out", out, "--preset", "small", "--frames", "1")
    assert res.exit_code == 0, res.output
    squeeze = lambda text: "".join(text.split())  # noqa: E731 (rich wraps long paths anywhere)
    assert squeeze(f"removed {dead}: staging folder of an interrupted run") in squeeze(res.output)


def test_sigkill_mid_run_then_rerun(tmp_path: Path) -> None:
    """A real `itkd data synth` killed with SIGKILL while rendering; the rerun leaves only the dataset."""
    out = tmp_path / "synth"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "itkd_cli", "data", "synth", "--out", str(out), "--preset",
                             "small", "--frames", "200"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while not list(tmp_path.glob(f"{staging.prefix(out)}*/samples/LIDAR_TOP/*.bin")):
            assert proc.poll() is None, "synth ended before it could be killed"
            assert time.monotonic() < deadline, "no rendered file within 60 s"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    left = list(tmp_path.glob(f"{staging.prefix(out)}*"))
    assert len(left) == 1 and (left[0] / STAGING).is_file() and not out.exists()
    summary = generate(out, preset="small", scenes=2, frames=1)
    assert summary["cleared_staging"] == [str(left[0])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]
