"""`itkd compress` end to end on the small synthetic world: every method, both ratios, both policies.

One tiny teacher (2 steps of `itkd train`) is shared by the module; each compress run trains the
student one step, evaluates both networks officially and writes student.pth, report.* and curves.png.
Bad input must exit 2 with one line before any training and leave --out untouched (fast tests).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from itkd_cli.models.student import derive_student
from itkd_cli.pipeline.report import LEARNED_MAP
from itkd_cli.recipe.load import load_recipe, recipe_from_dict

# Shrunken synth-pillar (64 x 64 pillars, narrow layers) so that each compress run stays cheap on CPU.
TINY_MODEL = (
    "model.grid.point_range=[-20.48, -20.48, -5.0, 20.48, 20.48, 3.0]", "model.grid.voxel_size=[0.64, 0.64, 8.0]",
    "model.vfe.filters=[16]", "model.backbone_2d.num_filters=[16, 16, 16]",
    "model.backbone_2d.num_upsample_filters=[16, 16, 16]",
    "model.head.shared_conv_channels=8", "model.head.head_conv_channels=8",
)
SIDES = ("params", "gmacs", "latency_ms", "mAP", "NDS")
KD_PREFIXES = ("ae.", "autoencoder", "adapter", "fusion", "distill", "kd.", "teacher")


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from itkd_cli.data.synth.render import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, preset="small")
    return root


@pytest.fixture(scope="module")
def teacher(world, tmp_path_factory) -> Path:
    """A tiny trained teacher (2 steps) of the embedded synth-pillar recipe, shrunken by TINY_MODEL."""
    from typer.testing import CliRunner

    from itkd_cli.cli.main import app

    run = tmp_path_factory.mktemp("teacher")
    args = ["--quiet", "train", "--recipe", "synth-pillar", "--out", str(run), "--no-eval",
            *_sets(f"dataset.root={world}", "train.max_steps=2", "train.batch_size=2", "dataset.workers=0",
                  *TINY_MODEL)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run / "last.pth"


@pytest.fixture(scope="module")
def untrained_teacher(tmp_path_factory) -> Path:
    """An itkd synth-pillar checkpoint with random weights: enough for checks that fail before training."""
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    recipe = load_recipe("synth-pillar")
    path = tmp_path_factory.mktemp("untrained") / "teacher.pth"
    return save_checkpoint(path, build_model(recipe.model), recipe, "teacher")


def _compress(cli, teacher: Path, out: Path, world: Path, *flags: str):
    return cli("--quiet", "compress", "--teacher", teacher, "--out", out, "--json", *flags,
               *_sets(f"dataset.root={world}", "train.max_steps=1", "train.batch_size=2", "dataset.workers=0"))


def _check_run(out: Path, teacher: Path, ratio: float, policy: str, method: str) -> None:
    """student.pth holds only the derived student; report.* compare both sides; curves.png exists."""
    ckpt = torch.load(out / "student.pth", weights_only=True)
    assert ckpt["format"] == "itkd" and ckpt["role"] == "student"
    t_ckpt = torch.load(teacher, weights_only=True)
    t_cfg = recipe_from_dict(t_ckpt["recipe"]).model
    s_recipe = recipe_from_dict(ckpt["recipe"])
    assert s_recipe.model == derive_student(t_cfg, ratio, policy)
    assert s_recipe.distill.method == method and s_recipe.student.ratio == ratio
    keys = set(ckpt["model_state"])
    assert not [k for k in keys if k.startswith(KD_PREFIXES)], "KD/teacher modules leaked into student.pth"
    assert "aux_state" not in ckpt
    # exactly the student's own state dict, with the student's shapes (not the teacher's)
    from itkd_cli.models.build import build_model

    expected = build_model(s_recipe.model).state_dict()
    assert keys == set(expected)
    assert all(ckpt["model_state"][k].shape == expected[k].shape for k in keys)
    if ratio < 1:
        assert any(ckpt["model_state"][k].shape != t_ckpt["model_state"][k].shape for k in keys)
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == method and report["ratio"] == ratio and report["policy"] == policy
    for side in ("teacher", "student"):
        assert all(report[side].get(k) is not None for k in SIDES), (side, report[side])
    assert report["student"]["params"] < report["teacher"]["params"]
    assert report["student"]["gmacs"] < report["teacher"]["gmacs"]
    md = (out / "report.md").read_text()
    assert all(label in md for label in ("params", "MACs (G)", "CPU latency (ms)", "mAP", "NDS"))
    # a note exactly when the teacher scored below LEARNED_MAP (the module's 2-step teacher does)
    learned = report["teacher"]["mAP"] >= LEARNED_MAP
    assert (report["notes"] == []) == learned and ("too little to distil from" in md) != learned
    assert (out / "curves.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("ratio,method,policy", [
    (0.25, "none", "neck"), (0.25, "hinton", "neck"), (0.25, "fitnet", "neck"), (0.25, "sparsekd", "neck"),
    (0.25, "itkd", "neck"), (0.5, "itkd", "neck"), (0.25, "itkd", "full"),
])
def test_compress_end_to_end(cli, world, teacher, tmp_path, ratio, method, policy):
    out = tmp_path / "run"
    result = _compress(cli, teacher, out, world, "--ratio", str(ratio), "--method", method, "--policy", policy)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["student_checkpoint"] == str(out / "student.pth")
    _check_run(out, teacher, ratio, policy, method)


@pytest.mark.slow
def test_compress_under_torchrun(torchrun, world, teacher, tmp_path):
    """Two data-parallel processes (gloo): one report, one student, a log written by rank 0 alone."""
    out = tmp_path / "ddp"
    proc = torchrun(2, "--quiet", "compress", "--teacher", teacher, "--out", out, "--json", "--ratio", "0.25",
                    "--method", "itkd", *_sets(f"dataset.root={world}", "train.max_steps=2", "train.batch_size=1",
                                               "dataset.workers=0", "train.log_every=1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["student_checkpoint"] == str(out / "student.pth")  # one JSON: rank 0's
    _check_run(out, teacher, 0.25, "neck", "itkd")
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps[:2] == [1, 2] and len(steps) == len(set(steps))


@pytest.mark.slow
def test_compress_never_changes_the_teacher(cli, world, teacher, tmp_path, monkeypatch):
    """Neither the teacher file nor any teacher tensor (weights, BN running stats) changes during KD."""
    import itkd_cli.pipeline.compress as mod

    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()
    before = torch.load(teacher, weights_only=True)["model_state"]
    seen = []
    real_build = mod.build_distillation

    def spy(*args, **kwargs):
        run = real_build(*args, **kwargs)
        seen.append(run.teacher.model)
        return run

    monkeypatch.setattr(mod, "build_distillation", spy)
    result = _compress(cli, teacher, tmp_path / "run", world, "--method", "itkd", "--set", "train.max_steps=2")
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(teacher.read_bytes()).hexdigest() == digest
    after = seen[0].state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k].cpu())]
    assert not changed, f"teacher tensors changed: {changed[:5]}"
    assert not any(p.requires_grad for p in seen[0].parameters())


def test_a_real_compress_with_a_failed_gate_writes_everything_then_exits_1(cli, world, teacher, tmp_path):
    """The one fast real run: 1 step, both networks evaluated, --min-map 0.99 fails, --max-drop 1 passes."""
    from itkd_cli.pipeline.report import plot_ap_per_class

    out = tmp_path / "run"
    result = _compress(cli, teacher, out, world, "--min-map", "0.99", "--max-drop", "1")
    assert result.exit_code == 1, result.output
    report = json.loads((out / "report.json").read_text())
    s_map = report["student"]["mAP"]
    assert _error_lines(result.output) == [f"error: gate --min-map failed: student mAP {s_map:.4f} is below 0.99"]
    assert [(g["name"], g["threshold"], g["passed"]) for g in report["gates"]] == [("min_map", 0.99, False),
                                                                                   ("max_drop", 1.0, True)]
    assert report["gates"][0]["value"] == s_map and json.loads(result.stdout)["gates"] == report["gates"]
    for name in ("student.pth", "report.md", "report.html", "curves.png", "ap_per_class.png", "recipe.yaml"):
        assert (out / name).stat().st_size > 0, name
    # the chart's bars are the report's per-class APs; the recipe beside it reruns the same job
    drawn = plot_ap_per_class(report, tmp_path / "again.png")
    assert drawn["student"] == [report["student"]["per_class"][c]["AP"] for c in drawn["classes"]]
    assert load_recipe(out / "recipe.yaml").model_dump(mode="json") == report["recipe"]
    assert "| --min-map | student mAP | 0.9900 |" in (out / "report.md").read_text()


def _assert_rejected(result, out: Path, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = _error_lines(result.output)
    assert len(lines) == 1, result.output
    assert all(w in lines[0] for w in words), lines
    assert not out.exists(), "a rejected run must not write to --out"


def test_missing_teacher(cli, tmp_path):
    out = tmp_path / "out"
    result = cli("--quiet", "compress", "--teacher", tmp_path / "nope.pth", "--out", out)
    _assert_rejected(result, out, "nope.pth")


def test_unreadable_teacher(cli, tmp_path):
    bad = tmp_path / "teacher.pth"
    bad.write_text("not a checkpoint\n")
    out = tmp_path / "out"
    _assert_rejected(cli("--quiet", "compress", "--teacher", bad, "--out", out), out, "teacher.pth")


def test_teacher_of_another_architecture(cli, untrained_teacher, tmp_path):
    out = tmp_path / "out"
    result = cli("--quiet", "compress", "--teacher", untrained_teacher, "--recipe", "synth-voxel", "--out", out)
    _assert_rejected(result, out, "model")


@pytest.mark.parametrize("ratio", ["0", "1.5"])
def test_ratio_out_of_range(cli, untrained_teacher, tmp_path, ratio):
    out = tmp_path / "out"
    result = cli("--quiet", "compress", "--teacher", untrained_teacher, "--ratio", ratio, "--out", out)
    _assert_rejected(result, out, "--ratio")


def test_unknown_method(cli, untrained_teacher, tmp_path):
    out = tmp_path / "out"
    result = cli("--quiet", "compress", "--teacher", untrained_teacher, "--method", "magic", "--out", out)
    _assert_rejected(result, out, "method")
