"""Teacher vs 1/2 and 1/4 students (neck and full policies): params, MACs and CPU latency.

Usage: .venv/bin/python benchmarks/bench_models.py [--recipes centerpoint-pillar-waymo ...]
       [--points 120000] [--repeats 1] [--json out.json]
Full-size models are slow on CPU: the default times one forward after one warm-up.
The itKD paper reports for the Waymo pillar teacher 5.2 M params / 333.9 GMACs and for its 1/4
student 0.6 M / 45.1 GMACs (its own counting tool; ours counts every conv/linear/BN of one frame).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from itkd_cli.models import build_model, derive_student
from itkd_cli.models.complexity import build_frame, profile
from itkd_cli.recipe import load_recipe

VARIANTS = (("teacher", None, None), ("1/2 neck", 0.5, "neck"), ("1/4 neck", 0.25, "neck"),
            ("1/2 full", 0.5, "full"), ("1/4 full", 0.25, "full"))


def bench(recipe: str, points: int, repeats: int, seed: int) -> list[dict]:
    """Profile the teacher and every student variant of ``recipe`` on one shared frame."""
    cfg = load_recipe(recipe).model
    frame = build_frame(cfg, points, seed)
    rows = []
    for name, ratio, policy in VARIANTS:
        torch.manual_seed(seed)
        model_cfg = cfg if ratio is None else derive_student(cfg, ratio, policy)
        res = profile(build_model(model_cfg), frame, repeats=repeats, warmup=1 if repeats else 0)
        rows.append({"recipe": recipe, "variant": name, **res})
        print(f"{recipe} {name}: {res['params_total']:,} params, {res['macs_total'] / 1e9:.1f} GMACs, "
              f"{res['latency_ms'] or 0:.0f} ms", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["centerpoint-pillar-waymo", "centerpoint-voxel-nuscenes"])
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [r for recipe in args.recipes for r in bench(recipe, args.points, args.repeats, args.seed)]
    table = Table("recipe", "variant", "params (M)", "GMACs", "x params", "x MACs", "CPU ms", "x latency",
                  title=f"CPU, batch 1, {torch.get_num_threads()} threads, LiDAR-like frame of {args.points} points")
    for r in rows:
        t = next(x for x in rows if x["recipe"] == r["recipe"] and x["variant"] == "teacher")
        lat = r["latency_ms"]
        table.add_row(r["recipe"], r["variant"], f"{r['params_total'] / 1e6:.3f}", f"{r['macs_total'] / 1e9:.1f}",
                      f"{r['params_total'] / t['params_total']:.3f}", f"{r['macs_total'] / t['macs_total']:.3f}",
                      f"{lat:.0f}" if lat else "-", f"{lat / t['latency_ms']:.2f}" if lat else "-")
    Console(width=140).print(table)
    if args.json:
        from itkd_cli.core.io import write_json

        write_json(args.json, rows)


if __name__ == "__main__":
    main()
