"""How far the train-mode student is from its KD targets because of BatchNorm alone (a diagnostic, no training).

Usage:
    .venv/bin/python benchmarks/probe_teacher_bn.py --out runs/self30 [--ratio 1.0] [--batches 4] [--set KEY=VALUE ...]

Reads what `bench_compare.py --out DIR` made (DIR/recipe.yaml, DIR/teacher/last.pth, DIR/world) and builds
the teacher-initialised student and a fresh itKD distiller as `itkd compress` does. On the first training
batches it prints the itKD terms (L_cr, the head loss raw and standardised), the relative distance of the
BEV maps and the mean heatmap-logit difference for three pairings:
  - the student in train mode (as it trains) against the teacher on its running statistics (the method);
  - the student in eval mode against the same teacher (what is left without BatchNorm's batch statistics);
  - the student in train mode against the teacher on batch statistics (``distill.teacher_bn=batch``).
At ``--ratio 1.0`` the student is an exact copy of its teacher, so whatever the first pairing shows beyond
the other two is the BatchNorm mode alone. Also the teacher's own detection loss on each statistic.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Optional

import torch

from itkd_cli.data.loader import build_loader
from itkd_cli.distill.teacher import FrozenTeacher
from itkd_cli.pipeline.compress import build_distillation, compress_recipe
from itkd_cli.train.loss import centerpoint_loss

PAIRINGS = ("student train-BN vs teacher running stats (as trained)", "student eval-BN vs teacher running stats",
            "student train-BN vs teacher batch stats")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a bench_compare.py output folder")
    ap.add_argument("--ratio", type=float, default=1.0)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    teacher_path = args.out / "teacher" / "last.pth"
    sets = [f"dataset.root={args.out / 'world'}", "dataset.workers=0", *args.sets]
    recipe = compress_recipe(teacher_path, str(args.out / "recipe.yaml"), sets, args.ratio, None, "itkd")
    pair, kd, _ = build_distillation(recipe, teacher_path, torch.device("cpu"))
    running, batch_stats = pair.teacher, FrozenTeacher(pair.teacher.model, bn="batch")
    head_cfg, std_cfg = pair.student_cfg.head, kd.cfg.model_copy(update={"head_standardize": True})
    raw_cfg = kd.cfg.model_copy(update={"head_standardize": False})
    loader = build_loader(recipe, recipe.dataset.train_split, train=True, batch_size=recipe.train.batch_size,
                          shuffle=True, seed=recipe.train.seed)
    rows: dict[str, list[list[float]]] = {}
    teacher_det: list[tuple[float, float]] = []
    for _, batch in zip(range(args.batches), loader):
        inputs = (batch.voxels, batch.num_points, batch.coords, batch.batch_size)
        with torch.no_grad():
            t_run, t_batch = running(*inputs), batch_stats(*inputs)
            s_eval = copy.deepcopy(pair.student).eval()(*inputs)  # before a train-mode pass moves its statistics
            s_train = pair.student.train()(*inputs)
            for name, s_out, t_out in zip(PAIRINGS, (s_train, s_eval, s_train), (t_run, t_run, t_batch)):
                kd.cfg = raw_cfg
                raw = kd(s_out, t_out, batch.targets)
                kd.cfg = std_cfg
                std = kd.head_loss(s_out, t_out, batch.targets)
                same_width = s_out.bev.shape == t_out.bev.shape
                bev = float((s_out.bev - t_out.bev).norm() / t_out.bev.norm()) if same_width else float("nan")
                hm = float((s_out.tasks[0].hm - t_out.tasks[0].hm).abs().mean())
                rows.setdefault(name, []).append([float(raw.cr), float(raw.head), float(std), bev, hm])
            teacher_det.append((float(centerpoint_loss(t_run, batch.targets, head_cfg).total),
                                float(centerpoint_loss(t_batch, batch.targets, head_cfg).total)))
    print(f"\nratio {args.ratio}, {args.batches} training batches, fresh itKD modules\n")
    print("| pairing | L_cr | head loss (raw) | head loss (standardised) | BEV |M_s - M_t| / |M_t| "
          "| mean |hm logit diff| (task 0) |\n|---|---|---|---|---|---|")
    for name, vals in rows.items():
        mean = [sum(v[i] for v in vals) / len(vals) for i in range(5)]
        print(f"| {name} | " + " | ".join(f"{m:.3f}" for m in mean) + " |")
    det_run, det_batch = (sum(d[i] for d in teacher_det) / len(teacher_det) for i in range(2))
    print(f"\nteacher detection loss on these batches: running stats {det_run:.3f}, batch stats {det_batch:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
