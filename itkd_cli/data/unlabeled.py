"""The unlabeled pool of ``dataset.unlabeled`` (#41): infos of frames nobody annotated, for distillation.

Sources (``recipe.dataset_schema.UnlabeledConfig``):

- ``split``: the frames of a split (nuScenes tables through the devkit and the info cache, or a converted Waymo
  split), their annotations dropped;
- ``sweeps``: the non-key LiDAR sweeps between the keyframes of a nuScenes split's scenes (``sweep_pool``),
  each a frame with its own pose and previous sweeps, one table cached like a split (``cache.load_sweep_table``);
- ``folder``: every ``.pcd.bin`` (nuScenes records) or ``.npy`` ((N, 5) float32, a converted Waymo frame) of a
  folder, sorted by name, taken as the recipe's LiDAR (Waymo: vehicle) frame: identity pose, one sweep.

Every info has the keys of ``infos.frame_info`` with empty annotations, plus ``"labeled": False``; the dataset
(``FrameDataset(..., infos=...)``) reads them like any other frame.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence

import numpy as np

from itkd_cli.core.errors import ItkdError
from itkd_cli.data.cache import load_infos, load_sweep_table
from itkd_cli.data.infos import split_scenes
from itkd_cli.data.points import PCD_FLOATS, load_frame_points
from itkd_cli.data.waymo import KIND as WAYMO, read_manifest, split_segments
from itkd_cli.recipe.schema import DatasetConfig, Recipe

PCD_SUFFIX, NPY_SUFFIX = ".pcd.bin", ".npy"
ANNOTATION_KEYS = ("gt_boxes", "gt_names", "num_lidar_pts", "ann_tokens", "difficulty")
# A pool frame with under this share of its points inside model.grid.point_range is in another frame or format.
MIN_INSIDE_SHARE = 0.10
RANGE_CHECK_FRAMES = 8  # spread over the pool; each a few MB at most


def describe_pool(cfg: DatasetConfig) -> str:
    """``source sweeps, split synth_train``: the pool's settings, for messages."""
    pool = cfg.unlabeled
    if pool is None:
        return "no pool"
    if pool.source == "folder":
        return f"source folder, folder {pool.folder}"
    return f"source {pool.source}, split {pool.split or cfg.train_split}"


def unlabeled_infos(cfg: DatasetConfig) -> Sequence[dict]:
    """Frame infos of the unlabeled pool ``cfg.unlabeled``, every one ``"labeled": False``.

    Raises:
        ItkdError: no pool configured, an unknown split, ``sweeps`` on a Waymo root, a missing folder, a folder
            mixing formats or holding the other dataset kind's format, an empty or truncated point file of a folder,
            or an empty pool.
    """
    pool = cfg.unlabeled
    if pool is None:
        raise ItkdError("dataset.unlabeled: not set", hint="set dataset.unlabeled.source (split, sweeps or folder)")
    if pool.source == "folder":
        infos = folder_infos(Path(str(pool.folder)), cfg.kind)
    else:
        split = pool.split or cfg.train_split
        if pool.source == "sweeps" and cfg.kind == WAYMO:
            raise ItkdError("dataset.unlabeled.source: sweeps needs a nuScenes-format dataset (dataset.kind is waymo: "
                            "a converted Waymo root holds no sweeps between keyframes)",
                            hint="use source: split (a converted split, e.g. `unlabeled`) or source: folder")
        try:
            infos = (load_sweep_table(cfg, split) if pool.source == "sweeps"
                     else [_drop_annotations(i) for i in load_infos(cfg, split, sampled=False)])
        except ItkdError as exc:
            if exc.message.startswith(f"split {split!r}"):  # unknown or empty split: name the field that chose it
                field = "dataset.unlabeled.split" if pool.split else "dataset.train_split (no dataset.unlabeled.split)"
                raise ItkdError(f"{field}: {exc.message}", hint=exc.hint) from None
            raise
    if not infos:
        hint = {"sweeps": "this split's scenes hold keyframes only; use source split or folder",
                "folder": f"put {PCD_SUFFIX} or {NPY_SUFFIX} point files in it"}.get(pool.source)
        raise ItkdError(f"dataset.unlabeled: the pool holds no frame ({describe_pool(cfg)})", hint=hint)
    return infos


def _drop_annotations(info: dict) -> dict:
    """A frame info without its annotations, marked unlabeled."""
    return {**info, **{k: [] for k in ANNOTATION_KEYS if k in info}, "labeled": False}


def folder_infos(folder: Path, kind: str) -> list[dict]:
    """Infos of the point files of ``folder`` (not recursive), sorted by name.

    Args:
        folder: holds ``.pcd.bin`` files (dataset.kind nuscenes) or ``.npy`` files (dataset.kind waymo).
        kind: dataset.kind.

    Raises:
        ItkdError: the folder is missing, mixes both formats, holds the other kind's format, or an empty or
            truncated ``.pcd.bin`` / empty ``.npy`` file (checked by size, before any training).
    """
    field = "dataset.unlabeled.folder"
    if not folder.is_dir():
        raise ItkdError(f"{field}: {folder}: folder not found", hint="point it at a folder of LiDAR point files")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()
                   and (p.name.endswith(PCD_SUFFIX) or p.suffix == NPY_SUFFIX))
    pcd = [p for p in files if p.name.endswith(PCD_SUFFIX)]
    npy = [p for p in files if p.suffix == NPY_SUFFIX]
    if pcd and npy:
        raise ItkdError(f"{field}: {folder} mixes {PCD_SUFFIX} ({pcd[0].name}) and {NPY_SUFFIX} ({npy[0].name}) "
                        "point files", hint="keep the files of one format, the one of dataset.kind")
    wrong = npy if kind != WAYMO else pcd
    if wrong:
        found, reads = ((f"a {NPY_SUFFIX} file (a converted Waymo frame)", f"{PCD_SUFFIX} files")
                        if kind != WAYMO else (f"a {PCD_SUFFIX} file (nuScenes records)", f"{NPY_SUFFIX} files"))
        raise ItkdError(f"{field}: {wrong[0]}: {found}, but dataset.kind is {kind}, which reads {reads}",
                        hint="point the pool at files of the recipe's dataset kind")
    record = 4 * PCD_FLOATS
    for path in files:
        size = path.stat().st_size
        if size == 0 or (path.name.endswith(PCD_SUFFIX) and size % record):
            what = "is empty" if size == 0 else f"holds {size} bytes, not a multiple of {record} ({PCD_FLOATS} float32)"
            raise ItkdError(f"{field}: {path}: {what}", hint="remove or replace the file")
    return [_file_info(p, kind) for p in files]


def _file_info(path: Path, kind: str) -> dict:
    """One point file as a frame info: the recipe's LiDAR frame (identity pose), no sweeps, no annotations."""
    info = {"token": path.name, "lidar_token": "", "lidar_path": str(path.absolute()), "timestamp": 0,
            "lidar_to_global": np.eye(4).tolist(), "sweeps": [], **{k: [] for k in ANNOTATION_KEYS[:4]},
            "labeled": False}
    return {"kind": WAYMO, "context": "", **info} if kind == WAYMO else info


def point_file(root: str | Path, info: dict) -> Path:
    """The point file of a frame info (folder infos hold absolute paths)."""
    return Path(root) / info["lidar_path"]


def check_point_range(recipe: Recipe, infos: Sequence[dict], frames: int = RANGE_CHECK_FRAMES) -> None:
    """Refuse a pool with frames whose points lie mostly outside ``model.grid.point_range``.

    Reads ``frames`` frames spread over ``infos`` (their own points, no sweeps); a frame with under
    ``MIN_INSIDE_SHARE`` of its points inside the range is in another coordinate frame or format than the recipe's
    (e.g. a Waymo vehicle-frame file read as nuScenes records, or points in a global frame). Each frame is judged
    on its own, so a folder mixing such files with good ones is caught when one of them is read.

    Raises:
        ItkdError: names the frame with the smallest share, its share, the range and how many frames read failed;
            or a point file is unreadable.
    """
    cfg, point_range = recipe.dataset, tuple(recipe.model.grid.point_range)
    if not infos:
        return
    lo, hi = np.asarray(point_range[:3]), np.asarray(point_range[3:])
    picks = sorted({int(i) for i in np.linspace(0, len(infos) - 1, min(frames, len(infos))).round()})
    shares = []
    for i in picks:
        points = load_frame_points(cfg.root, infos[i], 1)
        inside = int(np.all((points[:, :3] >= lo) & (points[:, :3] < hi), axis=1).sum())
        shares.append((inside / max(len(points), 1), i))
    outside = [s for s in shares if s[0] < MIN_INSIDE_SHARE]
    if outside:
        share, i = min(outside)
        raise ItkdError(
            f"dataset.unlabeled: {point_file(cfg.root, infos[i])}: only {share:.1%} of its points lie inside "
            f"model.grid.point_range {list(point_range)} ({len(outside)} of the {len(picks)} pool frames read are "
            f"under {MIN_INSIDE_SHARE:.0%}, {describe_pool(cfg)}); the pool is in another coordinate frame or format "
            "than the recipe's",
            hint="unlabeled points must be in the recipe's LiDAR frame (Waymo: vehicle frame), in the dataset's "
                 "point format")


def check_apart_from_val(cfg: DatasetConfig, infos: Sequence[dict]) -> None:
    """Refuse a pool that holds what ``itkd compress`` scores the student on, ``dataset.val_split``: a pool split
    sharing scenes (Waymo: segments) with it, or for a folder, a point file that a val frame reads (its keyframe or
    a stacked sweep: a folder pointed at ``samples/``).

    A student distilled on those frames is scored on frames it trained on, and its report would say more than
    the student can do. (Copies of val files under other names are not detected.)

    Raises:
        ItkdError: names the field, the split and the first shared scene or point file.
    """
    pool = cfg.unlabeled
    if pool is None:
        return
    hint = "take the pool from scenes that are not evaluated: a split without annotations, the train split's " \
           "sweeps, or a folder of other drives"
    if pool.source != "folder":
        split = pool.split or cfg.train_split
        units, scored_units = _scenes(cfg, split), set(_scenes(cfg, cfg.val_split))
        shared = [u for u in units if u in scored_units]
        if shared:
            field = "dataset.unlabeled.split" if pool.split else "dataset.train_split (no dataset.unlabeled.split)"
            kind = "segments" if cfg.kind == WAYMO else "scenes"
            what = "the sweeps of those scenes" if pool.source == "sweeps" else "their frames"
            raise ItkdError(f"{field}: {split!r} shares {len(shared)} of its {len(units)} {kind} with "
                            f"dataset.val_split {cfg.val_split!r} (first: {shared[0]}), which `itkd compress` scores "
                            f"the student on; distilled on {what}, the student would be scored on frames it trained "
                            "on", hint=hint)
        return
    scored = set()
    for info in load_infos(cfg, cfg.val_split, sampled=False):
        scored.add(point_file(cfg.root, info).resolve())
        scored.update(Path(cfg.root, sweep["path"]).resolve() for sweep in info.get("sweeps", []))
    files = [path for path in (point_file(cfg.root, info).resolve() for info in infos) if path in scored]
    if files:
        raise ItkdError(f"dataset.unlabeled: {len(files)} of the pool's {len(infos)} frames are point files of "
                        f"dataset.val_split {cfg.val_split!r} (first: {files[0]}), which `itkd compress` scores the "
                        f"student on ({describe_pool(cfg)})", hint=hint)


def _scenes(cfg: DatasetConfig, split: str) -> list[str]:
    """Scene names (Waymo: segment names) of a split."""
    if cfg.kind == WAYMO:
        return split_segments(read_manifest(cfg.root), cfg.root, split)
    return split_scenes(cfg.root, cfg.version, split)


def load_pool(recipe: Recipe) -> Sequence[dict]:
    """The unlabeled pool's infos, checked: ``unlabeled_infos`` then ``check_point_range`` (a few frames read).

    What ``itkd compress`` calls before any work (``build_loader(..., unlabeled=True)`` calls it too).

    Raises:
        ItkdError: see ``unlabeled_infos`` and ``check_point_range``.
    """
    infos = unlabeled_infos(recipe.dataset)
    check_point_range(recipe, infos)
    return infos
