"""The reusable training loop: teacher training and distillation both run through `fit`.

Exact resume: each epoch reseeds every RNG and the loader's shuffle generator from (seed, epoch),
so an epoch replays identically; a mid-epoch checkpoint also stores the RNG states, and resuming
skips the batches already consumed, then restores them.

Under torchrun (``train.distributed``) every process runs this loop on its share of the data; the
callers hand in step functions over DDP-wrapped modules, losses and stop requests are agreed over
all processes, and rank 0 alone writes checkpoints and logs and evaluates.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn

from itkd_cli.core.errors import ItkdError, JobFailed
from itkd_cli.recipe.schema import TrainConfig
from itkd_cli.train import distributed
from itkd_cli.train.metrics_log import MetricsLogger, NullLogger, TrainProgress
from itkd_cli.train.optim import build_optimizer, build_scheduler, clip_gradients, trainable_parameters
from itkd_cli.train.state import (
    capture_rng, epoch_seed, load_checkpoint_dict, load_weights, make_checkpoint, restore_rng,
    save_checkpoint_dict, seed_everything,
)
from itkd_cli.train.stop import StopGuard

# step_fn(batch, progress) -> (loss, logs); progress = fraction of the planned steps done before this one.
StepFn = Callable[[Any, float], tuple[Tensor, dict[str, Any]]]
# eval_fn(checkpoint_path, epoch) -> metrics dict; provided by the evaluation stage.
EvalFn = Callable[[Path, int], dict[str, Any]]
LAST = "last.pth"


class FitResult(NamedTuple):
    """Where a run ended: the last checkpoint, completed epochs and optimiser steps."""

    last: Path
    epoch: int
    step: int


class TrainRun(NamedTuple):
    """Everything the step needs, built once."""

    modules: list[nn.Module]
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool


def check_writable(out_dir: Path) -> None:
    """Fail before any work when the output folder cannot be created or written.

    Raises:
        ItkdError: one line naming the folder.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".itkd_write_probe_{os.getpid()}"  # one per process under torchrun
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ItkdError(f"{out_dir}: output folder is not writable ({exc.strerror or exc})",
                        hint="pick another folder with --out") from None


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors inside (nested) NamedTuples/tuples/lists to a device."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def seed_loader(loader: Iterable, seed: int, epoch: int) -> None:
    """Pin the loader's data order to the epoch.

    Samplers with an epoch (data.loader.EpochSampler, DistributedSampler) get it set; every torch
    shuffle generator the loader owns (DataLoader, sampler, batch sampler) is reseeded with ``seed``.
    """
    batch_sampler = getattr(loader, "batch_sampler", None)
    holders = [loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)]
    for holder in holders:
        gen = getattr(holder, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(seed)
        if hasattr(holder, "set_epoch"):
            holder.set_epoch(epoch)
        elif isinstance(getattr(holder, "epoch", None), int) and not isinstance(holder, torch.utils.data.DataLoader):
            holder.epoch = epoch


def build_run(model: nn.Module, aux: dict[str, nn.Module], cfg: TrainConfig, total: int,
              device: torch.device) -> TrainRun:
    """Optimiser, one-cycle schedule and AMP scaler over ``model`` and the trainable ``aux`` modules."""
    modules = [model, *aux.values()]
    optimizer = build_optimizer(modules, cfg)
    amp = bool(cfg.amp and device.type == "cuda")
    return TrainRun(modules, trainable_parameters(modules), optimizer, build_scheduler(optimizer, cfg, total),
                    torch.amp.GradScaler(device.type, enabled=amp), device, amp)


def _restore(run: TrainRun, model: nn.Module, aux: dict[str, nn.Module], ckpt_path: Path) -> dict:
    """Load model/aux/optimizer/scheduler/scaler state; returns the checkpoint."""
    ckpt = load_checkpoint_dict(ckpt_path)
    load_weights(model, ckpt["model_state"], ckpt_path)
    for name, module in aux.items():
        if name not in (ckpt.get("aux_state") or {}):
            raise ItkdError(f"{ckpt_path}: no '{name}' state to resume (checkpoint of another stage?)")
        load_weights(module, ckpt["aux_state"][name], f"{ckpt_path} [{name}]")
    if ckpt.get("optimizer") is None or ckpt.get("scheduler") is None:
        raise ItkdError(f"{ckpt_path}: holds no optimiser state, cannot resume",
                        hint="use --init-from to start a new run from its weights")
    planned, stored = run.scheduler.total_steps, ckpt["scheduler"].get("total_steps")
    if stored != planned:
        raise ItkdError(f"{ckpt_path}: its schedule has {stored} steps, this run {planned} (train.epochs, "
                        "train.batch_size or the data changed): an exact resume needs the same schedule",
                        hint="restore those settings, or use --init-from to start a new schedule from its weights")
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError) as exc:
        raise ItkdError(f"{ckpt_path}: optimiser state does not fit this run ({exc})") from None
    if ckpt.get("scaler") and run.amp:
        run.scaler.load_state_dict(ckpt["scaler"])
    return ckpt


def train_step(run: TrainRun, step_fn: StepFn, batch: Any, cfg: TrainConfig, step: int,
               last: Path) -> tuple[float, dict[str, float]]:
    """One optimiser step. Raises JobFailed on a non-finite loss or gradient (weights untouched)."""
    batch = to_device(batch, run.device)
    with torch.autocast(run.device.type, enabled=run.amp):
        loss, logs = step_fn(batch, (step - 1) / run.scheduler.total_steps)
    # Averaged over the processes (one collective): every rank then agrees on stopping for a NaN.
    names = list(logs)
    value, *means = distributed.mean_over_ranks([loss.detach(), *(logs[k] for k in names)], run.device)
    logs = dict(zip(names, means))
    kept = f"last good checkpoint kept: {last}" if last.is_file() else "no checkpoint written yet"
    if not math.isfinite(value):
        raise JobFailed(f"step {step}: loss is {value}; training stopped ({kept})",
                        hint="lower train.lr or check the data (`itkd data inspect`)")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    norm = clip_gradients(run.params, cfg.grad_clip)
    # With AMP a non-finite gradient is normal scaler behaviour (the step is skipped); without, it is fatal.
    if not run.amp and not torch.isfinite(norm):
        raise JobFailed(f"step {step}: gradient norm is {float(norm)}; training stopped ({kept})",
                        hint="lower train.lr or train.grad_clip")
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return value, {"loss": value, **logs, "grad_norm": float(norm)}


def _epoch_batches(loader: Iterable, seed: int, epoch: int, skip: int, rng: Optional[dict]) -> Iterator:
    """Seed the epoch, skip already-consumed batches (resume), then restore the saved RNG state."""
    seed_everything(epoch_seed(seed, epoch))
    seed_loader(loader, epoch_seed(seed, epoch), epoch)
    it = iter(loader)
    for _ in range(skip):
        next(it)
    if skip and rng is not None:
        restore_rng(rng)
    return it


def fit(model: nn.Module, step_fn: StepFn, loader: Iterable, cfg: TrainConfig, out_dir: Path, recipe: dict,
        role: str, *, aux: Optional[dict[str, nn.Module]] = None, resume: Optional[Path] = None,
        eval_fn: Optional[EvalFn] = None, quiet: bool = False, device: Optional[torch.device] = None,
        keep_epochs: bool = False) -> FitResult:
    """Train ``model`` (and ``aux`` modules) with AdamW one-cycle; checkpoint every epoch.

    Args:
        model: the network whose weights form the checkpoint's model_state (already on ``device``).
        step_fn: (batch, progress in [0, 1)) -> (scalar loss, {name: scalar}); runs under autocast when AMP is on.
        loader: re-iterable loader of batches with a fixed length (one pass = one epoch).
        cfg: recipe.train (epochs, lr, seed, amp, max_steps, eval_every, log_every...).
        out_dir: run folder (last.pth, metrics.jsonl, tb/).
        recipe: resolved recipe dict stored in checkpoints (model = this network's config).
        role: "teacher" or "student".
        aux: other trainable modules saved under 'aux_state' (e.g. the distiller).
        resume: a checkpoint to continue exactly from.
        eval_fn: called as eval_fn(checkpoint, epoch) every cfg.eval_every epochs and at the end.
        quiet: no progress bar.
        device: where to train (default: CUDA when available).
        keep_epochs: also keep epoch_N.pth.

    Returns:
        FitResult(last checkpoint, completed epochs, steps).

    Raises:
        JobFailed: non-finite loss/gradient (the last good checkpoint is kept).
        KeyboardInterrupt: after Ctrl-C, once the last completed step is checkpointed.
    """
    out_dir, aux = Path(out_dir), dict(aux or {})
    check_writable(out_dir)
    device = device or distributed.default_device()
    main = distributed.is_main()
    spe = len(loader)  # type: ignore[arg-type]
    if spe == 0:
        raise ItkdError(f"train.batch_size: {cfg.batch_size} leaves no batch in the training split")
    total = cfg.epochs * spe
    run = build_run(model, aux, cfg, total, device)
    step, rng, last = 0, None, out_dir / LAST
    if resume is not None:
        ckpt = _restore(run, model, aux, Path(resume))
        step, rng = int(ckpt["step"]), ckpt.get("rng")
    stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
    logger = MetricsLogger(out_dir, resume_step=step if resume is not None else None) if main else NullLogger()

    def save(epoch_done: int, metrics: Optional[dict] = None) -> Path:
        if not main:
            return last
        ckpt = make_checkpoint(model, recipe, role, epoch_done, step, run.optimizer, run.scheduler,
                               capture_rng(), metrics, aux)
        if run.amp:
            ckpt["scaler"] = run.scaler.state_dict()
        if keep_epochs and step % spe == 0:
            save_checkpoint_dict(out_dir / f"epoch_{epoch_done}.pth", ckpt)
        return save_checkpoint_dict(last, ckpt)

    for m in run.modules:
        m.train()
    guard, stop = StopGuard(), False
    with guard, logger, TrainProgress(stop_at, step, quiet or not main) as bar:
        for epoch in range(step // spe, cfg.epochs):
            if step >= stop_at or stop:
                break
            batches = _epoch_batches(loader, cfg.seed, epoch, step - epoch * spe, rng)
            t0, since = time.perf_counter(), 0
            while step < stop_at and not stop:
                batch = guard.fetch(batches)
                if batch is None:
                    break
                lr = run.scheduler.get_last_lr()[0]  # the rate this step uses (the scheduler moves on inside)
                loss, logs = train_step(run, step_fn, batch, cfg, step + 1, last)
                step, since = step + 1, since + 1
                stop = distributed.any_rank(guard.requested, device)  # all processes stop after the same step
                _count_step(model, step)
                bar.advance(loss)
                if step % cfg.log_every == 0 or step == stop_at:
                    logger.log_step(step, epoch, lr, logs, (time.perf_counter() - t0) / since)
                    t0, since = time.perf_counter(), 0
            epoch_done = step // spe
            save(epoch_done)  # also after Ctrl-C or max_steps: the last completed step is kept
            if main and epoch_done == epoch + 1 and eval_fn is not None and _eval_due(cfg, epoch_done, step >= total):
                metrics = eval_fn(last, epoch_done)
                logger.log_eval(step, epoch_done, metrics)
                save(epoch_done, metrics)
                for m in run.modules:  # an in-memory evaluator may have switched to eval mode
                    m.train()
            distributed.barrier()  # the others wait for rank 0's checkpoint and evaluation
    if stop:
        raise KeyboardInterrupt
    return FitResult(last, step // spe, step)


def _count_step(model: nn.Module, step: int) -> None:
    """Keep OpenPCDet's ``global_step`` buffer (when the model has one) equal to the steps done."""
    counter = getattr(model, "global_step", None)
    if isinstance(counter, Tensor):
        counter.fill_(step)


def _eval_due(cfg: TrainConfig, epoch_done: int, finished: bool) -> bool:
    """Evaluate every eval_every epochs (0: only once the run has finished) and at the end."""
    return finished or (cfg.eval_every > 0 and epoch_done % cfg.eval_every == 0)
