"""`itkd compress`: frozen teacher -> derived student -> distillation -> official eval -> report."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional

import torch
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_json
from itkd_cli.core.types import Batch, detached
from itkd_cli.data.loader import build_loader
from itkd_cli.distill.baselines import NoKD, build_kd, kd_lambda
from itkd_cli.distill.losses import combine
from itkd_cli.distill.teacher import freeze_teacher
from itkd_cli.evaluate.run import evaluate_nuscenes
from itkd_cli.models.checkpoint import save_checkpoint
from itkd_cli.pipeline.label_kd import LabelKD
from itkd_cli.pipeline.profile import first_val_frame, profile_on_frame
from itkd_cli.pipeline.report import plot_curves, teacher_notes, write_report
from itkd_cli.pipeline.teacher_student import Pair, build_pair, resolve_recipe, student_recipe
from itkd_cli.recipe.load import apply_flags, compress_flags
from itkd_cli.recipe.schema import Recipe
from itkd_cli.train import distributed
from itkd_cli.train.loop import fit
from itkd_cli.train.loss import centerpoint_loss

STUDENT = "student.pth"


class CompressResult(NamedTuple):
    """Paths and numbers of a finished compress run."""

    student_checkpoint: Path
    report_json: Path
    report_md: Path
    curves: Optional[Path]
    report: dict[str, Any]


def compress_recipe(teacher: Path, recipe: Optional[str], overrides: Iterable[str], ratio: Optional[float],
                    policy: Optional[str], method: Optional[str]) -> Recipe:
    """The run's recipe with the CLI's --ratio/--policy/--method folded in (validated like any field)."""
    flags = compress_flags(ratio, policy, method)  # a bad --ratio fails before the teacher is read
    return apply_flags(resolve_recipe(teacher, recipe, overrides), flags)


def build_distillation(recipe: Recipe, teacher: Path,
                       device: torch.device) -> tuple[Pair, nn.Module, Optional[LabelKD]]:
    """What a compress run trains: (frozen teacher + student, KD module, sparsekd's label KD or None)."""
    pair = build_pair(recipe, teacher, device)
    pair = pair._replace(teacher=freeze_teacher(pair.teacher, recipe.distill.teacher_bn))
    kd = build_kd(recipe.distill, recipe.model, pair.student_cfg).to(device)
    label_kd = LabelKD(recipe, pair.student_cfg) if recipe.distill.method == "sparsekd" else None
    return pair, kd, label_kd


def distill_step_fn(pair, kd, lam_at: Callable[[float], float], label_kd: Optional[LabelKD],
                    kd_warmup: float = 0.0) -> Callable[[Batch, float], tuple]:
    """Loss of one batch: lam * KD + (1 - lam) * detection loss (+ teacher-label loss for sparsekd),
    with lam = lam_at(progress) (``kd_lambda`` of the recipe: constant, or decaying under lam_schedule).
    Before ``kd_warmup`` (fraction of the steps; ``distill.kd_warmup``) the KD terms read the student's
    outputs detached: they train the KD modules only, and the student learns from detection alone.

    The student alone (``NoKD``) never runs the teacher: its step is the reference KD steps are timed
    against, and a teacher forward it does not use would make every KD method look cheaper. Neither does
    a KD step whose lambda has reached 0 (``distill.kd_until``): it is a detection step."""
    head_cfg = pair.student_cfg.head
    distils = not isinstance(kd, NoKD)

    def step(batch: Batch, progress: float):
        args = (batch.voxels, batch.num_points, batch.coords, batch.batch_size)
        lam = lam_at(progress) if distils else 0.0
        t_out = None
        if lam > 0.0:
            with torch.no_grad():
                t_out = pair.teacher(*args)
        s_out = pair.student(*args)
        det = centerpoint_loss(s_out, batch.targets, head_cfg)
        if t_out is None:
            return det.total, {"det": float(det.total.detach()), **({"lam": 0.0} if distils else {})}
        s_kd = detached(s_out) if progress < kd_warmup else s_out
        terms = kd(s_kd, t_out, batch.targets)
        kd_total = terms.total
        logs = {"det": det.total.detach(), **{k: v.detach() for k, v in terms._asdict().items() if k != "total"}}
        if label_kd is not None:
            label = label_kd(s_kd, t_out, batch)
            kd_total = kd_total + label
            logs["label"] = label.detach()
        loss = combine(det.total, kd_total, lam)
        return loss, {**{k: float(v) for k, v in logs.items()}, "lam": lam}

    return step


def _teacher_key(recipe: Recipe, teacher: Path, max_frames: Optional[int]) -> dict[str, Any]:
    """What the teacher's metrics depend on: the checkpoint bytes, the dataset and the frames evaluated."""
    digest = hashlib.sha256(Path(teacher).read_bytes()).hexdigest()
    frames = max_frames if max_frames is not None else recipe.eval.max_frames
    return {"teacher_sha256": digest, "root": str(Path(recipe.dataset.root).resolve()),
            "version": recipe.dataset.version, "split": recipe.dataset.val_split, "max_frames": frames}


def _teacher_metrics(recipe: Recipe, model: torch.nn.Module, teacher: Path, out_dir: Path,
                     max_frames: Optional[int]) -> dict[str, Any]:
    """Teacher metrics on the val split, reused from an earlier run of the same folder with the same
    teacher file, dataset and frames (a stale cache from another teacher must never be reported)."""
    cached = out_dir / "eval_teacher" / "metrics.json"
    key = _teacher_key(recipe, teacher, max_frames)
    if cached.is_file():
        data = json.loads(cached.read_text())
        if data.get("cache_key") == key:
            return data
    metrics = evaluate_nuscenes(recipe, model, out_dir / "eval_teacher", max_frames=max_frames,
                                model_cfg=recipe.model)
    metrics["cache_key"] = key
    write_json(cached, metrics)
    return metrics


def compress(recipe: Recipe, teacher: Path, out_dir: Path, *, resume: bool = False, quiet: bool = False,
             max_eval_frames: Optional[int] = None,
             log: Callable[[str], None] = print) -> Optional[CompressResult]:
    """Distil a student from ``teacher`` as ``recipe`` says and evaluate both.

    Under torchrun every process distils on its share of the data (student and KD modules in DDP, the
    frozen teacher replicated); rank 0 then writes the student, evaluates and reports, and is the only
    one to return a result (the others return None).

    Args:
        recipe: resolved recipe (model = the teacher's architecture; student/distill sections apply).
        teacher: teacher checkpoint (any supported format).
        out_dir: run folder: train/ (checkpoints, metrics.jsonl, tb/), student.pth, eval_*/, report.*.
        resume: continue an interrupted run from out_dir/train/last.pth.
        quiet: no progress bars.
        max_eval_frames: evaluate only the first N val frames.
        log: status line printer.
    """
    out_dir = Path(out_dir)
    distributed.setup()
    device = distributed.default_device()
    pair, kd, label_kd = build_distillation(recipe, teacher, device)
    log(f"teacher {teacher} ({pair.load_report.format}, spconv layout {pair.load_report.layout or 'n/a'}) "
        f"-> {recipe.distill.method} student, ratio {recipe.student.ratio}, policy {recipe.student.policy}, "
        f"{'initialised from the teacher' if recipe.student.init_from_teacher else 'random init'}")
    loader = build_loader(recipe, recipe.dataset.train_split, train=True, batch_size=recipe.train.batch_size,
                          shuffle=True, seed=recipe.train.seed, rank=distributed.rank(),
                          world=distributed.world_size())
    s_recipe = student_recipe(recipe, pair.student_cfg)
    train_dir = out_dir / "train"
    last = train_dir / "last.pth"
    if resume and not last.is_file():
        raise ItkdError(f"--resume: {last}: no interrupted run to continue", hint="drop --resume to start a new run")
    # The step runs the DDP wrappers (gradient averaging); checkpoints keep the bare modules.
    step_pair = pair._replace(student=distributed.wrap(pair.student))
    step_fn = distill_step_fn(step_pair, distributed.wrap(kd, some_unused=True), partial(kd_lambda, recipe.distill),
                              label_kd, recipe.distill.kd_warmup)
    done = fit(pair.student, step_fn, loader, recipe.train,
               train_dir, s_recipe.model_dump(mode="json"), "student", aux={"kd": kd},
               resume=last if resume else None, quiet=quiet, device=device)
    if not distributed.is_main():
        return None
    student_ckpt = save_checkpoint(out_dir / STUDENT, pair.student, s_recipe, "student",
                                   epoch=done.epoch, step=done.step)
    log(f"wrote {student_ckpt} (student only: no teacher, no KD modules)")
    t_metrics = _teacher_metrics(recipe, pair.teacher.eval_model, teacher, out_dir, max_eval_frames)
    s_metrics = evaluate_nuscenes(s_recipe, pair.student, out_dir / "eval_student", max_frames=max_eval_frames,
                                  model_cfg=pair.student_cfg)
    curves = plot_curves(train_dir / "metrics.jsonl", out_dir / "curves.png",
                         f"{recipe.distill.method} student, ratio {recipe.student.ratio}")
    frame = first_val_frame(recipe)
    report = {
        "method": recipe.distill.method, "ratio": recipe.student.ratio, "policy": recipe.student.policy,
        "teacher_checkpoint": str(teacher), "student_checkpoint": str(student_ckpt),
        "split": recipe.dataset.val_split, "frames": s_metrics.get("frames"),
        "teacher": {**profile_on_frame(pair.teacher.model, frame), **t_metrics},
        "student": {**profile_on_frame(pair.student, frame), **s_metrics},
        "curves": str(curves) if curves else None,
        "notes": teacher_notes(t_metrics, recipe.dataset.val_split),
        "recipe": recipe.model_dump(mode="json"),
    }
    rj, rm = write_report(out_dir, report)
    return CompressResult(student_ckpt, rj, rm, curves, report)
