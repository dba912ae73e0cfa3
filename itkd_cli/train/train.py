"""Train a plain CenterPoint detector (the teacher) with the CenterPoint loss."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_text
from itkd_cli.core.types import Batch
from itkd_cli.data.waymo import read_manifest
from itkd_cli.recipe.load import dump_yaml
from itkd_cli.recipe.schema import Recipe
from itkd_cli.train import distributed
from itkd_cli.train.loop import LAST, EvalFn, FitResult, check_writable, fit
from itkd_cli.models.loss import centerpoint_loss
from itkd_cli.train.state import seed_everything


def check_dataset(recipe: Recipe) -> None:
    """Fail before any work when the training data is not there.

    Raises:
        ItkdError: the dataset folder is missing (with the command that creates the synthetic one).
    """
    cfg = recipe.dataset
    if cfg.kind == "waymo":
        read_manifest(cfg.root)  # a root not converted (or by another version) is named with the command to fix it
        return
    folder = Path(cfg.root) / cfg.version
    if not folder.is_dir():
        hint = (f"run `itkd data synth --out {cfg.root}` to write the synthetic world"
                if cfg.version == "v1.0-synth" else "set dataset.root / dataset.version (--set dataset.root=...)")
        raise ItkdError(f"dataset.root: {folder} not found (nothing to train on)", hint=hint)


def resolve_resume(resume: Path) -> Path:
    """A run folder (its last.pth) or a checkpoint file.

    Raises:
        ItkdError: no checkpoint there.
    """
    resume = Path(resume)
    ckpt = resume / LAST if resume.is_dir() else resume
    if not ckpt.is_file():
        raise ItkdError(f"{resume}: no {LAST} to resume from", hint="start without --resume, or check the folder")
    return ckpt


def train(recipe: Recipe, out_dir: Path, resume: Optional[Path] = None, init_from: Optional[Path] = None,
          quiet: bool = False, eval_fn: Optional[EvalFn] = None, device: Optional[torch.device] = None,
          keep_epochs: bool = False, log: Optional[Callable[[str], None]] = None) -> Path:
    """Train the recipe's detector as a teacher; checkpoints go to ``out_dir/last.pth``.

    Args:
        recipe: resolved recipe (model, dataset, train).
        out_dir: run folder (last.pth, metrics.jsonl, tb/, recipe.yaml).
        resume: run folder or checkpoint to continue exactly (weights, optimiser, schedule, RNG).
        init_from: checkpoint whose weights initialise the model (any supported format; no optimiser).
        quiet: no progress bar.
        eval_fn: eval_fn(checkpoint, epoch) -> metrics, every train.eval_every epochs and at the end.
        device: default CUDA when available (cuda:LOCAL_RANK under torchrun).
        keep_epochs: also keep epoch_N.pth after each completed epoch.
        log: printer of warnings about the data (default: stderr, which stays free of --json output).

    Under torchrun each process trains on its share of every epoch (``train.distributed``); rank 0
    writes the checkpoints, logs and evaluations.

    Returns:
        Path of the last checkpoint.

    Raises:
        ItkdError: both resume and init_from, unwritable output, missing data, none of the recipe's classes
            in the training split, mismatched checkpoint.
        JobFailed: non-finite loss.
    """
    from itkd_cli.data.loader import build_loader
    from itkd_cli.data.validate import check_training_classes
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import load_into

    if resume is not None and init_from is not None:
        raise ItkdError("--resume and --init-from: pick one (resume continues a run, init-from only loads weights)")
    out_dir = Path(out_dir)
    check_writable(out_dir)
    check_dataset(recipe)
    warnings = check_training_classes(recipe)  # before any model or loader: zero boxes must not train silently
    resume_ckpt = resolve_resume(resume) if resume is not None else None
    distributed.setup()
    device = device or distributed.default_device()
    if distributed.is_main():
        for warning in warnings:
            (log or _stderr)(f"warning: {warning}")
    seed_everything(recipe.train.seed)  # model init is part of the run's reproducibility
    model = build_model(recipe.model).to(device)
    if init_from is not None:
        load_into(model, init_from, strict=True)
    cfg = recipe.train
    loader = build_loader(recipe, recipe.dataset.train_split, train=True, batch_size=cfg.batch_size,
                          shuffle=True, seed=cfg.seed, rank=distributed.rank(), world=distributed.world_size())
    if distributed.is_main():
        write_text(out_dir / "recipe.yaml", dump_yaml(recipe))
    result: FitResult = fit(model, detector_step(distributed.wrap(model), recipe), loader, cfg, out_dir,
                            recipe.model_dump(mode="json"), "teacher", resume=resume_ckpt, eval_fn=eval_fn,
                            quiet=quiet, device=device, keep_epochs=keep_epochs)
    return result.last


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def detector_step(model: torch.nn.Module, recipe: Recipe) -> Any:
    """The step function of plain detector training: (batch, progress) -> (L_det, {hm, loc})."""
    head_cfg = recipe.model.head

    def step(batch: Batch, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(batch.voxels, batch.num_points, batch.coords, batch.batch_size)
        loss = centerpoint_loss(out, batch.targets, head_cfg)
        return loss.total, {"hm": loss.hm.detach(), "loc": loss.loc.detach()}

    return step
