"""Synthetic world: determinism, reuse of a finished folder, refusal of foreign folders, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from itkd_cli.cli.main import app
from itkd_cli.core.errors import ItkdError
from itkd_cli.data.synth import MARKER, VERSION, generate
from itkd_cli.data.synth.presets import get_preset
from itkd_cli.data.synth.scene import sweep_times
from itkd_cli.data.synth.writer import TABLES


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (generate(tmp_path / n, preset="small", scenes=2, frames=2, seed=s) for n, s in
               (("a", 7), ("b", 7), ("c", 8)))
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb
    assert fa.keys() != fc.keys() or fa != fc
    assert {f"{VERSION}/{t}.json" for t in TABLES} | {f"{VERSION}/splits.json", MARKER} <= set(fa)
    assert a["keyframes"] == 4 and a["sweeps"] == 2 * len(sweep_times(2, get_preset("small").sweeps_between)) - 4
    assert not any(p.name.startswith(".a.synth-") for p in tmp_path.iterdir()), "temp folder left behind"


def test_reuse_and_refusals(tmp_path):
    out = tmp_path / "d"
    first = generate(out, preset="small", scenes=2, frames=1, seed=1)
    again = generate(out, preset="small", scenes=2, frames=1, seed=1)
    assert again["reused"] and not first["reused"]
    assert again["annotations"] == first["annotations"]
    with pytest.raises(ItkdError, match="other settings"):
        generate(out, preset="small", scenes=2, frames=1, seed=2)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ItkdError, match="not empty"):
        generate(foreign, preset="small", scenes=2, frames=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate(empty, preset="small", scenes=2, frames=1)["keyframes"] == 2
    for kwargs, field in (({"preset": "nope"}, "--preset"), ({"scenes": 1}, "--scenes"), ({"frames": 0}, "--frames")):
        with pytest.raises(ItkdError, match=field):
            generate(tmp_path / "bad", **{"preset": "small", **kwargs})


def test_points_are_sensor_frame_lidar_sweeps(tmp_path):
    generate(tmp_path / "s", preset="small", scenes=2, frames=1, seed=4)
    sd = json.loads((tmp_path / "s" / VERSION / "sample_data.json").read_text())
    pts = np.fromfile(tmp_path / "s" / sd[0]["filename"], dtype=np.float32).reshape(-1, 5)
    dist = np.linalg.norm(pts[:, :2], axis=1)
    assert dist.min() > 0.9 and dist.max() < 70.5  # sensor at the origin, 70 m range
    ground = pts[dist < 10, 2]
    assert abs(np.median(ground) + 1.84) < 0.1  # the LiDAR sits 1.84 m above a flat ground
    assert 0 <= pts[:, 3].min() and pts[:, 3].max() <= 255


def test_cli_json_and_user_error(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "c"), "--preset", "small", "--frames", "1",
                              "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["version"] == VERSION and summary["keyframes"] == 2
    res = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--preset", "huge"])
    assert res.exit_code == 2 and "unknown preset" in res.output


def test_interrupted_run_leaves_nothing(tmp_path):
    def stop(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "cut", preset="small", scenes=2, frames=2, progress=stop)
    assert list(tmp_path.iterdir()) == []
