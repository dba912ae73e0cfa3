"""Pipeline pieces that need no training: metrics cache, --resume checks, channel selection, demo notes."""

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


@pytest.mark.parametrize("method", ["none", "hinton"])
def test_student_alone_step_never_runs_the_teacher(monkeypatch, method):
    """The student-alone step is the reference KD step times are compared with: no teacher forward."""
    from types import SimpleNamespace

    import torch

    from itkd_cli.core.types import DetectorOutput
    from itkd_cli.distill.baselines import HintonKD, NoKD
    from itkd_cli.train.loss import DetLoss

    calls = []
    hm = torch.zeros(1, 1, 2, 2, requires_grad=True)
    out = DetectorOutput(bev=torch.zeros(1, 1, 2, 2), tasks=(SimpleNamespace(hm=hm),))

    def teacher(*args):
        calls.append("teacher")
        return DetectorOutput(bev=out.bev, tasks=(SimpleNamespace(hm=torch.ones(1, 1, 2, 2)),))

    def fake_det(s_out, targets, head_cfg):
        return DetLoss(total=s_out.tasks[0].hm.sum() + 2.0, hm=torch.zeros(()), loc=torch.zeros(()))

    monkeypatch.setattr(mod, "centerpoint_loss", fake_det)
    pair = SimpleNamespace(teacher=teacher, student=lambda *args: out, student_cfg=SimpleNamespace(head=None))
    kd = NoKD() if method == "none" else HintonKD(2.0)
    batch = SimpleNamespace(voxels=None, num_points=None, coords=None, batch_size=1, targets=())
    step = mod.distill_step_fn(pair, kd, lambda progress: 0.0 if method == "none" else 0.5, None)
    loss, logs = step(batch, 0.3)
    assert calls == ([] if method == "none" else ["teacher"])
    if method == "none":
        assert loss.item() == 2.0 and logs == {"det": 2.0}
    else:  # the teacher's output reached the KD term
        assert logs["hm"] > 0 and loss.item() == pytest.approx(0.5 * 2.0 + 0.5 * logs["hm"]) and logs["lam"] == 0.5


def test_kd_step_past_kd_until_is_a_detection_step_without_teacher(monkeypatch):
    from types import SimpleNamespace

    import torch

    from itkd_cli.core.types import DetectorOutput
    from itkd_cli.distill.baselines import HintonKD
    from itkd_cli.train.loss import DetLoss

    calls, seen = [], []
    out = DetectorOutput(bev=torch.zeros(1, 1, 2, 2), tasks=(SimpleNamespace(hm=torch.zeros(1, 1, 2, 2)),))
    monkeypatch.setattr(mod, "centerpoint_loss",
                        lambda s_out, targets, head_cfg: DetLoss(torch.tensor(3.0), torch.zeros(()), torch.zeros(())))
    pair = SimpleNamespace(teacher=lambda *a: calls.append("teacher") or out, student=lambda *a: out,
                           student_cfg=SimpleNamespace(head=None))

    def lam_at(progress):
        seen.append(progress)
        return 0.5 if progress < 0.5 else 0.0

    step = mod.distill_step_fn(pair, HintonKD(2.0), lam_at, None)
    batch = SimpleNamespace(voxels=None, num_points=None, coords=None, batch_size=1, targets=())
    loss, logs = step(batch, 0.75)
    assert calls == [] and seen == [0.75] and loss.item() == 3.0 and logs == {"det": 3.0, "lam": 0.0}
    step(batch, 0.25)
    assert calls == ["teacher"]


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


def _batch_norms(model):
    import torch

    return [(name, m) for name, m in model.named_modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]


def _kill_channels_beyond(teacher, student) -> None:
    """Zero gamma and beta of every teacher BN channel the student does not keep: those channels output 0."""
    import torch

    s_modules = dict(student.named_modules())
    for name, bn in _batch_norms(teacher):
        keep = s_modules[name].num_features
        with torch.no_grad():
            bn.weight[keep:] = 0.0
            bn.bias[keep:] = 0.0


@pytest.mark.parametrize("policy", ["neck", "full"])
@pytest.mark.parametrize("ratio", [0.5, 0.25])
@pytest.mark.parametrize("recipe", ["synth-pillar", "synth-voxel"])
def test_channel_select_reproduces_a_teacher_whose_extra_channels_are_dead(one_thread, recipe, ratio, policy):
    # Reference: a teacher whose dropped channels output exactly 0 computes the same function as the
    # selected student, if selection keeps the right channels of every concat (neck -> head, PFN layers).
    import torch

    from itkd_cli.models.build import build_model
    from itkd_cli.models.student import concat_input_index, derive_student
    from itkd_cli.pipeline.teacher_student import channel_select

    cfg = load_recipe(recipe, ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]).model
    student_cfg = derive_student(cfg, ratio, policy)
    torch.manual_seed(0)
    teacher, student = build_model(cfg).eval(), build_model(student_cfg).eval()
    for _, bn in _batch_norms(teacher):
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)  # non-trivial BN so a wrong channel changes the output
        torch.nn.init.uniform_(bn.bias, -0.2, 0.2)
    _kill_channels_beyond(teacher, student)
    assert channel_select(student, teacher, concat_input_index(cfg, student_cfg)) == len(student.state_dict())
    nx, ny, nz = cfg.grid.grid_size
    n = 40
    coords = torch.stack([torch.zeros(n, dtype=torch.long), torch.randint(0, nz, (n,)),
                          torch.randint(0, ny, (n,)), torch.randint(0, nx, (n,))], dim=1).int()
    coords = torch.unique(coords, dim=0)
    voxels = torch.randn(coords.shape[0], cfg.grid.max_points_per_voxel, cfg.num_point_features)
    num_points = torch.full((coords.shape[0],), cfg.grid.max_points_per_voxel, dtype=torch.int32)
    with torch.no_grad():
        out_t, out_s = teacher(voxels, num_points, coords, 1), student(voxels, num_points, coords, 1)
    for task_t, task_s in zip(out_t.tasks, out_s.tasks):
        for name in ("hm", "center", "center_z", "dim", "rot", "vel"):
            assert torch.allclose(getattr(task_t, name), getattr(task_s, name), atol=1e-4), name
    # and the plain leading-channel selection (no concat index) does NOT reproduce it
    channel_select(student, teacher)
    with torch.no_grad():
        assert not torch.allclose(teacher(voxels, num_points, coords, 1).tasks[0].hm,
                                  student(voxels, num_points, coords, 1).tasks[0].hm, atol=1e-4)


@pytest.mark.parametrize("init", [True, False])
def test_build_pair_initialises_the_student_from_the_teacher_by_default(one_thread, tmp_path, init):
    import torch

    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint
    from itkd_cli.pipeline.teacher_student import build_pair

    sets = ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]
    recipe = load_recipe("synth-pillar", sets + ([] if init else ["student.init_from_teacher=false"]))
    assert load_recipe("synth-pillar", sets).student.init_from_teacher  # the default
    torch.manual_seed(1)
    path = save_checkpoint(tmp_path / "teacher.pth", build_model(recipe.model), recipe, "teacher")
    pair = build_pair(recipe, path, torch.device("cpu"))
    key = "vfe.pfn_layers.0.linear.weight"  # same width in teacher and neck-policy student
    assert torch.equal(pair.student.state_dict()[key], pair.teacher.state_dict()[key]) is init


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
    pair, _, _ = mod.build_distillation(recipe, path, torch.device("cpu"))
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


def test_kd_warmup_trains_the_kd_modules_and_leaves_the_student_to_detection(monkeypatch):
    """Before distill.kd_warmup the KD loss reaches the adapter but not the student; after it, both."""
    from types import SimpleNamespace

    import torch

    from itkd_cli.core.types import DetectorOutput, TaskHeadOutput
    from itkd_cli.distill.baselines import FitNetKD
    from itkd_cli.train.loss import DetLoss

    torch.manual_seed(0)
    neck = torch.nn.Conv2d(2, 2, 1)  # the student: its output is the tapped BEV map

    def student(*args):
        bev = neck(torch.ones(1, 2, 3, 3))
        z = torch.zeros(1, 1, 3, 3)
        return DetectorOutput(bev=bev, tasks=(TaskHeadOutput(bev[:, :1], z, z, z, z, None),))

    teacher_bev = torch.randn(1, 4, 3, 3)
    teacher = lambda *a: DetectorOutput(bev=teacher_bev, tasks=())  # noqa: E731
    monkeypatch.setattr(mod, "centerpoint_loss",
                        lambda s_out, targets, head_cfg: DetLoss(s_out.bev.sum(), torch.zeros(()), torch.zeros(())))
    pair = SimpleNamespace(teacher=teacher, student=student, student_cfg=SimpleNamespace(head=None))
    kd = FitNetKD(2, 4)
    step = mod.distill_step_fn(pair, kd, lambda progress: 0.25, None, kd_warmup=0.5)
    batch = SimpleNamespace(voxels=None, num_points=None, coords=None, batch_size=1, targets=())
    det_only = torch.full_like(neck.weight, 0.75 * 9)  # (1 - lam) d(sum of bev)/dW: 9 cells of input 1
    for progress, student_gets_kd in ((0.1, False), (0.6, True)):
        neck.zero_grad()
        kd.zero_grad()
        loss, logs = step(batch, progress)
        loss.backward()
        assert kd.adapter.weight.grad is not None and kd.adapter.weight.grad.abs().sum() > 0
        assert torch.allclose(neck.weight.grad, det_only) is not student_gets_kd
        assert logs["feat"] > 0 and logs["lam"] == 0.25


def test_kd_warmup_must_end_before_kd_does():
    from itkd_cli.core.errors import ItkdError

    assert load_recipe("synth-pillar", ["distill.kd_warmup=0.2"]).distill.kd_warmup == 0.2
    with pytest.raises(ItkdError, match="kd_warmup"):
        load_recipe("synth-pillar", ["distill.kd_warmup=0.5", "distill.kd_until=0.5"])
    with pytest.raises(ItkdError, match="kd_warmup"):
        load_recipe("synth-pillar", ["distill.kd_warmup=1"])


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
    from itkd_cli.pipeline.report import LEARNED_MAP, teacher_notes, write_report

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
