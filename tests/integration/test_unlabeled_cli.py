"""Distillation on unlabeled frames from the CLI, as a user runs it on the embedded world: `itkd data synth
--unlabeled-scenes`, then `itkd compress` with the pool as a split, as the nuScenes sweeps and as a folder of point
files; and the pool's bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = ("model.grid.point_range=[-20.48, -20.48, -5.0, 20.48, 20.48, 3.0]", "model.vfe.filters=[16]",
        "model.backbone_2d.num_filters=[16, 16, 16]", "model.backbone_2d.num_upsample_filters=[16, 16, 16]",
        "model.head.shared_conv_channels=8", "model.head.head_conv_channels=8", "dataset.workers=0")
# a barely trained teacher scores about 0.1-0.2 everywhere: take every box it decodes
POOLS = {"split": "{source: split, split: synth_unlabeled, score_threshold: 0.1}",
         "sweeps": "{source: sweeps, score_threshold: 0.1}"}


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def itkd():
    from typer.testing import CliRunner

    from itkd_cli.cli.main import app

    def invoke(*args: str):
        return CliRunner().invoke(app, ["--quiet", *map(str, args)], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="module")
def world_and_teacher(itkd, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("unlabeled")
    res = itkd("data", "synth", "--preset", "small", "--unlabeled-scenes", "1", "--out", base / "world", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["splits"]["synth_unlabeled"] == 1
    res = itkd("train", "--recipe", "synth-pillar", "--out", base / "teacher", "--no-eval",
               *_sets(f"dataset.root={base / 'world'}", "train.max_steps=20", "train.batch_size=2", *TINY))
    assert res.exit_code == 0, res.output
    return base / "world", base / "teacher" / "last.pth"


@pytest.mark.parametrize("method,pool", [("itkd", "split"), ("sparsekd", "sweeps"), ("hinton", "split")])
def test_compress_learns_from_the_pool(itkd, world_and_teacher, tmp_path, method, pool) -> None:
    world, teacher = world_and_teacher
    out = tmp_path / "run"
    res = itkd("compress", "--teacher", teacher, "--ratio", "0.25", "--method", method, "--out", out, "--json",
               *_sets(f"dataset.root={world}", "train.max_steps=3", "train.batch_size=2", "train.log_every=1",
                      f"dataset.unlabeled={POOLS[pool]}"))
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    facts = report["unlabeled"]
    assert facts["source"] == pool and facts["frames"] > 0 and facts["ratio"] == 0.5
    steps = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(s["unlabeled_frames"] == 1 for s in steps)  # batch of 2 at ratio 0.5: one pool frame each
    assert all(s["lam"] == 0.5 for s in steps)  # itkd: the default form's pool lambda; baselines: baseline.lam
    assert "Unlabeled pool" in (out / "report.md").read_text()


def test_the_student_alone_ignores_the_pool(itkd, world_and_teacher, tmp_path) -> None:
    world, teacher = world_and_teacher
    out = tmp_path / "alone"
    res = itkd("compress", "--teacher", teacher, "--ratio", "0.25", "--method", "none", "--out", out,
               *_sets(f"dataset.root={world}", "train.max_steps=2", "train.batch_size=2", "train.log_every=1",
                      f"dataset.unlabeled={POOLS['split']}"))
    assert res.exit_code == 0, res.output
    steps = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all("unlabeled_frames" not in s for s in steps)
    assert any("none" in note for note in json.loads((out / "report.json").read_text())["notes"])


@pytest.mark.parametrize("pool,expected", [
    ("{source: folder, folder: MISSING}", "dataset.unlabeled.folder"),
    ("{source: folder, folder: FAR}", "lie inside model.grid.point_range"),
    ("{source: split, split: synth_unlabeled, score_threshold: 0.99}", "dataset.unlabeled.score_threshold 0.99"),
    ("{source: split, split: nowhere}", "dataset.unlabeled.split"),
    ("{source: split, split: synth_val}", "dataset.unlabeled.split: 'synth_val' shares 1 of its 1 scenes with "
                                          "dataset.val_split 'synth_val'"),
])
def test_a_bad_pool_is_one_line_and_exit_2(itkd, world_and_teacher, tmp_path, pool, expected) -> None:
    import numpy as np

    world, teacher = world_and_teacher
    far = tmp_path / "far"
    far.mkdir()
    for src in sorted((world / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))[:3]:  # real frames, 500 m away
        points = np.fromfile(src, np.float32).reshape(-1, 5)
        points[:, :3] += 500.0
        points.tofile(far / src.name)
    pool = pool.replace("MISSING", str(tmp_path / "missing")).replace("FAR", str(far))
    out = tmp_path / "run"
    res = itkd("compress", "--teacher", teacher, "--ratio", "0.25", "--out", out,
               *_sets(f"dataset.root={world}", "train.max_steps=2", f"dataset.unlabeled={pool}"))
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and expected in errors[0], res.output
    assert "Traceback" not in res.output and not out.exists()
    shutil.rmtree(far)
