"""How hard each KD term pulls on the student, next to the detection loss (a diagnostic, no training).

Usage:
    .venv/bin/python benchmarks/probe_kd_grads.py --out runs/cmp30 [--student PATH | --run DIR] [--batches 3]
        [--method itkd|hinton|fitnet] [--by-module] [--set KEY=VALUE ...]

Reads what `bench_compare.py --out DIR` made (DIR/recipe.yaml, DIR/teacher/last.pth, DIR/world), builds
the student exactly as `itkd compress` does (teacher-initialised; or the weights of --student, e.g. a
finished run's student.pth) with a freshly initialised distiller (or, with --run DIR, a finished
run's student and its trained KD module from DIR/train/last.pth), and on the first training batches
prints, for (1 - lambda) * L_det and lambda * w * each itKD term (a baseline: lambda * its KD loss):
its value, the norm of its gradient on the student's parameters and the cosine of that gradient with
the detection gradient. It also prints
the same gradient norm per top-level student module (``--by-module``: under AdamW a term that is small
overall can still set the direction of the modules where the detection gradient is smaller), and how
sharply the head relation-aware attention selects channels (mean of the softmax's largest weight
per output channel, and which input channel each output channel takes most from).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from itkd_cli.data.loader import build_loader
from itkd_cli.distill import kd_lambda
from itkd_cli.distill.head_attention import head_features, relation_weights
from itkd_cli.distill.losses import gather_at_centres
from itkd_cli.pipeline.compress import build_distillation, compress_recipe
from itkd_cli.train.loss import centerpoint_loss
from itkd_cli.train.state import load_checkpoint_dict


def flat_grad(value: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Gradient of ``value`` on ``params`` as one vector (zeros where a parameter is not reached)."""
    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def module_slices(named: list[tuple[str, torch.nn.Parameter]]) -> dict[str, tuple[int, int]]:
    """Where each top-level module's parameters lie in ``flat_grad``'s vector (parameters in module order)."""
    slices: dict[str, tuple[int, int]] = {}
    start = 0
    for name, p in named:
        module = name.split(".")[0]
        lo, _ = slices.get(module, (start, start))
        start += p.numel()
        slices[module] = (lo, start)
    return slices


def attention_sharpness(task_out, ind: torch.Tensor, mask: torch.Tensor) -> tuple[float, list[int]]:
    """Inter-head attention of one task head: mean max softmax weight, argmax input channel (frame 0)."""
    x = gather_at_centres(head_features(task_out, task_out.vel is not None).float(), ind, mask)
    weights = relation_weights(x, mask.sum(1))
    return float(weights.max(1).values.mean()), weights[0].argmax(0).tolist()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a bench_compare.py output folder")
    ap.add_argument("--student", type=Path, default=None, help="student weights (default: teacher-initialised)")
    ap.add_argument("--run", type=Path, default=None, help="a finished run: its student and trained KD module")
    ap.add_argument("--method", choices=["itkd", "hinton", "fitnet"], default="itkd",
                    help="KD method to probe (baselines: their whole KD term as one row)")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--by-module", action="store_true", help="also print each term's gradient norm per module")
    ap.add_argument("--set", dest="sets", action="append", default=["student.policy=full"],
                    help="recipe override (default student.policy=full, as the 2026-11-30 runs)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    teacher_path = args.out / "teacher" / "last.pth"
    sets = [f"dataset.root={args.out / 'world'}", "dataset.workers=0", *args.sets]
    recipe = compress_recipe(teacher_path, str(args.out / "recipe.yaml"), sets, args.ratio, None, args.method)
    pair, kd, _ = build_distillation(recipe, teacher_path, torch.device("cpu"))
    teacher, student = pair.teacher, pair.student
    if args.run is not None:
        args.student = args.run / "student.pth"
        kd.load_state_dict(load_checkpoint_dict(args.run / "train" / "last.pth")["aux_state"].get("kd", {}))
    if args.student is not None:
        student.load_state_dict(load_checkpoint_dict(args.student)["model_state"])
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    cfg, lam, params = recipe.distill.itkd, kd_lambda(recipe.distill), [p for _, p in named]
    modules = module_slices(named)
    by_module: dict[str, dict[str, list[float]]] = {}
    loader = build_loader(recipe, recipe.dataset.train_split, train=True, batch_size=recipe.train.batch_size,
                          shuffle=True, seed=recipe.train.seed)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for _, batch in zip(range(args.batches), loader):
        inputs = (batch.voxels, batch.num_points, batch.coords, batch.batch_size)
        with torch.no_grad():
            t_out = teacher(*inputs)
        s_out = student(*inputs)
        terms = kd(s_out, t_out, batch.targets)
        det_loss = centerpoint_loss(s_out, batch.targets, pair.student_cfg.head).total
        weighted = {"(1-lam) L_det": (1 - lam) * det_loss}
        if args.method == "itkd":
            weighted.update({"lam w_cr L_cr": lam * cfg.w_cr * terms.cr, "lam w_it L_it": lam * cfg.w_it * terms.it,
                             "lam w_head L_head": lam * cfg.w_head * terms.head})
        else:
            weighted[f"lam L_{args.method}"] = lam * terms.total
        grads = {name: flat_grad(value, params) for name, value in weighted.items() if value.requires_grad}
        det = grads["(1-lam) L_det"]
        for name, g in grads.items():
            cos = float(F.cosine_similarity(g, det, dim=0))
            rows.setdefault(name, []).append((float(weighted[name].detach()), float(g.norm()), cos))
            for module, (lo, hi) in modules.items():
                by_module.setdefault(name, {}).setdefault(module, []).append(float(g[lo:hi].norm()))
        sharp, argmax = attention_sharpness(t_out.tasks[0], batch.targets[0].ind, batch.targets[0].mask)
        print(f"teacher head attention (task 0): mean max weight {sharp:.3f}; input channel per output channel "
              f"(frame 0) {argmax}")
    print(f"\nstudent: {args.student or 'teacher-initialised'}; {args.batches} training batches; lambda {lam}\n")
    print("| term | value | grad norm (student) | cos with det grad |\n|---|---|---|---|")
    for name, vals in rows.items():
        mean = [sum(v[i] for v in vals) / len(vals) for i in range(3)]
        print(f"| {name} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:+.3f} |")
    if args.by_module:
        print("\ngradient norm per module (mean over batches)\n")
        print("| term | " + " | ".join(modules) + " |\n|---|" + "---|" * len(modules))
        for name, per in by_module.items():
            print(f"| {name} | " + " | ".join(f"{sum(v) / len(v):.3f}" for v in per.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
