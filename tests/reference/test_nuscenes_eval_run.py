"""End to end: model inference over a split -> decode -> writer -> DetectionEval, in memory and via the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from itkd_cli.recipe import load_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from itkd_cli.data import synth
    root = tmp_path_factory.mktemp("world") / "synth"
    synth.generate(root, preset="small")
    return root


def _recipe(root: Path):
    # A fresh network scores ~sigmoid(hm_init_bias) = 0.1 everywhere: a lower threshold keeps boxes flowing.
    return load_recipe("synth-pillar", [f"dataset.root={root}", "dataset.workers=0", "eval.batch_size=2",
                                        "model.post.score_threshold=0.05"])


def test_evaluate_in_memory_model_subset(world: Path, tmp_path: Path) -> None:
    import torch

    from itkd_cli.evaluate.run import evaluate_nuscenes
    from itkd_cli.models.build import build_model

    recipe = _recipe(world)
    torch.manual_seed(0)
    model = build_model(recipe.model).train()  # as the training loop would hand it over
    metrics = evaluate_nuscenes(recipe, model, tmp_path / "ev", max_frames=2, render_curves=False)
    assert model.training  # mode restored for the training loop
    assert metrics["frames"] == 2 and metrics["samples"] == 2 and metrics["subset"] is True
    assert 0.0 <= metrics["mAP"] <= 1.0 and set(metrics["per_class"]) == set(recipe.dataset.class_names)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["mAP"] == metrics["mAP"]
    results = json.loads((tmp_path / "ev" / "results_nusc.json").read_text())["results"]
    assert len(results) == 3  # every sample of the val split, unevaluated ones empty
    assert sum(bool(v) for v in results.values()) == 2
    assert not any(isinstance(v, float) and math.isnan(v) for v in saved.values())


def test_cli_eval_json(world: Path, tmp_path: Path) -> None:
    import torch

    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    recipe = _recipe(world)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "t.pth", build_model(recipe.model), recipe, "teacher")
    out = tmp_path / "ev"
    res = subprocess.run([sys.executable, "-m", "itkd_cli.cli.main", "eval", "-c", str(ckpt), "--out", str(out),
                          "--json", "--device", "cpu"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads(res.stdout)  # stdout holds only the JSON
    assert metrics["frames"] == 3 and metrics["subset"] is False and metrics["split"] == "synth_val"
    assert (out / "metrics_summary.json").is_file() and (out / "plots" / "summary.pdf").is_file()


def test_cli_eval_quiet_keeps_the_results(world: Path, tmp_path: Path) -> None:
    """--quiet: the metrics table, the subset warning and where metrics.json went stay; status lines go."""
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    recipe = _recipe(world)
    ckpt = save_checkpoint(tmp_path / "t.pth", build_model(recipe.model), recipe, "teacher")
    out = tmp_path / "ev"
    res = subprocess.run([sys.executable, "-m", "itkd_cli.cli.main", "--quiet", "eval", "-c", str(ckpt), "--out",
                          str(out), "--max-frames", "2", "--no-curves", "--device", "cpu"],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "300"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "evaluating" not in res.stderr and "mAP" in res.stderr
    assert "--max-frames: metrics cover 2 frames" in res.stderr and f"wrote {out / 'metrics.json'}" in res.stderr
