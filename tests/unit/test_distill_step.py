"""The distillation step: lam * KD + (1 - lam) * detection, no teacher forward without KD."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import itkd_cli.distill.step as mod
from itkd_cli.core.types import DetectorOutput
from itkd_cli.distill.baselines import HintonKD, NoKD
from itkd_cli.models.loss import DetLoss

BATCH = SimpleNamespace(voxels=None, num_points=None, coords=None, batch_size=1, targets=(), labeled=None)


def _hm_output(hm: torch.Tensor) -> DetectorOutput:
    return DetectorOutput(bev=torch.zeros(1, 1, 2, 2), tasks=(SimpleNamespace(hm=hm),))


@pytest.mark.parametrize("method", ["none", "hinton", "hinton_lam0"])
def test_a_step_without_kd_never_runs_the_teacher(monkeypatch, method):
    """The student-alone step is the reference KD step times are compared with: no teacher forward. A KD
    method at lambda 0 is the same detection step."""
    calls = []
    out = _hm_output(torch.zeros(1, 1, 2, 2, requires_grad=True))

    def teacher(*args):
        calls.append("teacher")
        return _hm_output(torch.ones(1, 1, 2, 2))

    monkeypatch.setattr(mod, "centerpoint_loss", lambda s_out, targets, head_cfg: DetLoss(
        s_out.tasks[0].hm.sum() + 2.0, torch.zeros(()), torch.zeros(())))
    kd, lam = {"none": (NoKD(), 0.0), "hinton": (HintonKD(2.0), 0.5), "hinton_lam0": (HintonKD(2.0), 0.0)}[method]
    step = mod.distill_step_fn(lambda *a: out, teacher, kd, lam, head_cfg=None)
    loss, logs = step(BATCH, 0.3)
    assert calls == (["teacher"] if method == "hinton" else [])
    if method == "hinton":  # the teacher's output reached the KD term, weighted by lambda
        assert logs["hm"] > 0 and loss.item() == pytest.approx(0.5 * 2.0 + 0.5 * logs["hm"]) and logs["lam"] == 0.5
    else:
        assert loss.item() == 2.0 and logs == {"det": 2.0}


def test_gradient_norm_and_pull_ratio_by_hand():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([0.5]))
    det = 3.0 * a.sum()  # d/da = (3, 3), d/db = 0: norm 3 sqrt(2)
    term = 4.0 * (a * a).sum() + b.sum()  # d/da = (8, 16), d/db = 1: norm sqrt(321)
    assert mod.gradient_norm(det, [a, b]) == pytest.approx(3.0 * 2 ** 0.5)
    assert mod.gradient_norm(torch.tensor(1.0), [a]) == 0.0  # reaches no parameter
    ratios = mod.pull_ratios(det, {"head": term, "none": b.detach().sum()}, [a, b])
    assert ratios == pytest.approx({"pull_head": 321 ** 0.5 / (3.0 * 2 ** 0.5), "pull_none": 0.0})


def test_step_logs_the_latest_pull_of_each_weighted_term(monkeypatch):
    """lam * w * term against (1 - lam) * det, measured every PULL_EVERY calls, logged with every step."""
    monkeypatch.setattr(mod, "PULL_EVERY", 2)
    bias = [0.0]

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([[[[1.0]]]]))

        def forward(self, *args):
            bev = self.w * torch.ones(1, 1, 1, 1) + bias[0]
            return DetectorOutput(bev=bev, tasks=(SimpleNamespace(hm=bev),))

    class Feat(torch.nn.Module):  # feat = 2 * bev: d/dw = 2
        def forward(self, s, t, targets):
            from itkd_cli.distill.losses import zero_terms

            feat = 2.0 * s.bev.sum()
            return zero_terms(s.bev, feat=feat, total=feat)

    # det = bev^2: d/dw = 2 (w + bias)
    monkeypatch.setattr(mod, "centerpoint_loss", lambda s_out, targets, head_cfg: DetLoss(
        s_out.bev.pow(2).sum(), torch.zeros(()), torch.zeros(())))
    step = mod.distill_step_fn(Student(), lambda *a: None, Feat(), 0.25, None, term_weights={"feat": 3.0})
    seen = []
    for b in (0.0, 1.0, 3.0):  # calls 0 and 2 measure, call 1 repeats the first measurement
        bias[0] = b
        seen.append(step(BATCH, 0.0)[1]["pull_feat"])
    # (0.25 * 3 * 2) / (0.75 * 2 (1 + bias)) = 1 / (1 + bias)
    assert seen == pytest.approx([1.0, 1.0, 0.25])


def test_report_summarises_pulls_and_notes_a_swamping_term():
    from itkd_cli.pipeline.report import kd_pulls, pull_notes

    records = [{"step": 10, "pull_head": 3.0, "pull_cr": 0.1}, {"step": 20, "pull_head": 1.0, "pull_cr": 0.3},
               {"step": 25, "eval": {"mAP": 0.1}}]
    pulls = kd_pulls(records)
    assert sorted(pulls) == ["cr", "head"]
    assert pulls["cr"] == pytest.approx({"mean": 0.2, "max": 0.3}) and pulls["head"] == {"mean": 2.0, "max": 3.0}
    (note,) = pull_notes(pulls, False)
    assert "head term's gradient on the student is 2.0x the detection loss's" in note
    assert kd_pulls([{"step": 1, "det": 2.0}]) == {} and pull_notes({}, False) == []
    # with a pool, the measured-better lambda pulls the head term 1.0-1.4x: noted only above 2x
    assert pull_notes(pulls, True) == [] and pull_notes({"head": {"mean": 1.4, "max": 3.0}}, True) == []
    assert len(pull_notes({"head": {"mean": 2.1, "max": 3.0}}, True)) == 1
