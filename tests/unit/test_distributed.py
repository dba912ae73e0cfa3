"""Data-parallel training (torch.distributed, gloo on CPU): 2 processes of the real loop `fit` match one
process on the union of their batches, agree on a NaN stop, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset
from typer.testing import CliRunner

from itkd_cli.cli.main import app
from itkd_cli.core.errors import ItkdError, JobFailed
from itkd_cli.data.loader import EpochSampler
from itkd_cli.recipe.schema import TrainConfig
from itkd_cli.train import distributed
from itkd_cli.train.loop import fit

FRAMES, BATCH = 8, 4  # one process: batches of 4; two processes: 2 each, the same 4 frames a step


class Pairs(Dataset):
    """(x, y) rows indexed like the real dataset, by EpochSampler's (epoch, index) pairs."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(FRAMES, 3, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3

    def __len__(self) -> int:
        return FRAMES

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[key[1]], self.y[key[1]]


def _train(out: Path, rank: int, world: int, nan_at_step: int = 0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    net = distributed.wrap(model)
    loader = DataLoader(Pairs(), batch_size=BATCH // world,
                        sampler=EpochSampler(FRAMES, shuffle=True, seed=3, rank=rank, world=world))
    steps = {"n": 0}

    def step(batch, progress):
        steps["n"] += 1
        loss = (net(batch[0]) - batch[1]).pow(2).mean()
        if steps["n"] == nan_at_step and rank == world - 1:  # one process alone sees the NaN
            loss = loss * float("nan")
        return loss, {"mse": loss.detach()}

    cfg = TrainConfig(epochs=3, batch_size=BATCH // world, lr=0.05, seed=7, log_every=1, amp=False)
    fit(model, step, loader, cfg, out, {"model": "linear"}, "teacher", quiet=True, device=torch.device("cpu"))
    return model


def _worker(rank: int, world: int, port: int, out: str, nan_at_step: int) -> None:
    # As under torchrun, the launcher hosts the rendezvous store (TORCHELASTIC_USE_AGENT_STORE) and outlives
    # the workers. With rank 0 as the store server, rank 0 once died of SIGABRT at exit in CI while rank 1 ran.
    os.environ.update(CUDA_VISIBLE_DEVICES="", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    distributed.setup()
    result = Path(out) / f"rank{rank}.pt"
    try:
        model = _train(Path(out) / "run", rank, world, nan_at_step)
        torch.save({"state": model.state_dict()}, result)
    except JobFailed as exc:
        torch.save({"failed": str(exc)}, result)
    finally:
        distributed.teardown()


def _launch(out: Path, world: int = 2, nan_at_step: int = 0, timeout: float = 120.0) -> list[dict]:
    """Run _worker in ``world`` processes; fail (never hang) if they do not finish in time."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # port 0: a free one
    ctx = mp.start_processes(_worker, args=(world, store.port, str(out), nan_at_step), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers still running after {timeout} s (a collective hung)")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one_on_the_union_of_their_batches(tmp_path):
    alone = _train(tmp_path / "alone" / "run", rank=0, world=1)
    ranks = _launch(tmp_path / "ddp")
    for got in ranks:  # DDP averaged the gradients: every process holds the single-process weights
        for key, value in alone.state_dict().items():
            torch.testing.assert_close(got["state"][key], value, rtol=1e-5, atol=1e-6)
    ddp_log, alone_log = _log(tmp_path / "ddp" / "run"), _log(tmp_path / "alone" / "run")
    assert [r["step"] for r in ddp_log] == [r["step"] for r in alone_log] == list(range(1, 7))  # rank 0 alone logs
    for d, a in zip(ddp_log, alone_log):  # logged losses are the mean over processes = the union's loss
        assert d["loss"] == pytest.approx(a["loss"], rel=1e-5) and d["mse"] == pytest.approx(a["mse"], rel=1e-5)
    ckpt = torch.load(tmp_path / "ddp" / "run" / "last.pth", weights_only=True)
    assert ckpt["step"] == 6 and set(ckpt["model_state"]) == {"weight", "bias"}  # bare keys, no "module."
    assert not list((tmp_path / "ddp" / "run").glob(".itkd_write_probe*"))


def test_a_nan_on_one_process_stops_every_process(tmp_path):
    ranks = _launch(tmp_path / "nan", nan_at_step=3)
    assert all("step 3: loss is nan" in r.get("failed", "") for r in ranks), ranks
    ckpt = torch.load(tmp_path / "nan" / "run" / "last.pth", weights_only=True)
    assert ckpt["step"] == 2  # the last good epoch's checkpoint is kept


def test_single_process_is_untouched_by_the_distributed_helpers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.setup()
    assert not distributed.active() and distributed.rank() == 0 and distributed.world_size() == 1
    module = nn.Linear(2, 2)
    assert distributed.wrap(module) is module
    assert distributed.mean_over_ranks([torch.tensor(2.0), 3], torch.device("cpu")) == [2.0, 3.0]
    assert distributed.any_rank(True, torch.device("cpu")) is True


def test_torchrun_variables_missing_are_a_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ItkdError, match="WORLD_SIZE is 2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT unset"):
        distributed.setup()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ItkdError, match="WORLD_SIZE: 'two' is not a number"):
        distributed.setup()


def test_commands_that_do_not_train_refuse_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    res = CliRunner().invoke(app, ["export", "--onnx", "--checkpoint", "x.pth"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[0] == ("error: itkd export: runs in one process; only train and compress "
                                          "run under torchrun")


def test_a_garbage_world_size_is_one_line_at_the_cli(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "x")
    res = CliRunner().invoke(app, ["recipe", "ls"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.splitlines()[0] == "error: WORLD_SIZE: 'x' is not a number (set by torchrun)"
