"""Distillation on unlabeled frames (#41), with hand-built tensors: the detection loss reads the labeled frames
alone, the KD terms every frame, an unlabeled frame's centres coming from the teacher's boxes above
dataset.unlabeled.score_threshold."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.types import Batch, DetectorOutput, TaskHeadOutput, TaskTargets
from itkd_cli.data.targets import assign_targets
from itkd_cli.distill.baselines import build_kd, kd_lambda
from itkd_cli.distill.label_kd import LabelKD, TeacherTargets
from itkd_cli.distill.pool import check_pool, kd_targets
from itkd_cli.distill.step import detection_loss, distill_step_fn
from itkd_cli.models.loss import centerpoint_loss
from itkd_cli.recipe.load import load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: do not oversubscribe the cores

# An 8 x 8 head map of 1.28 m cells from -5.12 m; two task heads of five classes (car first, pedestrian 4th of
# the second).
SMALL = "model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"
H = W = 8
CONFIDENT = (1, 0, 0, 2, 3, 0.9)  # frame, task, class in task, y, x, teacher probability: above 0.3
FAINT = (1, 1, 3, 5, 6, 0.2)  # above post.score_threshold 0.1, below dataset.unlabeled.score_threshold 0.3


def _recipe(*sets: str):
    return load_recipe("synth-pillar", [SMALL, *sets])


def _assign(recipe):
    return partial(assign_targets, recipe=recipe)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def teacher_output(cfg, b: int, peaks, seed: int = 0) -> DetectorOutput:
    """Heatmaps near 0 probability but at ``peaks`` (frame, task, class, y, x, prob); boxes 4 x 2 x 1.5 m, yaw 0,
    centred in their cell; a random BEV map."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for k, task in enumerate(cfg.head.tasks):
        hm = torch.full((b, len(task), H, W), -12.0)
        for f, t, c, y, x, p in peaks:
            if t == k:
                hm[f, c, y, x] = _logit(p)
        dim = torch.tensor([4.0, 2.0, 1.5]).log().view(1, 3, 1, 1).expand(b, 3, H, W).clone()
        rot = torch.cat([torch.ones(b, 1, H, W), torch.zeros(b, 1, H, W)], dim=1)
        tasks.append(TaskHeadOutput(hm, torch.full((b, 2, H, W), 0.5), torch.zeros(b, 1, H, W), dim, rot,
                                    torch.zeros(b, 2, H, W)))
    return DetectorOutput(torch.randn(b, cfg.bev_out_channels, H, W, generator=g), tuple(tasks))


def student_output(cfg, b: int, seed: int = 1, grad: bool = False) -> DetectorOutput:
    g = torch.Generator().manual_seed(seed)

    def r(c: int) -> torch.Tensor:
        return torch.randn(b, c, H, W, generator=g).requires_grad_(grad)

    return DetectorOutput(r(cfg.bev_out_channels),
                          tuple(TaskHeadOutput(r(len(t)), r(2), r(1), r(3), r(2), r(2)) for t in cfg.head.tasks))


def real_targets(recipe, frames) -> tuple[TaskTargets, ...]:
    """Targets as the data stage assigns them: ``frames`` lists each frame's (x, y, label 1-based) boxes."""
    per = []
    for boxes in frames:
        arr = np.array([[x, y, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0] for x, y, _ in boxes], np.float32).reshape(-1, 9)
        per.append(assign_targets(arr, np.array([lab for *_, lab in boxes], np.int64), recipe))
    return tuple(TaskTargets(*(torch.from_numpy(np.stack([f[t][i] for f in per])) for i in range(5)))
                 for t in range(len(recipe.model.head.tasks)))


# Labeled frames: a car and a pedestrian; then an unlabeled frame (empty targets).
GT = [[(-3.0, 2.0, 1), (1.5, -1.5, 9)], [(2.5, 3.0, 1)]]


def batch_of(recipe, labeled) -> Batch:
    b = len(labeled) if labeled is not None else len(GT)
    frames = [GT[i] if i < len(GT) else [] for i in range(b)]
    none = torch.zeros(0)
    return Batch(none, none, none, b, none, none, real_targets(recipe, frames), tuple(f"f{i}" for i in range(b)),
                 None if labeled is None else torch.tensor(labeled))


def _frames(out: DetectorOutput, idx) -> DetectorOutput:
    """The frames ``idx`` sliced by plain indexing (independent of the code under test)."""
    return DetectorOutput(out.bev[idx], tuple(TaskHeadOutput(*(t[idx] for t in task)) for task in out.tasks))


def test_detection_loss_is_centerpoint_loss_of_the_labeled_frames_alone():
    recipe = _recipe()
    head = recipe.model.head
    out = student_output(recipe.model, 3)
    targets = batch_of(recipe, [True, True, False]).targets
    labeled = torch.tensor([True, False, True])  # the unlabeled frame in the middle
    # frame 1 holds frame 1's GT; frame 2 (empty) is labeled: a labeled frame without objects still counts
    got = detection_loss(out, targets, labeled, head)
    want = centerpoint_loss(_frames(out, [0, 2]), tuple(TaskTargets(*(f[[0, 2]] for f in t)) for t in targets), head)
    assert got.total.item() == pytest.approx(want.total.item(), rel=1e-6)
    assert got.hm.item() == pytest.approx(want.hm.item(), rel=1e-6)
    whole = centerpoint_loss(out, targets, head)
    assert abs(got.total.item() - whole.total.item()) > 1e-3  # the unlabeled frame's terms are really left out
    assert torch.equal(detection_loss(out, targets, None, head).total, whole.total)  # None: the whole batch
    assert torch.equal(detection_loss(out, targets, torch.ones(3, dtype=torch.bool), head).total, whole.total)


def test_no_gradient_reaches_the_student_from_an_unlabeled_frames_detection_loss():
    recipe = _recipe()
    out = student_output(recipe.model, 3, grad=True)
    targets = batch_of(recipe, [True, True, False]).targets
    detection_loss(out, targets, torch.tensor([True, True, False]), recipe.model.head).total.backward()
    for task in out.tasks:
        for t in task:
            assert t.grad is not None and torch.count_nonzero(t.grad[2]) == 0
        assert torch.count_nonzero(task.hm.grad[:2]) > 0 and torch.count_nonzero(task.center.grad[:2]) > 0


def test_a_batch_without_labeled_frames_gives_a_zero_detection_loss_that_back_propagates():
    recipe = _recipe()
    out = student_output(recipe.model, 2, grad=True)
    det = detection_loss(out, batch_of(recipe, [False, False]).targets, torch.tensor([False, False]), recipe.model.head)
    assert det.total.item() == 0.0 and det.total.requires_grad
    det.total.backward()
    assert all(t.grad is not None and torch.count_nonzero(t.grad) == 0 for task in out.tasks for t in task)


@pytest.mark.parametrize("threshold, task1_centres", [(0.3, 0), (0.1, 1)])
def test_unlabeled_frames_get_centres_from_teacher_boxes_above_the_threshold(threshold, task1_centres):
    recipe = _recipe()
    names = recipe.dataset.class_names
    batch = batch_of(recipe, [True, False])
    # frame 0 (labeled) has a confident teacher box too: its targets must stay the real ones
    t_out = teacher_output(recipe.model, 2, [CONFIDENT, FAINT, (0, 0, 1, 6, 6, 0.95)])
    pool = TeacherTargets(recipe.model, names, threshold, _assign(recipe))
    merged, logs = kd_targets(batch, t_out, pool)
    for real, got in zip(batch.targets, merged):
        assert all(torch.equal(r[0], g[0]) for r, g in zip(real, got))  # the labeled frame untouched
        assert all(g.dtype == r.dtype for r, g in zip(real, got))
    car, ped = merged
    assert car.mask[1].sum() == 1 and car.ind[1, 0] == 2 * W + 3 and car.cls[1, 0] == 0
    assert car.heatmap[1, 0, 2, 3] == 1.0
    assert ped.mask[1].sum() == task1_centres
    if task1_centres:
        assert ped.ind[1, 0] == 5 * W + 6 and ped.cls[1, 0] == 3
    assert logs == {"unlabeled_frames": 1.0, "unlabeled_boxes": 1.0 + task1_centres}
    # the boxes sparsekd decoded already give the same centres
    again, _ = kd_targets(batch, t_out, pool, dets=pool.detections(t_out))
    assert all(torch.equal(a, b) for ta, tb in zip(merged, again) for a, b in zip(ta, tb))


def test_unlabeled_frames_need_the_pool_and_a_pool_logs_every_step():
    recipe = _recipe()
    t_out = teacher_output(recipe.model, 2, [CONFIDENT])
    with pytest.raises(ItkdError, match="dataset.unlabeled"):
        kd_targets(batch_of(recipe, [True, False]), t_out, None)
    pool = TeacherTargets(recipe.model, recipe.dataset.class_names, 0.3, _assign(recipe))
    assert kd_targets(batch_of(recipe, None), t_out, pool)[1] == {"unlabeled_frames": 0.0, "unlabeled_boxes": 0.0}
    assert kd_targets(batch_of(recipe, None), t_out, None)[1] == {}


def _step(recipe, method: str, teacher_peaks):
    """A distillation step of ``method`` over fixed 3-frame outputs (a batch of B frames reads the first B)."""
    recipe = recipe.model_copy(update={"distill": recipe.distill.model_copy(update={"method": method})})
    cfg, names = recipe.model, recipe.dataset.class_names
    torch.manual_seed(0)
    kd = build_kd(recipe.distill, cfg, cfg)
    s_all, t_all = student_output(cfg, 3, seed=5), teacher_output(cfg, 3, teacher_peaks)
    first = lambda out: lambda v, n, c, b: _frames(out, slice(0, b))  # noqa: E731
    label_kd = (LabelKD(cfg, cfg, names, recipe.distill.baseline.label_score, _assign(recipe))
                if method == "sparsekd" else None)
    pool = TeacherTargets(cfg, names, 0.3, _assign(recipe))
    return distill_step_fn(first(s_all), first(t_all), kd, kd_lambda(recipe.distill, True), cfg.head, label_kd, pool=pool)


# The unlabeled frame is frame 2; the teacher is confident on every frame.
PEAKS = [(0, 0, 0, 6, 2, 0.9), (1, 1, 3, 1, 1, 0.8), (2, 0, 0, 2, 3, 0.9), (2, 1, 3, 5, 6, 0.7)]
KD_TERMS = {"itkd": ("cr", "it", "head"), "hinton": ("hm",), "fitnet": ("feat",), "sparsekd": ("hm", "label")}


@pytest.mark.parametrize("method", sorted(KD_TERMS))
def test_unlabeled_frames_change_every_kd_term_and_never_the_detection_term(method):
    recipe = _recipe()
    step = _step(recipe, method, PEAKS)
    loss_l, logs_l = step(batch_of(recipe, None), 1.0)  # the two labeled frames
    loss_u, logs_u = step(batch_of(recipe, [True, True, False]), 1.0)  # the same, and one unlabeled frame
    assert logs_u["det"] == pytest.approx(logs_l["det"], rel=1e-6)
    for term in KD_TERMS[method]:
        assert abs(logs_u[term] - logs_l[term]) > 1e-6 * max(1.0, abs(logs_l[term])), term
    lam = logs_l["lam"]
    kd_l, kd_u = ((loss - (1 - lam) * logs["det"]) / lam for loss, logs in ((loss_l, logs_l), (loss_u, logs_u)))
    assert abs(float(kd_u.detach()) - float(kd_l.detach())) > 1e-6
    assert "unlabeled_boxes" not in logs_l or logs_l["unlabeled_frames"] == 0.0
    assert logs_u["unlabeled_frames"] == 1.0 and logs_u["unlabeled_boxes"] == 2.0  # a car and a pedestrian


def test_itkds_head_term_reads_the_teachers_centres_of_an_unlabeled_frame():
    """Without a teacher box above the threshold an unlabeled frame adds no object to the head attention loss;
    with one it does."""
    recipe = _recipe()
    labeled_only = batch_of(recipe, None)
    mixed = batch_of(recipe, [True, True, False])
    faint = [p for p in PEAKS if p[0] < 2] + [(2, 0, 0, 2, 3, 0.25)]
    head_l = _step(recipe, "itkd", faint)(labeled_only, 1.0)[1]["head"]
    _, logs_faint = _step(recipe, "itkd", faint)(mixed, 1.0)
    _, logs_sure = _step(recipe, "itkd", PEAKS)(mixed, 1.0)
    assert logs_faint["unlabeled_boxes"] == 0.0 and logs_faint["head"] == pytest.approx(head_l, rel=1e-5)
    assert logs_sure["unlabeled_boxes"] == 2.0 and abs(logs_sure["head"] - head_l) > 1e-4 * abs(head_l)


def test_the_student_alone_never_learns_from_an_unlabeled_frame():
    recipe = _recipe()
    out = student_output(recipe.model, 3, grad=True)
    step = distill_step_fn(lambda *a: out, None, None, 0.0, recipe.model.head)
    loss, logs = step(batch_of(recipe, [True, True, False]), 0.0)
    loss.backward()
    assert set(logs) == {"det"}
    assert all(torch.count_nonzero(t.grad[2]) == 0 for task in out.tasks for t in task)


def test_check_pool_counts_the_teachers_centres_per_frame():
    recipe = _recipe()
    pool = TeacherTargets(recipe.model, recipe.dataset.class_names, 0.3, _assign(recipe))
    t_out = teacher_output(recipe.model, 2, [CONFIDENT, FAINT])
    batch = batch_of(recipe, [False, False])
    check = check_pool(lambda *a: t_out, [batch, batch], pool)
    assert check.frames == ("f0", "f1", "f0", "f1") and check.boxes == (0, 1, 0, 1)
    assert check.best_score == pytest.approx(0.9, abs=1e-6) and check.mean_boxes == 0.5
