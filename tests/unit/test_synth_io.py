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


def test_unlabeled_scenes_leave_the_labeled_world_as_it_was(tmp_path):
    from itkd_cli.data.synth import TRAIN_SPLIT, UNLABELED_SPLIT, VAL_SPLIT

    plain = generate(tmp_path / "a", preset="small", scenes=2, frames=2, seed=7)
    more = generate(tmp_path / "b", preset="small", scenes=2, frames=2, seed=7, unlabeled_scenes=2)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    points = [k for k in fa if k.endswith(".pcd.bin")]
    assert points and all(fb[k] == fa[k] for k in points)  # every point file of the labeled scenes, byte for byte
    assert len([k for k in fb if k.endswith(".pcd.bin")]) == 2 * len(points)  # 2 more scenes, sweeps included
    for name in TABLES:
        if name != "map":  # the map lists every log, the new scenes' too
            rows = json.loads(fb[f"{VERSION}/{name}.json"])
            assert all(row in rows for row in json.loads(fa[f"{VERSION}/{name}.json"])), name
    splits = json.loads(fb[f"{VERSION}/splits.json"])
    assert splits == {**json.loads(fa[f"{VERSION}/splits.json"]), UNLABELED_SPLIT: ["scene-0003", "scene-0004"]}
    assert set(splits) == {TRAIN_SPLIT, VAL_SPLIT, UNLABELED_SPLIT}
    # the new scenes: keyframes and sweeps, no annotation
    tables = {n: json.loads(fb[f"{VERSION}/{n}.json"]) for n in ("scene", "sample", "sample_data", "sample_annotation")}
    new = {s["token"] for s in tables["scene"] if s["name"] in splits[UNLABELED_SPLIT]}
    samples = {s["token"] for s in tables["sample"] if s["scene_token"] in new}
    rows = [r for r in tables["sample_data"] if r["sample_token"] in samples]
    assert len(samples) == 4 and sum(not r["is_key_frame"] for r in rows) == 4 and len(rows) == 8
    assert not any(a["sample_token"] in samples for a in tables["sample_annotation"])
    assert {k: more[k] for k in ("keyframes", "sweeps", "annotations")} == {k: plain[k] for k in
                                                                          ("keyframes", "sweeps", "annotations")}
    assert more["unlabeled_scenes"] == 2 and more["unlabeled_frames"] == 8 and "unlabeled_scenes" not in plain
    # the marker: unchanged without the flag (older worlds stay reusable), the count recorded with it
    args_a, args_b = (json.loads(fa[MARKER])["args"], json.loads(fb[MARKER])["args"])
    assert "unlabeled_scenes" not in args_a and args_b == {**args_a, "unlabeled_scenes": 2}
    assert generate(tmp_path / "b", preset="small", scenes=2, frames=2, seed=7, unlabeled_scenes=2)["reused"]
    with pytest.raises(ItkdError, match="other settings .*--unlabeled-scenes 2"):
        generate(tmp_path / "b", preset="small", scenes=2, frames=2, seed=7)
    with pytest.raises(ItkdError, match="--unlabeled-scenes: -1 must be >= 0"):
        generate(tmp_path / "c", preset="small", unlabeled_scenes=-1)


def test_cli_unlabeled_scenes(tmp_path):
    res = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "u"), "--preset", "small", "--frames", "1",
                                   "--unlabeled-scenes", "1", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["splits"]["synth_unlabeled"] == 1 and summary["unlabeled_scenes"] == 1
