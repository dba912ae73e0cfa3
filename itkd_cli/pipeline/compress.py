"""`itkd compress`: frozen teacher -> derived student -> distillation -> official eval -> report."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import file_sha256, write_json
from itkd_cli.core.types import Batch
from itkd_cli.data.dataset import FrameDataset
from itkd_cli.data.loader import build_loader, collate
from itkd_cli.data.targets import assign_targets
from itkd_cli.data.unlabeled import check_apart_from_val, describe_pool, load_pool
from itkd_cli.data.validate import check_training_classes
from itkd_cli.distill.baselines import build_kd, kd_lambda, kd_term_weights
from itkd_cli.distill.label_kd import LabelKD, TeacherTargets
from itkd_cli.distill.pool import PoolCheck, check_pool
from itkd_cli.distill.step import distill_step_fn
from itkd_cli.distill.teacher import FrozenTeacher, freeze_teacher
from itkd_cli.evaluate.run import evaluate_split
from itkd_cli.models.checkpoint import LoadReport, save_checkpoint
from itkd_cli.models.student import build_student
from itkd_cli.models.teacher import load_teacher_model, teacher_recipe
from itkd_cli.pipeline import gates as gating
from itkd_cli.pipeline.profile import first_val_frame, profile_on_frame
from itkd_cli.pipeline.report import (
    kd_pulls, plot_curves, pool_facts, pool_notes, pull_notes, read_metrics_log, teacher_notes)
from itkd_cli.pipeline.report_page import write_report
from itkd_cli.recipe.load import apply_flags, compress_flags
from itkd_cli.recipe.schema import GatesConfig, ModelConfig, Recipe
from itkd_cli.train import distributed
from itkd_cli.train.loop import fit, to_device
from itkd_cli.train.state import seed_everything

STUDENT = "student.pth"
# Frames of the unlabeled pool, spread over it, that the frozen teacher runs on before training (the pre-flight).
PREFLIGHT_FRAMES = 8


class CompressResult(NamedTuple):
    """Paths and numbers of a finished compress run."""

    student_checkpoint: Path
    report_json: Path
    report_md: Path
    curves: Optional[Path]
    report: dict[str, Any]
    gates: tuple[gating.GateResult, ...] = ()  # checked after everything is written


class Distillation(NamedTuple):
    """What a compress run trains and what it distils from."""

    teacher: FrozenTeacher
    student_cfg: ModelConfig
    student: nn.Module
    kd: nn.Module
    label_kd: Optional[LabelKD]
    load_report: LoadReport
    pool: Optional[TeacherTargets] = None  # the centres of unlabeled frames, when the run uses dataset.unlabeled


def compress_recipe(teacher: Path, recipe: Optional[str], overrides: Iterable[str], ratio: Optional[float],
                    policy: Optional[str], method: Optional[str], gates: Optional[GatesConfig] = None) -> Recipe:
    """The run's recipe with the CLI's --ratio/--policy/--method folded in (validated like any field) and its
    gate flags replacing the recipe's ``gates`` (so the recipe stored in the report is the one that ran)."""
    flags = compress_flags(ratio, policy, method)  # a bad --ratio fails before the teacher is read
    resolved = apply_flags(teacher_recipe(teacher, recipe, overrides), flags)
    if gates is None:
        return resolved
    return resolved.model_copy(update={"gates": gating.merge(resolved.gates, gates)})


def build_distillation(recipe: Recipe, teacher_path: Path, device: torch.device) -> Distillation:
    """Load the teacher, derive the student from it, build the KD modules of ``distill.method``."""
    teacher, report = load_teacher_model(recipe, teacher_path)
    student_cfg, student = build_student(recipe.model, teacher, recipe.student)
    kd = build_kd(recipe.distill, recipe.model, student_cfg).to(device)
    label_kd = pool = None
    assign = partial(assign_targets, recipe=recipe)
    if recipe.distill.method == "sparsekd":
        label_kd = LabelKD(recipe.model, student_cfg, recipe.dataset.class_names,
                           recipe.distill.baseline.label_score, assign)
    if uses_pool(recipe):
        pool = TeacherTargets(recipe.model, recipe.dataset.class_names, recipe.dataset.unlabeled.score_threshold,
                              assign)
    frozen = freeze_teacher(teacher.to(device))
    return Distillation(frozen, student_cfg, student.to(device), kd, label_kd, report, pool)


def uses_pool(recipe: Recipe) -> bool:
    """Whether the run mixes ``dataset.unlabeled`` into its batches: every method but ``none`` (the student alone
    learns from labels only)."""
    return recipe.distill.method != "none" and recipe.dataset.unlabeled is not None


def pool_batches(recipe: Recipe, infos: Sequence[dict], device: torch.device,
                 count: int = PREFLIGHT_FRAMES) -> Iterator[Batch]:
    """Up to ``count`` frames spread over the pool's ``infos``, as eval-mode batches of ``train.batch_size``."""
    n = min(count, len(infos))
    picks = sorted({round(i * (len(infos) - 1) / max(n - 1, 1)) for i in range(n)})
    frames = FrameDataset(recipe, recipe.dataset.train_split, train=False, infos=[infos[i] for i in picks])
    size = recipe.train.batch_size
    for start in range(0, len(frames), size):
        yield to_device(collate([frames[i] for i in range(start, min(start + size, len(frames)))], recipe), device)


def preflight_pool(recipe: Recipe, teacher: Callable, pool: TeacherTargets, batches: Iterable[Batch]) -> PoolCheck:
    """Run the frozen teacher on frames of the pool: refuse a pool where it detects nothing above
    ``dataset.unlabeled.score_threshold`` (the KD terms would get no object centre from it).

    Raises:
        ItkdError: no teacher box above the threshold on any frame tried (names the best score and the frames).
    """
    check = check_pool(teacher, batches, pool)
    if not any(check.boxes):
        threshold = recipe.dataset.unlabeled.score_threshold
        kind = "check that the pool is the teacher's kind of data (its LiDAR, sweeps and coordinate frame)"
        hint = (f"lower dataset.unlabeled.score_threshold (below {check.best_score:.2f}), or {kind}"
                if check.best_score <= threshold else
                "its best cells decode to no box inside model.post.limit_range above model.post.score_threshold "
                f"{recipe.model.post.score_threshold:g}: {kind}")
        raise ItkdError(
            f"dataset.unlabeled.score_threshold {threshold:g}: the teacher detects nothing above it on the "
            f"{len(check.frames)} frames of the pool tried ({describe_pool(recipe.dataset)}); its best score there is "
            f"{check.best_score:.3f} (frames: {', '.join(check.frames)})", hint=hint)
    return check


def _teacher_key(recipe: Recipe, teacher: Path, max_frames: Optional[int]) -> dict[str, Any]:
    """What the teacher's metrics depend on: the checkpoint bytes, the dataset, the frames evaluated and how
    boxes are decoded."""
    digest = file_sha256(teacher)
    frames = max_frames if max_frames is not None else recipe.eval.max_frames
    return {"teacher_sha256": digest, "kind": recipe.dataset.kind, "root": str(Path(recipe.dataset.root).resolve()),
            "version": recipe.dataset.version, "split": recipe.dataset.val_split, "max_frames": frames,
            "sampled_interval": recipe.dataset.sampled_interval.val, "post": recipe.model.post.model_dump(mode="json")}


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
    metrics = evaluate_split(recipe, model, out_dir / "eval_teacher", max_frames=max_frames,
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

    ``recipe.gates`` are judged once student.pth and report.json are written; the result carries them (the
    caller fails the job on a failed gate) and report.json / report.md / report.html show them.

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
    gating.check_applicable(recipe.gates, "compress", recipe.dataset.kind, source="recipe")  # before any work
    for warning in check_training_classes(recipe, teacher):  # no teacher class in the data: refused here
        log(f"warning: {warning}")
    pooled = uses_pool(recipe)
    pool_infos = load_pool(recipe) if pooled else None  # a bad pool fails before the teacher loads
    if pool_infos is not None:
        check_apart_from_val(recipe.dataset, pool_infos)
    distributed.setup()
    device = distributed.default_device()
    seed_everything(recipe.train.seed)  # the KD modules' random init is part of the run's reproducibility
    run = build_distillation(recipe, teacher, device)
    log(f"teacher {teacher} ({run.load_report.format}, spconv layout {run.load_report.layout or 'n/a'}) "
        f"-> {recipe.distill.method} student, ratio {recipe.student.ratio}, policy {recipe.student.policy}, "
        f"{'initialised from the teacher' if recipe.student.init_from_teacher else 'random init'}")
    before = _check_pool(recipe, pool_infos, run, device, log)  # the pool's facts before training
    loader = build_loader(recipe, recipe.dataset.train_split, train=True, batch_size=recipe.train.batch_size,
                          shuffle=True, seed=recipe.train.seed, rank=distributed.rank(),
                          world=distributed.world_size(), unlabeled=pooled, pool=pool_infos)
    s_recipe = recipe.model_copy(update={"model": run.student_cfg})  # stored with the student
    train_dir = out_dir / "train"
    last = train_dir / "last.pth"
    if resume and not last.is_file():
        raise ItkdError(f"--resume: {last}: no interrupted run to continue", hint="drop --resume to start a new run")
    # The step runs the DDP wrappers (gradient averaging); checkpoints keep the bare modules.
    step_fn = distill_step_fn(distributed.wrap(run.student), run.teacher, distributed.wrap(run.kd, some_unused=True),
                              kd_lambda(recipe.distill, pooled), run.student_cfg.head, run.label_kd,
                              term_weights=kd_term_weights(recipe.distill), pool=run.pool)
    done = fit(run.student, step_fn, loader, recipe.train, train_dir, s_recipe.model_dump(mode="json"), "student",
               aux={"kd": run.kd}, resume=last if resume else None, quiet=quiet, device=device)
    if not distributed.is_main():
        return None
    student_ckpt = save_checkpoint(out_dir / STUDENT, run.student, s_recipe, "student",
                                   epoch=done.epoch, step=done.step)
    log(f"wrote {student_ckpt} (student only: no teacher, no KD modules)")
    t_metrics = _teacher_metrics(recipe, run.teacher.eval_model, teacher, out_dir, max_eval_frames)
    s_metrics = evaluate_split(s_recipe, run.student, out_dir / "eval_student", max_frames=max_eval_frames,
                                  model_cfg=run.student_cfg)
    curves = plot_curves(train_dir / "metrics.jsonl", out_dir / "curves.png",
                         f"{recipe.distill.method} student, ratio {recipe.student.ratio}")
    frame = first_val_frame(recipe)
    records = read_metrics_log(train_dir / "metrics.jsonl")
    pulls = kd_pulls(records)
    unlabeled = pool_facts(recipe.dataset.unlabeled.model_dump(mode="json"), before, records) if before else None
    report = {
        "method": recipe.distill.method, "ratio": recipe.student.ratio, "policy": recipe.student.policy,
        "teacher_checkpoint": str(teacher), "student_checkpoint": str(student_ckpt),
        "split": recipe.dataset.val_split, "frames": s_metrics.get("frames"),
        "teacher": {**profile_on_frame(run.teacher.model, frame), **t_metrics},
        "student": {**profile_on_frame(run.student, frame), **s_metrics},
        "curves": str(curves) if curves else None,
        "kd_pull": pulls,
        "unlabeled": unlabeled,
        "notes": (teacher_notes(t_metrics, recipe.dataset.val_split) + pull_notes(pulls, pooled)
                  + pool_notes(unlabeled, recipe.distill.method, recipe.dataset.unlabeled is not None)),
        "recipe": recipe.model_dump(mode="json"),
        "max_eval_frames": max_eval_frames, "cwd": os.getcwd(),  # with the recipe: the command that reruns it
    }
    rj, rm, checked = finish_report(out_dir, report, recipe.gates)
    return CompressResult(student_ckpt, rj, rm, curves, report, tuple(checked))


def _check_pool(recipe: Recipe, infos: Optional[Sequence[dict]], run: Distillation, device: torch.device,
                log: Callable[[str], None]) -> Optional[dict[str, Any]]:
    """The pool's pre-flight (``preflight_pool``) when the run uses one; returns what is known of the pool before
    training (its frame count and the pre-flight's figures), None without a pool."""
    if infos is None or run.pool is None:
        return None
    check = preflight_pool(recipe, run.teacher, run.pool, pool_batches(recipe, infos, device))
    cfg = recipe.dataset.unlabeled
    log(f"unlabeled pool: {len(infos)} frames ({describe_pool(recipe.dataset)}), {cfg.ratio:g} of every batch; the "
        f"teacher gives {check.mean_boxes:.1f} boxes above {cfg.score_threshold:g} per frame on "
        f"{len(check.frames)} of them")
    return {"frames": len(infos), "preflight": {"frames": list(check.frames), "teacher_boxes": list(check.boxes),
                                                "best_score": check.best_score}}


def finish_report(out_dir: Path, report: dict[str, Any],
                  gates: GatesConfig) -> tuple[Path, Path, list[gating.GateResult]]:
    """Write report.json, judge the gates on it, then write it again with them and its page (report.md,
    report.html): the run's numbers are on disk before any gate can fail the job. Returns (report.json,
    report.md, the gates checked)."""
    write_json(Path(out_dir) / "report.json", report)
    checked = gating.evaluate(gates, gating.compress_values(report))
    report.update(gating.fields(checked))
    rj, rm = write_report(out_dir, report)
    return rj, rm, checked
