"""Distillation training-step time per method, interleaved so that machine drift hits every method alike.

Usage:
    .venv/bin/python benchmarks/bench_step.py --out runs/cmp30 [--methods none itkd ...] [--steps 20]
        [--warmup 3] [--set KEY=VALUE ...]

Reads what `bench_kd.py --out DIR` made (DIR/teacher/last.pth, DIR/world; recipe synth-pillar-itkd-1-4). For
every method it builds what `itkd compress` builds (teacher-initialised student, frozen teacher, KD
modules, optimiser) and times the very step `itkd compress` trains with (frozen teacher forward,
student forward, losses, backward, clip, optimiser and scheduler step) on the same batches, which
are loaded once beforehand (data loading is not timed). Steps are taken round-robin, one per method
at a time, and the table reports each method's median and its ratio to `none` (the student alone).
End-to-end step times (with data loading) are in each run's train/metrics.jsonl; runs there are
minutes apart, so this script is the one to compare step costs with.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from itkd_cli.data.loader import build_loader
from itkd_cli.distill.baselines import kd_lambda
from itkd_cli.distill.step import distill_step_fn
from itkd_cli.pipeline.compress import build_distillation, compress_recipe
from itkd_cli.train.loop import build_run, train_step

METHODS = ("none", "hinton", "fitnet", "sparsekd", "itkd")


def make_stepper(out: Path, method: str, ratio: float, sets: list[str], total: int):
    """(one-step callable, recipe) for ``method``, built as `itkd compress` builds its run."""
    teacher_path = out / "teacher" / "last.pth"
    recipe = compress_recipe(teacher_path, "synth-pillar-itkd-1-4", sets, ratio, None, method)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = build_distillation(recipe, teacher_path, device)
    step_fn = distill_step_fn(d.student, d.teacher, d.kd, kd_lambda(recipe.distill, False), d.student_cfg.head,
                              d.label_kd)
    run = build_run(d.student, {"kd": d.kd}, recipe.train, total, device)
    d.student.train()
    d.kd.train()

    def one(batch, step: int) -> float:
        t0 = time.perf_counter()
        train_step(run, step_fn, batch, recipe.train, step, out / "no-checkpoint")  # path only named in errors
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return one, recipe


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a bench_kd.py output folder")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--set", dest="sets", action="append", default=["student.policy=full"],
                    help="recipe override (default student.policy=full, as the 2026-11-30 runs)")
    args = ap.parse_args(argv)
    if "none" not in args.methods:
        ap.error("--methods must include none (the reference step)")
    sets = [f"dataset.root={args.out / 'world'}", "dataset.workers=0", *args.sets]
    total = args.warmup + args.steps
    steppers, recipe = {}, None
    for method in args.methods:
        torch.manual_seed(0)
        steppers[method], recipe = make_stepper(args.out, method, args.ratio, sets, total)
    loader = build_loader(recipe, recipe.dataset.train_split, train=True, batch_size=recipe.train.batch_size,
                          shuffle=True, seed=recipe.train.seed)
    batches = [b for _, b in zip(range(total), loader)]
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for i, batch in enumerate(batches):
        for method, one in steppers.items():
            seconds = one(batch, i + 1)
            if i >= args.warmup:
                times[method].append(seconds)
    ref = statistics.median(times["none"])
    print(f"\n{args.steps} timed steps per method (after {args.warmup} warm-up), batch {recipe.train.batch_size}, "
          f"{torch.get_num_threads()} threads, round-robin\n")
    print("| method | median s/step | min | max | vs none |\n|---|---|---|---|---|")
    for method, values in times.items():
        med = statistics.median(values)
        print(f"| {method} | {med:.3f} | {min(values):.3f} | {max(values):.3f} | {med / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
