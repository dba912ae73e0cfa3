"""Does a KD loss, alone, pull a perturbed copy of the teacher back to the teacher? (a diagnostic)

Usage:
    .venv/bin/python benchmarks/probe_kd_pull.py --out runs/self30 [--steps 60] [--noise 0.1] [--lr 3e-4]
        [--eval-batches 3] [--variant NAME METHOD [KEY=VALUE ...]] ...

Reads what `bench_compare.py --out DIR` made (DIR/recipe.yaml, DIR/teacher/last.pth, DIR/world). For each
variant: the student is built at ratio 1.0 exactly as `itkd compress` builds it (every teacher weight
copied), then every weight tensor of more than one dimension gets Gaussian noise of ``--noise`` times its
own standard deviation (the same draw for every variant), so the student starts at a known distance from
its teacher. Then ONLY the variant's KD loss (no detection loss, no labels but the object centres the
terms gather at) is minimised for ``--steps`` training batches with AdamW (constant lr, no weight decay),
student and KD modules together, as in training. A loss whose minimum is the teacher's function should
bring the student back: the table prints, before and after, the distance of the eval-mode student from
the eval-mode teacher on fixed val batches: heatmap probabilities (all cells, and at the object centres),
box regression at the centres, the BEV map, and the student's detection loss on those batches.

METHOD ``direct`` is the reference pull, not a method of the tool: the L1 between the student's and the
teacher's head outputs (heatmap as probabilities) at the object centres, the head attention loss without
its attention and fusion. METHOD ``none`` is the control: the same train-mode forwards with no loss and no
optimiser step, so only the student's BatchNorm running statistics move (they re-estimate the perturbed
network's activations, which by itself brings the eval-mode student part of the way back).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

from itkd_cli.core.types import DetectorOutput
from itkd_cli.data.loader import build_loader
from itkd_cli.distill.head_attention import head_features
from itkd_cli.distill.losses import gather_at_centres
from itkd_cli.pipeline.compress import build_distillation, compress_recipe
from itkd_cli.train.loss import centerpoint_loss

METHODS = ("itkd", "hinton", "fitnet", "direct", "none")
DEFAULT_VARIANTS = (
    ("control: forwards only (BatchNorm statistics)", "none", ()),
    ("direct (reference: L1 of head outputs at centres)", "direct", ()),
    ("itkd", "itkd", ()),
    ("itkd head term only", "itkd", ("distill.itkd.w_cr=0", "distill.itkd.w_it=0")),
    ("itkd autoencoder terms only", "itkd", ("distill.itkd.w_head=0",)),
    ("hinton", "hinton", ()),
    ("fitnet", "fitnet", ()),
)


def direct_loss(s_out: DetectorOutput, t_out: DetectorOutput, targets) -> torch.Tensor:
    """Sum over tasks of |student - teacher| head features at the valid centres, per valid object."""
    total, n = s_out.bev.new_zeros(()), 0
    for s, t, tgt in zip(s_out.tasks, t_out.tasks, targets):
        vel = s.vel is not None
        x_s = gather_at_centres(head_features(s, vel), tgt.ind, tgt.mask)
        x_t = gather_at_centres(head_features(t, vel).detach(), tgt.ind, tgt.mask)
        total = total + (x_s - x_t).abs().sum()
        n += int(tgt.mask.sum())
    return total / max(n, 1)


@torch.no_grad()
def distances(student, teacher, batches, head_cfg) -> list[float]:
    """[hm MAE all cells, hm MAE at centres, box L1 at centres, BEV relative distance, student det loss]."""
    student.eval()
    sums = [0.0] * 5
    for batch in batches:
        inputs = (batch.voxels, batch.num_points, batch.coords, batch.batch_size)
        s_out, t_out = student(*inputs), teacher(*inputs)
        hm_all, hm_ctr, box = [], [], []
        for s, t, tgt in zip(s_out.tasks, t_out.tasks, batch.targets):
            hm_all.append(float((torch.sigmoid(s.hm) - torch.sigmoid(t.hm)).abs().mean()))
            x_s, x_t = (gather_at_centres(head_features(o, o.vel is not None), tgt.ind, tgt.mask) for o in (s, t))
            n_valid = tgt.mask.sum().clamp(min=1)
            n_cls = s.hm.shape[1]
            hm_ctr.append(float((x_s - x_t)[..., :n_cls].abs().sum() / (n_valid * n_cls)))
            box.append(float((x_s - x_t)[..., n_cls:].abs().sum() / (n_valid * (x_s.shape[-1] - n_cls))))
        bev = float((s_out.bev - t_out.bev).norm() / t_out.bev.norm())
        det = float(centerpoint_loss(s_out, batch.targets, head_cfg).total)
        for i, v in enumerate((sum(hm_all) / len(hm_all), sum(hm_ctr) / len(hm_ctr), sum(box) / len(box), bev, det)):
            sums[i] += v / len(batches)
    student.train()
    return sums


def perturb(model: torch.nn.Module, scale: float, seed: int) -> None:
    """Add N(0, (scale * std(w))^2) to every weight tensor of more than one dimension (same draw per seed)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * scale)


def pull(args, name: str, method: str, extra: tuple[str, ...], eval_batches) -> tuple[list[float], list[float], str]:
    """One variant: perturb the ratio-1.0 copy, minimise its KD loss alone; (distances before, after, loss trend)."""
    torch.manual_seed(0)
    teacher_path = args.out / "teacher" / "last.pth"
    sets = [f"dataset.root={args.out / 'world'}", "dataset.workers=0", *extra]
    kd_method = "none" if method == "direct" else method  # direct's loss is this script's own
    recipe = compress_recipe(teacher_path, str(args.out / "recipe.yaml"), sets, 1.0, None, kd_method)
    pair, kd, _ = build_distillation(recipe, teacher_path, torch.device("cpu"))
    teacher, student, head_cfg = pair.teacher, pair.student, pair.student_cfg.head
    eval_teacher = teacher.eval_model
    perturb(student, args.noise, seed=1)
    before = distances(student, eval_teacher, eval_batches, head_cfg)
    params = [p for p in (*student.parameters(), *kd.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0) if method != "none" else None
    loader = build_loader(recipe, recipe.dataset.train_split, train=True, batch_size=recipe.train.batch_size,
                          shuffle=True, seed=recipe.train.seed)
    student.train()
    losses = []
    for _, batch in zip(range(args.steps), loader):
        inputs = (batch.voxels, batch.num_points, batch.coords, batch.batch_size)
        if method == "none":
            with torch.no_grad():
                student(*inputs)
            continue
        with torch.no_grad():
            t_out = teacher(*inputs)
        s_out = student(*inputs)
        loss = direct_loss(s_out, t_out, batch.targets) if method == "direct" else kd(s_out, t_out, batch.targets).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    after = distances(student, eval_teacher, eval_batches, head_cfg)
    k = max(1, len(losses) // 10)
    trend = f"{sum(losses[:k]) / k:.3f} -> {sum(losses[-k:]) / k:.3f}" if losses else "-"
    print(f"[{name}] KD loss {trend}; before {['%.4f' % v for v in before]} after {['%.4f' % v for v in after]}",
          file=sys.stderr, flush=True)
    return before, after, trend


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="a bench_compare.py output folder")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--noise", type=float, default=0.1, help="weight noise, times each tensor's std")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-batches", type=int, default=3)
    ap.add_argument("--variant", nargs="+", action="append", default=None, metavar="NAME METHOD [KEY=VALUE]",
                    help=f"a variant instead of the defaults (repeatable); METHOD one of {'|'.join(METHODS)}")
    args = ap.parse_args(argv)
    bad = [v for v in args.variant or [] if len(v) < 2 or v[1] not in METHODS or any("=" not in kv for kv in v[2:])]
    if bad:  # checked before the teacher is loaded
        ap.error(f"--variant {' '.join(bad[0])}: expected NAME METHOD [KEY=VALUE ...], METHOD one of {METHODS}")
    variants = DEFAULT_VARIANTS if args.variant is None else [(v[0], v[1], tuple(v[2:])) for v in args.variant]
    probe_recipe = compress_recipe(args.out / "teacher" / "last.pth", str(args.out / "recipe.yaml"),
                                   [f"dataset.root={args.out / 'world'}", "dataset.workers=0"], 1.0, None, "none")
    eval_loader = build_loader(probe_recipe, probe_recipe.dataset.val_split, train=False,
                               batch_size=probe_recipe.train.batch_size, shuffle=False, seed=0)
    eval_batches = [b for _, b in zip(range(args.eval_batches), eval_loader)]
    rows = [(name, *pull(args, name, method, extra, eval_batches)) for name, method, extra in variants]
    print(f"\nratio 1.0, weight noise {args.noise} x std, {args.steps} steps of KD alone, AdamW lr {args.lr}; "
          f"distance of the eval-mode student from the teacher on {args.eval_batches} val batches, before -> after\n")
    print("| KD loss alone | loss, first -> last tenth | hm MAE, all cells | hm MAE, centres | box L1, centres "
          "| BEV rel. distance | student det loss |\n|---|---|---|---|---|---|---|")
    for name, before, after, trend in rows:
        cells = " | ".join(f"{b:.4f} -> {a:.4f}" for b, a in zip(before, after))
        print(f"| {name} | {trend} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
