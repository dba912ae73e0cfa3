"""The training loop on a tiny model: exact resume, NaN stop, Ctrl-C, logs, checkpoint format."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from itkd_cli.core.errors import ItkdError, JobFailed
from itkd_cli.recipe.schema import TrainConfig
from itkd_cli.train.loop import fit


class Tiny(nn.Module):
    """Linear + dropout (exercises the global RNG) + a global_step buffer like CenterPoint."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
        self.register_buffer("global_step", torch.zeros(1, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=g)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=3, shuffle=True, generator=torch.Generator())


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=3, lr=0.01, seed=7, log_every=1, amp=False)
    base.update(kw)
    return TrainConfig(**base)


def _model(seed: int = 3) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def _run(out, cfg, resume=None, step_fn=None, **kw):
    model = _model()

    def mse(batch, progress):
        loss = (model(batch[0]) - batch[1]).pow(2).mean()
        return loss, {"mse": loss}

    fn = step_fn or mse
    res = fit(model, fn, _loader(), cfg, out, {"model": "tiny"}, "teacher", resume=resume, quiet=True, **kw)
    return model, res


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_uninterrupted_run_writes_checkpoint_and_logs(tmp_path):
    model, res = _run(tmp_path / "a", _cfg())
    assert res.step == 12 and res.epoch == 3  # 4 batches/epoch
    ckpt = torch.load(res.last, weights_only=True)
    assert ckpt["format"] == "itkd" and ckpt["role"] == "teacher" and ckpt["recipe"] == {"model": "tiny"}
    assert ckpt["epoch"] == 3 and ckpt["step"] == 12 and ckpt["optimizer"] and ckpt["scheduler"]
    assert set(ckpt["versions"]) >= {"itkd", "torch", "spconv"} and "torch" in ckpt["rng"]
    assert int(model.global_step) == 12
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 13)) and "mse" in lines[0] and "lr" in lines[0]
    assert any((tmp_path / "a" / "tb").iterdir())


@pytest.mark.parametrize("stop_after", [4, 6])  # an epoch boundary, and mid-epoch
def test_resume_equals_uninterrupted(tmp_path, stop_after):
    straight, _ = _run(tmp_path / "a", _cfg())
    _run(tmp_path / "b", _cfg(max_steps=stop_after))
    assert torch.load(tmp_path / "b" / "last.pth", weights_only=True)["step"] == stop_after
    resumed, res = _run(tmp_path / "b", _cfg(), resume=tmp_path / "b" / "last.pth")
    assert res.step == 12
    assert _same(straight, resumed)
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=True)["optimizer"]["state"]
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_step_fn_sees_the_fraction_of_steps_done_also_after_a_resume(tmp_path):
    seen = []
    model = _model()

    def step_fn(batch, progress):
        seen.append(progress)
        return (model(batch[0]) - batch[1]).pow(2).mean(), {}

    _run(tmp_path, _cfg(max_steps=5), step_fn=step_fn)
    _run(tmp_path, _cfg(), step_fn=step_fn, resume=tmp_path / "last.pth")
    assert seen == pytest.approx([i / 12 for i in range(12)])  # 12 planned steps, counted from 0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}
    model = _model()

    def step_fn(batch, progress):
        calls["n"] += 1
        loss = (model(batch[0]) - batch[1]).pow(2).mean()
        return (loss * float("nan") if calls["n"] == 6 else loss), {}

    with pytest.raises(JobFailed, match="step 6: loss is nan"):
        fit(model, step_fn, _loader(), _cfg(), tmp_path, {}, "teacher", quiet=True)
    ckpt = torch.load(tmp_path / "last.pth", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model_state"].values() if v.is_floating_point())


def test_ctrl_c_checkpoints_last_step_then_resume_matches(tmp_path):
    straight, _ = _run(tmp_path / "a", _cfg())
    model = _model()
    calls = {"n": 0}

    def step_fn(batch, progress):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the step still completes
        return (model(batch[0]) - batch[1]).pow(2).mean(), {}

    def callers_handler(signum, frame):  # whatever SIGINT handler the caller had must come back
        raise AssertionError("the loop's own handler should have taken this SIGINT")

    before = signal.signal(signal.SIGINT, callers_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(model, step_fn, _loader(), _cfg(), tmp_path / "b", {}, "teacher", quiet=True)
        assert signal.getsignal(signal.SIGINT) is callers_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert torch.load(tmp_path / "b" / "last.pth", weights_only=True)["step"] == 3
    resumed, _ = _run(tmp_path / "b", _cfg(), resume=tmp_path / "b" / "last.pth")
    assert _same(straight, resumed)


def test_eval_hook_every_n_epochs_and_at_end(tmp_path):
    seen = []

    def eval_fn(ckpt, epoch):
        assert torch.load(ckpt, weights_only=True)["epoch"] == epoch
        seen.append(epoch)
        return {"mAP": 0.1 * epoch}

    _run(tmp_path, _cfg(eval_every=2), eval_fn=eval_fn, keep_epochs=True)
    assert seen == [2, 3]
    assert [torch.load(tmp_path / f"epoch_{e}.pth", weights_only=True)["step"] for e in (1, 2, 3)] == [4, 8, 12]
    assert torch.load(tmp_path / "last.pth", weights_only=True)["metrics"] == {"mAP": pytest.approx(0.3)}
    evals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "eval" in x]
    assert [e["epoch"] for e in evals] == [2, 3]


def test_unwritable_output_fails_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ItkdError, match="not writable"):
        _run(blocker / "run", _cfg(), step_fn=lambda b, p: pytest.fail("trained"))


def test_resume_of_other_architecture_lists_keys(tmp_path):
    _run(tmp_path, _cfg(max_steps=2))
    other = nn.Linear(4, 1)
    with pytest.raises(ItkdError, match="missing .*net.0.weight"):
        fit(other, lambda b, p: (other(b[0]).sum(), {}), _loader(), _cfg(), tmp_path, {}, "teacher",
            resume=tmp_path / "last.pth", quiet=True)


def test_resume_with_another_schedule_is_refused(tmp_path):
    _run(tmp_path, _cfg(max_steps=2))
    with pytest.raises(ItkdError, match="schedule has 12 steps, this run 20"):
        _run(tmp_path, _cfg(epochs=5), resume=tmp_path / "last.pth")


def test_logged_lr_is_the_rate_each_step_used(tmp_path):
    """One-cycle over 12 steps: step 1 runs at lr / div_factor, the peak comes near pct_start, and the
    rate falls to the last step (the old log showed the rate the scheduler would give a 13th step)."""
    cfg = _cfg()
    _run(tmp_path / "a", cfg)
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())]
    assert lrs[0] == pytest.approx(cfg.lr / cfg.div_factor)
    peak = lrs.index(max(lrs))
    assert max(lrs) > 0.99 * cfg.lr and peak in (3, 4)  # pct_start 0.4 of 12 steps
    after = lrs[peak:]
    assert all(a > b for a, b in zip(after, after[1:])) and lrs[-1] < cfg.lr / cfg.div_factor  # no wrap-around
