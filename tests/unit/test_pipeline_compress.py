"""Pipeline pieces that need no training: metrics cache, building a distillation run, demo and report notes."""

from __future__ import annotations

import json

import pytest

import itkd_cli.pipeline.compress as mod
from itkd_cli.recipe.load import load_recipe


def _fake_eval(calls):
    def evaluate(recipe, model, out_dir, max_frames=None, model_cfg=None):
        calls.append(out_dir)
        return {"mAP": 0.5 + len(calls), "NDS": 0.1, "split": recipe.dataset.val_split}

    return evaluate


def test_teacher_metrics_cache_is_keyed_by_teacher_bytes_and_dataset(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(mod, "evaluate_split", _fake_eval(calls))
    recipe = load_recipe("synth-pillar", [f"dataset.root={tmp_path / 'data'}"])
    teacher = tmp_path / "t.pth"
    teacher.write_bytes(b"teacher one")
    first = mod._teacher_metrics(recipe, None, teacher, tmp_path, None)
    assert mod._teacher_metrics(recipe, None, teacher, tmp_path, None) == first and len(calls) == 1
    cached = json.loads((tmp_path / "eval_teacher" / "metrics.json").read_text())
    assert cached["cache_key"]["split"] == recipe.dataset.val_split
    teacher.write_bytes(b"teacher two")  # another teacher in the same --out: never report stale metrics
    second = mod._teacher_metrics(recipe, None, teacher, tmp_path, None)
    assert len(calls) == 2 and second["mAP"] != first["mAP"]
    mod._teacher_metrics(recipe, None, teacher, tmp_path, 3)  # other frames: evaluate again
    other_root = load_recipe("synth-pillar", [f"dataset.root={tmp_path / 'other'}"])
    mod._teacher_metrics(other_root, None, teacher, tmp_path, 3)  # other dataset: evaluate again
    assert len(calls) == 4
    other_post = load_recipe("synth-pillar", [f"dataset.root={tmp_path / 'other'}", "model.post.top_k=100"])
    mod._teacher_metrics(other_post, None, teacher, tmp_path, 3)  # boxes decoded otherwise: evaluate again
    mod._teacher_metrics(other_post, None, teacher, tmp_path, 3)
    assert len(calls) == 5


@pytest.mark.parametrize("init", [True, False])
def test_build_distillation_initialises_the_student_from_the_teacher_by_default(one_thread, tmp_path, init):
    import torch

    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    sets = ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]
    recipe = load_recipe("synth-pillar", sets + ([] if init else ["student.init_from_teacher=false"]))
    assert load_recipe("synth-pillar", sets).student.init_from_teacher  # the default
    torch.manual_seed(1)
    path = save_checkpoint(tmp_path / "teacher.pth", build_model(recipe.model), recipe, "teacher")
    run = mod.build_distillation(recipe, path, torch.device("cpu"))
    key = "vfe.pfn_layers.0.linear.weight"  # same width in teacher and neck-policy student
    assert torch.equal(run.student.state_dict()[key], run.teacher.model.state_dict()[key]) is init


def _batch_norms(model):
    import torch

    return [(name, m) for name, m in model.named_modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]


@pytest.mark.parametrize("teacher_bn", ["running", "batch"])
def test_teacher_bn_batch_gives_a_student_copy_the_teachers_targets(one_thread, tmp_path, teacher_bn):
    """At ratio 1.0 the student is a copy of its teacher: with distill.teacher_bn=batch the frozen teacher's
    outputs equal the train-mode student's (so every KD term starts at its best value); with the running
    statistics (the method) they differ wherever a batch's statistics differ from the running ones."""
    import torch

    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    sets = ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]", "student.ratio=1.0",
            f"distill.teacher_bn={teacher_bn}"]
    recipe = load_recipe("synth-pillar", sets)
    torch.manual_seed(3)
    net = build_model(recipe.model)
    for _, bn in _batch_norms(net):  # running statistics that no single batch has
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    path = save_checkpoint(tmp_path / "teacher.pth", net, recipe, "teacher")
    pair = mod.build_distillation(recipe, path, torch.device("cpu"))
    cfg = recipe.model
    nx, ny, _ = cfg.grid.grid_size
    coords = torch.unique(torch.stack([torch.zeros(60, dtype=torch.long), torch.zeros(60, dtype=torch.long),
                                       torch.randint(0, ny, (60,)), torch.randint(0, nx, (60,))], dim=1), dim=0).int()
    voxels = torch.randn(coords.shape[0], cfg.grid.max_points_per_voxel, cfg.num_point_features)
    num_points = torch.full((coords.shape[0],), cfg.grid.max_points_per_voxel, dtype=torch.int32)
    args = (voxels, num_points, coords, 1)
    with torch.no_grad():
        t_out, s_out = pair.teacher(*args), pair.student.train()(*args)
    same = torch.allclose(t_out.tasks[0].hm, s_out.tasks[0].hm, atol=1e-4) and torch.allclose(
        t_out.bev, s_out.bev, atol=1e-4)
    assert same is (teacher_bn == "batch")
    # the report evaluates the teacher on its running statistics either way (batch: the unfolded network)
    assert (pair.teacher.eval_model is pair.teacher.model) is (teacher_bn == "batch")


def test_demo_notes_a_teacher_that_learned_nothing() -> None:
    from itkd_cli.pipeline.demo import accuracy_notes
    from itkd_cli.pipeline.report import LEARNED_MAP

    assert accuracy_notes(0.34, 10, 10, "default") == []
    assert accuracy_notes(None, 10, 10, "default") == []  # no evaluation, nothing to judge
    assert accuracy_notes(LEARNED_MAP, 10, 10, "default") == []
    (small,) = accuracy_notes(0.0, 1, 1, "small")
    assert "mAP 0.0000 after 1 epoch(s) on 1 training scene(s)" in small and "use --preset default" in small
    (short,) = accuracy_notes(0.01, 2, 10, "default")
    assert "--teacher-epochs" in short and "smoke test" not in short
    (custom_split,) = accuracy_notes(0.0, 3, None, "default")  # a --set train split the world does not count
    assert "after 3 epoch(s): too little" in custom_split


def test_compress_report_notes_a_teacher_that_learned_nothing(tmp_path) -> None:
    from itkd_cli.pipeline.report import LEARNED_MAP, teacher_notes
    from itkd_cli.pipeline.report_page import write_report

    assert teacher_notes({"mAP": 0.34}, "synth_val") == []
    assert teacher_notes({"mAP": LEARNED_MAP}, "synth_val") == []
    assert teacher_notes({}, "synth_val") == []  # not evaluated: nothing to judge
    (note,) = teacher_notes({"mAP": 0.012}, "synth_val")
    assert "mAP 0.0120 on synth_val" in note and "too little to distil from" in note

    side = {"params": 10, "gmacs": 1.0, "latency_ms": 2.0, "mAP": 0.0, "NDS": 0.0}
    report = {"method": "itkd", "ratio": 0.25, "policy": "neck", "teacher_checkpoint": "t.pth",
              "student_checkpoint": "s.pth", "split": "synth_val", "frames": 4, "teacher": side,
              "student": side, "curves": None, "notes": teacher_notes(side, "synth_val")}
    _, md = write_report(tmp_path, report)
    text = md.read_text()
    assert "## Notes" in text and "- the teacher scores mAP 0.0000 on synth_val" in text
    _, md = write_report(tmp_path, {**report, "notes": []})
    assert "## Notes" not in md.read_text()
