"""Frames/s of the data pipeline: load (+ sweeps) -> augmentation -> voxelisation -> targets -> Batch.

Usage:
    itkd data synth --preset default --out data/synth
    python benchmarks/bench_data.py --root data/synth [--recipe synth-pillar] [--workers 2] [--batches 20]

Prints a table: per-stage time per frame in the main process, then end-to-end frames/s through
``build_loader`` with the given number of workers (train split, augmentation on).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from itkd_cli.data.augment import augment, range_filter
from itkd_cli.data.loader import build_loader, collate
from itkd_cli.data.dataset import FrameDataset, frame_rng
from itkd_cli.data.targets import assign_targets
from itkd_cli.recipe.load import load_recipe


def stage_times(ds: FrameDataset, frames: int) -> dict[str, float]:
    """Mean seconds per frame of each stage, single process."""
    cfg = ds.recipe
    acc = {"load (keyframe + sweeps)": 0.0, "augment": 0.0, "voxelise": 0.0, "targets": 0.0}
    ds.voxelizer(ds.points(0))  # warm-up: spconv's import (tens of seconds on a busy machine) is not a per-frame cost
    for i in range(frames):
        idx = i % len(ds)
        t0 = time.perf_counter()
        pts, (boxes, labels) = ds.points(idx), ds.annotations(idx)
        t1 = time.perf_counter()
        pts, boxes, labels = augment(pts, boxes, labels, cfg.dataset.augment, frame_rng(0, 0, idx), ds.db)
        pts, boxes, labels = range_filter(pts, boxes, labels, cfg.model.grid.point_range)
        t2 = time.perf_counter()
        ds.voxelizer(pts)
        t3 = time.perf_counter()
        assign_targets(boxes, labels, cfg)
        t4 = time.perf_counter()
        for key, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            acc[key] += dt / frames
    return acc


def loader_rate(recipe, batch_size: int, batches: int) -> tuple[float, int]:
    """Frames/s over ``batches`` batches after one warm-up batch; also mean voxels per frame."""
    loader = build_loader(recipe, recipe.dataset.train_split, train=True, batch_size=batch_size,
                          shuffle=True, seed=0)
    it, done, voxels = iter(loader), 0, 0
    next(it)
    t0 = time.perf_counter()
    while done < batches:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        done += 1
        voxels += len(batch.coords)
    dt = time.perf_counter() - t0
    return batches * batch_size / dt, voxels // (batches * batch_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="nuScenes-format dataset root (e.g. from itkd data synth).")
    ap.add_argument("--recipe", default="synth-pillar")
    ap.add_argument("--set", action="append", default=[], help="Recipe override key=value.")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--frames", type=int, default=20, help="Frames for the per-stage timing.")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, [f"dataset.root={args.root}", f"dataset.workers={args.workers}", *args.set])
    ds = FrameDataset(recipe, recipe.dataset.train_split, train=True)
    stages = stage_times(ds, args.frames)
    sample = collate([ds[0]], recipe)
    rate, vox = loader_rate(recipe, args.batch_size, args.batches)
    table = Table(title=f"data pipeline, {args.root} ({len(ds)} train frames, {recipe.dataset.sweeps} sweeps, "
                        f"grid {recipe.model.grid.grid_size}, head {recipe.model.head_map_size})")
    table.add_column("stage")
    table.add_column("ms / frame", justify="right")
    for name, sec in stages.items():
        table.add_row(name, f"{1000 * sec:.1f}")
    table.add_row("sum (1 process)", f"{1000 * sum(stages.values()):.1f}")
    table.add_row(f"build_loader, {args.workers} workers, batch {args.batch_size}",
                  f"{1000 / rate:.1f}  ({rate:.1f} frames/s, ~{vox} voxels/frame)")
    Console().print(table)
    print(f"points/frame ~{int(np.mean([len(ds.points(i)) for i in range(min(5, len(ds)))]))}, "
          f"batch voxels tensor {tuple(sample.voxels.shape)}")


if __name__ == "__main__":
    main()
