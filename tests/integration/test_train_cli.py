"""`itkd train` end to end on the small synthetic world (shrunken model so that steps stay cheap)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from itkd_cli.cli.main import app

SMALL_MODEL = [
    "model.grid.point_range=[-20.48, -20.48, -5.0, 20.48, 20.48, 3.0]", "model.grid.voxel_size=[0.32, 0.32, 8.0]",
    "model.vfe.filters=[16]",
    "model.backbone_2d.num_filters=[8, 8, 8]", "model.backbone_2d.num_upsample_filters=[8, 8, 8]",
    "model.head.shared_conv_channels=8", "model.head.head_conv_channels=8",
    "dataset.workers=0", "train.log_every=1",
]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(app, ["--quiet", "data", "synth", "--preset", "small", "--out", str(root)])
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.slow
def test_train_writes_checkpoint_metrics_and_resumes(world, tmp_path):
    run = tmp_path / "run"
    common = _sets(f"dataset.root={world}", *SMALL_MODEL)
    result = CliRunner().invoke(app, ["--quiet", "train", "--recipe", "synth-pillar", "--out", str(run), "--json",
                                      "--no-eval", *common, *_sets("train.max_steps=2")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoint"] == str(run / "last.pth")
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["format"] == "itkd" and ckpt["role"] == "teacher" and ckpt["step"] == 2
    assert ckpt["recipe"]["dataset"]["root"] == str(world) and ckpt["optimizer"] is not None
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and all(r["loss"] > 0 for r in lines)
    assert (run / "recipe.yaml").is_file() and (run / "tb").is_dir()
    # --resume continues in the same folder, with the run's stored recipe, up to the new limit
    result = CliRunner().invoke(app, ["--quiet", "train", "--resume", str(run), "--no-eval",
                                      *_sets("train.max_steps=3")])
    assert result.exit_code == 0, result.output
    assert torch.load(run / "last.pth", weights_only=True)["step"] == 3
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_full_run_evaluates_at_the_end(world, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["--quiet", "train", "--out", str(run), "--json",
                                      *_sets(f"dataset.root={world}", *SMALL_MODEL, "train.epochs=1")])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and {"mAP", "NDS"} <= set(ckpt["metrics"])
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 1 and evals[0]["eval"]["mAP"] == ckpt["metrics"]["mAP"]
    assert (run / "eval" / "epoch_1").is_dir()


@pytest.mark.slow
def test_train_under_torchrun(torchrun, world, tmp_path):
    """Two processes share each epoch (half the steps of one process at the same batch size); rank 0 writes."""
    run = tmp_path / "ddp"
    common = _sets(f"dataset.root={world}", *SMALL_MODEL, "train.epochs=2", "train.batch_size=1")
    proc = torchrun(2, "--quiet", "train", "--recipe", "synth-pillar", "--out", run, "--json", "--no-eval", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["checkpoint"] == str(run / "last.pth")  # one JSON document: rank 0's
    ckpt = torch.load(run / "last.pth", weights_only=True)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ckpt["epoch"] == 2 and steps == list(range(1, ckpt["step"] + 1))
    alone = tmp_path / "alone"
    result = CliRunner().invoke(app, ["--quiet", "train", "--recipe", "synth-pillar", "--out", str(alone), "--json",
                                      "--no-eval", *common])
    assert result.exit_code == 0, result.output
    frames = torch.load(alone / "last.pth", weights_only=True)["step"] // 2  # batch 1, 2 epochs
    assert ckpt["step"] == 2 * -(-frames // 2)  # each process: half of every epoch, rounded up


def test_missing_dataset_is_a_user_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "--recipe", "synth-pillar", "--out", str(tmp_path / "run"),
                                      *_sets(f"dataset.root={tmp_path / 'none'}")])
    assert result.exit_code == 2
    assert "itkd data synth --out" in result.output and "Traceback" not in result.output


def test_resume_and_init_from_are_exclusive(tmp_path):
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--init-from", str(tmp_path / "x.pth")])
    assert result.exit_code == 2 and "pick one" in result.output


def test_unwritable_out_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["train", "--out", str(blocker / "run")])
    assert result.exit_code == 2 and "not writable" in result.output
