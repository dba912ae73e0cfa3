"""Info cache: per-split frame infos stored as JSON so the devkit is indexed once, not every epoch."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, Optional

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_json
from itkd_cli.data.infos import frame_info, open_nuscenes, split_sample_tokens
from itkd_cli.data.sweep_pool import SweepTable, build_sweep_table, frame_tokens
from itkd_cli.data.waymo import waymo_infos
from itkd_cli.recipe.schema import DatasetConfig

CACHE_FORMAT = 1


def cache_dir(cfg: DatasetConfig) -> Path:
    """Folder of the info caches and GT databases."""
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.root) / "itkd_cache"


def info_path(cfg: DatasetConfig, split: str) -> Path:
    """<cache_dir>/<version>_<split>.json."""
    return cache_dir(cfg) / f"{cfg.version}_{split}.json"


# Tables whose content ends up in the infos; their size and mtime are part of the cache key.
SIGNED_TABLES = ("scene", "sample", "sample_data", "sample_annotation", "ego_pose", "calibrated_sensor",
                 "instance", "category")


def _table_signature(cfg: DatasetConfig) -> dict[str, list[int]]:
    out = {}
    for name in SIGNED_TABLES:
        path = Path(cfg.root) / cfg.version / f"{name}.json"
        st = path.stat() if path.is_file() else None
        out[name] = [st.st_size, st.st_mtime_ns] if st else [-1, -1]
    return out


def _meta(cfg: DatasetConfig, split: str) -> dict:
    # Anything that changes the infos' content invalidates the cache (a regenerated dataset included).
    return {"format": CACHE_FORMAT, "version": cfg.version, "split": split, "sweeps": cfg.sweeps,
            "max_sweep_lag": cfg.max_sweep_lag, "tables": _table_signature(cfg)}


def build_infos(cfg: DatasetConfig, split: str, progress: Optional[Callable[[int, int], None]] = None) -> list[dict]:
    """Index the dataset with the devkit and return the split's frame infos.

    Raises:
        ItkdError: bad tables, dangling tokens, unknown split, or a split with no frames.
    """
    nusc = open_nuscenes(cfg.root, cfg.version)
    tokens = split_sample_tokens(nusc, split)
    if not tokens:
        raise ItkdError(f"split {split!r}: no scene of {Path(cfg.root) / cfg.version} belongs to it",
                        hint="check dataset.version / the split name (mini_train, mini_val for v1.0-mini)")
    infos = []
    for i, token in enumerate(tokens):
        infos.append(frame_info(nusc, token, cfg.sweeps, cfg.max_sweep_lag))
        if progress:
            progress(i + 1, len(tokens))
    return infos


def write_infos(cfg: DatasetConfig, split: str, infos: list[dict]) -> Path:
    """Atomically write the cache of one split."""
    return write_json(info_path(cfg, split), {"meta": _meta(cfg, split), "infos": infos})


def load_infos(cfg: DatasetConfig, split: str, build_missing: bool = True, sampled: bool = True) -> list[dict]:
    """Frame infos of a split, every ``dataset.sampled_interval``-th frame of it (every frame when not ``sampled``).

    nuScenes infos come from the cache, (re)built and written when absent or stale; a converted Waymo
    root's segment indexes are read as they are (they are the cache).

    Raises:
        ItkdError: unreadable cache file, or cache absent and ``build_missing`` is False.
    """
    if cfg.kind == "waymo":
        infos = waymo_infos(cfg.root, split)
    else:
        infos = _nuscenes_infos(cfg, split, build_missing)
    step = {cfg.train_split: cfg.sampled_interval.train, cfg.val_split: cfg.sampled_interval.val}.get(split, 1)
    return infos[::step] if sampled else infos


def _cached(path: Path, meta: dict, build: Callable[[], list[dict]], build_missing: bool) -> list[dict]:
    """The infos stored at ``path`` when their meta matches, else ``build()`` written there."""
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ItkdError(f"{path}: unreadable info cache ({exc})",
                            hint="delete it and run `itkd data prepare --recipe ...`") from None
        if isinstance(data, dict) and data.get("meta") == meta:
            return data["infos"]
    if not build_missing:
        raise ItkdError(f"{path}: info cache missing or stale", hint="run `itkd data prepare --recipe ...`")
    infos = build()
    write_json(path, {"meta": meta, "infos": infos})
    return infos


def _nuscenes_infos(cfg: DatasetConfig, split: str, build_missing: bool) -> list[dict]:
    return _cached(info_path(cfg, split), _meta(cfg, split), lambda: build_infos(cfg, split), build_missing)


def load_sweep_table(cfg: DatasetConfig, split: str) -> SweepTable:
    """The non-key LiDAR sweeps of a nuScenes split's scenes as a pool (``sweep_pool.build_sweep_table``), cached
    in <cache_dir>/<version>_<split>_sweeps.npz under the key of the split's own cache (a regenerated dataset or
    other sweep settings rebuild it).

    Raises:
        ItkdError: an unreadable cache file, bad tables, an unknown split.
    """
    path = cache_dir(cfg) / f"{cfg.version}_{split}_sweeps.npz"
    meta = {**_meta(cfg, split), "pool": "sweeps"}
    table = SweepTable.load(path, meta)
    if table is None:
        table = build_sweep_table(open_nuscenes(cfg.root, cfg.version), split, cfg.sweeps, cfg.max_sweep_lag)
        table.save(path, meta)
    return table


def info_index(infos: Sequence[dict]) -> dict[str, int]:
    """Sample token -> dataset index."""
    return {token: i for i, token in enumerate(frame_tokens(infos))}


def check_token(index: dict[str, int], token: str, split: str) -> int:
    """Dataset index of a token, or an error naming it."""
    if token not in index:
        raise ItkdError(f"sample token {token!r}: not in split {split!r}")
    return index[token]


def describe(infos: list[dict]) -> dict[str, Any]:
    """Frame and box counts of a list of infos."""
    counts: dict[str, int] = {}
    for info in infos:
        for name in info["gt_names"]:
            counts[name] = counts.get(name, 0) + 1
    return {"frames": len(infos), "boxes": dict(sorted(counts.items()))}
