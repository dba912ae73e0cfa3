"""benchmarks/probe_kd_pull.py: bad --variant arguments exit 2 before any checkpoint is read; the perturbation."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("variant", [["lonely"], ["x", "mimic"], ["x", "itkd", "distill.itkd.w_head"]])
def test_bad_variant_exits_2_before_reading_the_teacher(probe, tmp_path, capsys, variant):
    with pytest.raises(SystemExit) as exc:
        probe.main(["--out", str(tmp_path / "missing"), "--variant", *variant])
    assert exc.value.code == 2
    assert "expected NAME METHOD" in capsys.readouterr().err


def test_perturb_scales_noise_by_each_weight_tensor_std_and_is_repeatable(probe):
    def fresh():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(200, 300), torch.nn.BatchNorm1d(300))

    a, b, ref = fresh(), fresh(), fresh()
    probe.perturb(a, 0.1, seed=1)
    probe.perturb(b, 0.1, seed=1)
    delta = a[0].weight.detach() - ref[0].weight.detach()
    assert torch.equal(a[0].weight, b[0].weight)  # same draw for every variant
    assert float(delta.std() / ref[0].weight.detach().std()) == pytest.approx(0.1, rel=0.05)
    assert torch.equal(a[1].weight, ref[1].weight) and torch.equal(a[0].bias, ref[0].bias)  # 1-D tensors untouched
