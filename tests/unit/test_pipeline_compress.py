"""Compress pipeline pieces that need no training: the teacher-metrics cache and --resume checks."""

from __future__ import annotations

import json

import itkd_cli.pipeline.compress as mod
from itkd_cli.recipe.load import load_recipe


def _fake_eval(calls):
    def evaluate(recipe, model, out_dir, max_frames=None, model_cfg=None):
        calls.append(out_dir)
        return {"mAP": 0.5 + len(calls), "NDS": 0.1, "split": recipe.dataset.val_split}

    return evaluate


def test_teacher_metrics_cache_is_keyed_by_teacher_bytes_and_dataset(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(mod, "evaluate_nuscenes", _fake_eval(calls))
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


def test_init_from_teacher_keeps_leading_channels(one_thread):
    import torch

    from itkd_cli.models.build import build_model
    from itkd_cli.models.student import derive_student
    from itkd_cli.pipeline.teacher_student import channel_select

    cfg = load_recipe("synth-pillar", ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]).model
    teacher, student = build_model(cfg), build_model(derive_student(cfg, 0.25, "neck"))
    copied = channel_select(student, teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert copied == len(s_state)  # every student tensor fits inside its teacher tensor
    w_s, w_t = s_state["backbone_2d.blocks.0.1.weight"], t_state["backbone_2d.blocks.0.1.weight"]
    assert w_s.shape[0] < w_t.shape[0]
    assert torch.equal(w_s, w_t[: w_s.shape[0], : w_s.shape[1]])
    assert torch.equal(s_state["vfe.pfn_layers.0.linear.weight"], t_state["vfe.pfn_layers.0.linear.weight"])
