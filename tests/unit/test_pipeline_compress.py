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


def test_the_teacher_makes_its_targets_with_its_running_statistics(one_thread, tmp_path):
    """At ratio 1.0 the student is a copy of its teacher, yet the frozen teacher's targets differ from the
    train-mode student's outputs: the teacher normalises with its running statistics (the method), the
    student with each batch's. """
    import torch

    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    sets = ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]", "student.ratio=1.0"]
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
    assert not same
    with torch.no_grad():
        assert torch.allclose(pair.teacher.model.eval()(*args).bev, t_out.bev, atol=1e-4)  # unfolded: same


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


# ------------------------------------------------------------------------------ the unlabeled pool (#41)
SMALL = "model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"


def _pool_recipe(tmp_path, threshold: float, method: str = "itkd"):
    """A folder pool of three .pcd.bin frames inside the point range, on the 8 x 8 head map of SMALL."""
    import numpy as np

    folder = tmp_path / "pool"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        pts = np.concatenate([rng.uniform(-5, 5, (300, 2)), rng.uniform(-2, 2, (300, 1)),
                              rng.uniform(0, 1, (300, 2))], axis=1)
        pts.astype(np.float32).tofile(folder / f"{name}.pcd.bin")
    return load_recipe("synth-pillar", [
        SMALL, f"dataset.root={tmp_path / 'data'}", "train.batch_size=2", f"distill.method={method}",
        f"dataset.unlabeled={{source: folder, folder: {folder}, score_threshold: {threshold}}}"])


def _confident_teacher(cfg):
    """A fake frozen teacher: one car at cell (y 2, x 3) with probability 0.9 in every frame."""
    import torch

    from itkd_cli.core.types import DetectorOutput, TaskHeadOutput

    h, w = cfg.head_map_size

    def forward(voxels, num_points, coords, b):
        tasks = []
        for k, task in enumerate(cfg.head.tasks):
            hm = torch.full((b, len(task), h, w), -12.0)
            if k == 0:
                hm[:, 0, 2, 3] = 2.1972  # logit of 0.9
            dim = torch.tensor([4.0, 2.0, 1.5]).log().view(1, 3, 1, 1).expand(b, 3, h, w)
            rot = torch.cat([torch.ones(b, 1, h, w), torch.zeros(b, 1, h, w)], dim=1)
            z = torch.zeros(b, 1, h, w)
            tasks.append(TaskHeadOutput(hm, torch.full((b, 2, h, w), 0.5), z, dim, rot, torch.zeros(b, 2, h, w)))
        return DetectorOutput(torch.zeros(b, cfg.bev_out_channels, h, w), tuple(tasks))

    return forward


def test_the_pool_is_used_by_every_method_but_none(tmp_path):
    assert mod.uses_pool(_pool_recipe(tmp_path, 0.3, "itkd")) and mod.uses_pool(_pool_recipe(tmp_path, 0.3, "fitnet"))
    assert not mod.uses_pool(_pool_recipe(tmp_path, 0.3, "none"))
    assert not mod.uses_pool(load_recipe("synth-pillar", [SMALL]))


def test_preflight_refuses_a_pool_where_the_teacher_detects_nothing_above_the_threshold(one_thread, tmp_path):
    """The real teacher on real frames of a folder pool: nothing can score above 1.0, so compress stops before
    training with one line naming the field, the best score and the frames tried (exit 2: an ItkdError)."""
    import torch

    from itkd_cli.core.errors import ItkdError
    from itkd_cli.data.unlabeled import load_pool
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    recipe = _pool_recipe(tmp_path, 1.0)
    torch.manual_seed(1)
    path = save_checkpoint(tmp_path / "teacher.pth", build_model(recipe.model), recipe, "teacher")
    run = mod.build_distillation(recipe, path, torch.device("cpu"))
    assert run.pool is not None and run.pool.score == 1.0
    infos = load_pool(recipe)
    with pytest.raises(ItkdError) as err:
        mod._check_pool(recipe, infos, run, torch.device("cpu"), print)
    msg = err.value.message
    assert msg.startswith("dataset.unlabeled.score_threshold 1: the teacher detects nothing above it on the 3 frames")
    assert "\n" not in msg and "frames: a.pcd.bin, b.pcd.bin, c.pcd.bin" in msg
    best = float(msg.split("best score there is ")[1].split(" ")[0])
    assert 0.0 < best < 1.0
    assert "lower dataset.unlabeled.score_threshold" in err.value.hint and "teacher's kind of data" in err.value.hint
    # at 0.5, a teacher that finds a car in every frame passes, and the pool's facts before training come back
    from functools import partial

    from itkd_cli.data.targets import assign_targets
    from itkd_cli.distill.label_kd import TeacherTargets

    recipe = _pool_recipe(tmp_path, 0.5)
    pool = TeacherTargets(recipe.model, recipe.dataset.class_names, 0.5, partial(assign_targets, recipe=recipe))
    lines = []
    facts = mod._check_pool(recipe, infos, run._replace(teacher=_confident_teacher(recipe.model), pool=pool),
                            torch.device("cpu"), lines.append)
    assert facts == {"frames": 3, "preflight": {"frames": ["a.pcd.bin", "b.pcd.bin", "c.pcd.bin"],
                                                "teacher_boxes": [1, 1, 1], "best_score": pytest.approx(0.9, abs=1e-4)}}
    assert "1.0 boxes above 0.5 per frame on 3 of them" in lines[0]


def test_preflight_spreads_its_frames_over_the_pool(tmp_path, monkeypatch):
    import torch

    recipe = _pool_recipe(tmp_path, 0.3)
    infos = [{"token": f"t{i}"} for i in range(20)]
    seen = []

    class Frames:  # records which infos the pre-flight reads, without reading points
        def __init__(self, recipe, split, train, infos):
            assert not train  # the teacher sees the pool's frames as they are
            seen.extend(i["token"] for i in infos)

        def __len__(self):
            return len(seen)

        def __getitem__(self, i):
            return i

    monkeypatch.setattr(mod, "FrameDataset", Frames)
    monkeypatch.setattr(mod, "collate", lambda samples, recipe: list(samples))
    batches = list(mod.pool_batches(recipe, infos, torch.device("cpu"), count=4))
    assert seen == ["t0", "t6", "t13", "t19"] and batches == [[0, 1], [2, 3]]  # train.batch_size 2


def test_report_records_the_pool_and_notes_a_teacher_that_found_almost_nothing(tmp_path):
    from itkd_cli.pipeline.report import FEW_POOL_BOXES, pool_boxes, pool_facts, pool_notes
    from itkd_cli.pipeline.report_page import write_report

    records = [{"step": 1, "unlabeled_frames": 2.0, "unlabeled_boxes": 0.5},
               {"step": 2, "unlabeled_frames": 1.0, "unlabeled_boxes": 0.2},
               {"step": 3, "unlabeled_frames": 0.0, "unlabeled_boxes": 0.0}, {"step": 3, "eval": {"mAP": 0.1}}]
    assert pool_boxes(records) == (pytest.approx((2 * 0.5 + 0.2) / 3), 2)  # weighted by the frames of each step
    assert pool_boxes([{"step": 1, "det": 1.0}]) == (None, 0)
    cfg = {"source": "folder", "split": None, "folder": "/pool", "ratio": 0.5, "score_threshold": 0.3}
    before = {"frames": 3, "preflight": {"frames": ["a", "b"], "teacher_boxes": [1, 0], "best_score": 0.41}}
    facts = pool_facts(cfg, before, records)
    assert facts == {**cfg, **before, "teacher_boxes_per_frame": pytest.approx(0.4), "logged_steps": 2}
    assert facts["teacher_boxes_per_frame"] < FEW_POOL_BOXES
    (note,) = pool_notes(facts, "itkd", True)
    assert "0.40 boxes above dataset.unlabeled.score_threshold 0.3 per unlabeled frame" in note
    assert "itKD's head attention and MSE at centres learned from almost no object" in note
    assert pool_notes({**facts, "teacher_boxes_per_frame": FEW_POOL_BOXES}, "itkd", True) == []
    assert "not measured" in pool_notes({**facts, "teacher_boxes_per_frame": None}, "hinton", True)[0]
    assert "the pool was not used" in pool_notes(None, "none", True)[0]
    assert pool_notes(None, "itkd", False) == [] and pool_notes(None, "none", False) == []

    side = {"params": 10, "gmacs": 1.0, "latency_ms": 2.0, "mAP": 0.3, "NDS": 0.3}
    report = {"method": "itkd", "ratio": 0.25, "policy": "neck", "teacher_checkpoint": "t.pth",
              "student_checkpoint": "s.pth", "split": "synth_val", "frames": 4, "teacher": side, "student": side,
              "curves": None, "unlabeled": facts, "notes": pool_notes(facts, "itkd", True)}
    rj, md = write_report(tmp_path, report)
    assert json.loads(rj.read_text())["unlabeled"]["teacher_boxes_per_frame"] == pytest.approx(0.4)
    text = md.read_text()
    assert "## Unlabeled pool" in text and "the point files of folder `/pool`: 3 frames, 0.5 of every" in text
    assert "pre-flight: 0.5 teacher boxes per frame on 2 frames of the pool (best teacher score 0.410)" in text
    assert "over training: 0.40 teacher boxes per unlabeled frame (mean over 2 logged steps)" in text
    assert "- the teacher gave 0.40 boxes above" in text
    _, md = write_report(tmp_path, {**report, "unlabeled": None, "notes": []})
    assert "Unlabeled pool" not in md.read_text()
