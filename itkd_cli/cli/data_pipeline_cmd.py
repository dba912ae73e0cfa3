"""`itkd data prepare` (info caches + GT database) and `itkd data inspect` (counts, point checks)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from itkd_cli.cli.common import JsonOpt, SetOpt, console, emit_json, handle_errors, result as show_result, say
from itkd_cli.core.errors import ItkdError

RecipeOpt = typer.Option(None, "--recipe", help="Recipe name or path (dataset.* says what to prepare).")


def prepare(
    recipe: Optional[str] = RecipeOpt,
    overrides: List[str] = SetOpt,
    dataset: str = typer.Option("nuscenes", "--dataset", help="waymo: convert TFRecords (--src) into a root (--out)."),
    src: Optional[Path] = typer.Option(None, "--src", help="waymo: a .tfrecord, a folder of them, or a folder "
                                                           "with Waymo's training/, validation/ (and unlabeled/) folders."),
    out: Optional[Path] = typer.Option(None, "--out", help="waymo: the converted root to write (resumable)."),
    split: Optional[str] = typer.Option(None, "--split", help="waymo: the split the --src segments form "
                                                              "(default: training/ -> train, validation/ -> val)."),
    lidars: str = typer.Option("all", "--lidars", help="waymo: all five LiDARs (OpenPCDet) or top only."),
    returns: int = typer.Option(2, "--returns", help="waymo: 2 (both returns, OpenPCDet) or 1 (first only)."),
    workers: int = typer.Option(2, "--workers", help="waymo: segments converted at once."),
    json_out: bool = JsonOpt,
) -> None:
    """Build a recipe's info caches and GT database, or convert Waymo TFRecords (--dataset waymo --src --out)."""
    if dataset == "waymo" and src is not None:
        from itkd_cli.cli.data_prepare_waymo import convert

        if recipe is not None or overrides:
            raise ItkdError("--recipe/--set: not used when converting TFRecords (--src)",
                            hint="convert first, then `itkd data prepare --recipe R` builds the GT database")
        if out is None:
            raise ItkdError("--out: required with --src (the converted root to write)")
        convert(src, out, split, lidars, returns, workers, json_out)
        return
    if dataset not in ("nuscenes", "waymo"):
        raise ItkdError(f"--dataset {dataset}: expected nuscenes or waymo")
    if src is not None or out is not None or split is not None:
        raise ItkdError("--src/--out/--split: convert Waymo TFRecords, with --dataset waymo and --src",
                        hint="itkd data prepare --dataset waymo --src TFRECORDS --out ROOT [--split train]")
    if recipe is None:
        hint = ("itkd data prepare --dataset waymo --src TFRECORDS --out ROOT [--split train]" if dataset == "waymo"
                else "itkd data prepare --recipe synth-pillar")
        raise ItkdError("--recipe: required" + (" (or --src with --dataset waymo)" if dataset == "waymo" else ""),
                        hint=hint)
    _prepare_recipe(recipe, overrides, json_out)


def _prepare_recipe(recipe: str, overrides: List[str], json_out: bool) -> None:
    """The info caches of the train and val splits and the GT database of the train split."""
    from itkd_cli.data.cache import build_infos, cache_dir, describe, load_infos, write_infos
    from itkd_cli.data.gt_database import build_gt_database, db_path
    from itkd_cli.recipe.load import load_recipe

    cfg = load_recipe(recipe, overrides).dataset
    result: dict = {"cache_dir": str(cache_dir(cfg)), "splits": {}}
    train_infos: list = []
    for split in dict.fromkeys([cfg.train_split, cfg.val_split]):
        say(f"indexing split [bold]{split}[/] of {cfg.root if cfg.kind == 'waymo' else Path(cfg.root) / cfg.version}")
        if cfg.kind == "waymo":  # the converted root's segment indexes are the cache
            infos, path = load_infos(cfg, split), Path(cfg.root)
        else:
            infos = build_infos(cfg, split)
            path = write_infos(cfg, split, infos)
        result["splits"][split] = {"infos": str(path), **describe(infos)}
        if split == cfg.train_split:
            train_infos = infos
    out = db_path(cache_dir(cfg), cfg.version, cfg.train_split)
    say(f"cutting GT database objects from {len(train_infos)} frames")
    counts = build_gt_database(cfg, train_infos, out)
    result["gt_database"] = {"path": str(out), "objects": counts}
    if json_out:
        emit_json(result)
        return
    table = Table("split", "frames", "boxes", "info cache", title="itkd data prepare")
    for split, info in result["splits"].items():
        table.add_row(split, str(info["frames"]), str(sum(info["boxes"].values())), info["infos"])
    console.print(table)
    show_result(f"GT database: {sum(counts.values())} objects -> {out}")


def inspect(
    dataset: str = typer.Option("nuscenes", "--dataset", help="Dataset format (only nuscenes)."),
    data_root: Path = typer.Option(..., "--data-root", help="Dataset root folder."),
    version: Optional[str] = typer.Option(None, "--version",
                                          help="Version folder, e.g. v1.0-mini (default: the only one under --data-root)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split name (default: every sample)."),
    balanced: bool = typer.Option(False, "--balanced", help="Also count frames and boxes per class before and after "
                                  "class-balanced resampling (dataset.balanced_resampling), as training draws them."),
    seed: Optional[int] = typer.Option(None, "--seed", help="With --balanced: the train.seed of the draw "
                                       "(default: train.seed's default)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="With --balanced: dataset.class_names, comma-"
                                          "separated (default: nuScenes' 10 detection classes)."),
    json_out: bool = JsonOpt,
) -> None:
    """Frames, boxes per class, points found in each box vs num_lidar_pts (and with --balanced, CBGS counts)."""
    from itkd_cli.data.infos import only_version
    from itkd_cli.data.inspect import inspect_dataset
    from itkd_cli.recipe.schema import NUSCENES_CLASSES, TrainConfig

    if dataset != "nuscenes":
        raise ItkdError(f"--dataset: {dataset!r} is not supported (only nuscenes)")
    if not balanced and (seed is not None or classes is not None):
        raise ItkdError("--seed / --classes: only used with --balanced", hint="add --balanced")
    names = list(NUSCENES_CLASSES) if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        raise ItkdError(f"--classes: {classes!r} names no class", hint="e.g. --classes car,pedestrian")
    draw = (names, TrainConfig.model_fields["seed"].default if seed is None else seed) if balanced else None
    version = version or only_version(data_root)
    result = inspect_dataset(data_root, version, split, draw)
    if json_out:
        emit_json(result)
        return
    table = Table("class", "boxes", title=f"{data_root / version} ({split or 'all samples'}): {result['frames']} frames")
    for name, n in result["boxes"].items():
        table.add_row(name, str(n))
    console.print(table)
    rows = Table("annotation", "class", "num_lidar_pts", "found (LiDAR-frame box)", "found (global box)",
                 title="annotations whose counts differ")
    for ann in result["annotations"]:
        if ann["num_lidar_pts"] != ann["points_found"] or ann["num_lidar_pts"] != ann["points_found_global"]:
            rows.add_row(ann["token"], ann["class"], str(ann["num_lidar_pts"]), str(ann["points_found"]),
                         str(ann["points_found_global"]))
    if rows.row_count:
        console.print(rows)
    if draw is not None:
        bal = result["balanced"]
        before, after = bal["before"], bal["after"]
        cbgs = Table("class", "frames before", "boxes before", "frames after", "boxes after", title=(
            f"class-balanced resampling, seed {bal['seed']}: {before['frames']} -> {after['frames']} frames"))
        for name in bal["class_names"]:
            b, a = before["classes"][name], after["classes"][name]
            cbgs.add_row(name, str(b["frames"]), str(b["boxes"]), str(a["frames"]), str(a["boxes"]))
        console.print(cbgs)
    n = result["total"]
    show_result(f"in-box point counts vs num_lidar_pts: LiDAR-frame boxes (as trained) {result['exact']}/{n} exact, "
        f"{result['within_2']}/{n} within 2; global-frame boxes {result['exact_global']}/{n} exact, "
        f"{result['within_2_global']}/{n} within 2")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `itkd data` group."""
    app.command("prepare")(handle_errors(prepare))
    app.command("inspect")(handle_errors(inspect))
