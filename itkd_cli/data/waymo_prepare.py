"""`itkd data prepare --dataset waymo`: Waymo TFRecords -> a converted root that training reads.

Each segment is converted by the Waymo venv's worker (`tool.py convert`, waymo_open_dataset's
frame_utils), several segments at a time. The worker writes every point file atomically and the
segment's index last, so a killed or failed conversion keeps what it finished and the same command
continues it; a segment already converted with the same options is skipped.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Optional

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.io import write_json
from itkd_cli.core.waymo_env import run_tool, waymo_python
from itkd_cli.data.waymo import (
    FORMAT, FORMAT_VERSION, MANIFEST, SEGMENTS, read_manifest, read_segment, tfrecord_files,
)

LIDARS = ("all", "top")
RETURNS = (1, 2)
# Waymo's own folder names for the released splits -> the split names itkd's Waymo recipes use; unlabeled/
# (`itkd data synth --format waymo --unlabeled-scenes N`: frames without labels) -> a dataset.unlabeled pool.
SPLIT_FOLDERS = {"training": "train", "validation": "val", "unlabeled": "unlabeled"}

Progress = Callable[[int, int, int], None]  # (segments done, segments total, frames converted)


def sources_by_split(src: Path, split: Optional[str]) -> dict[str, list[Path]]:
    """The TFRecords to convert, per split.

    With ``split`` every .tfrecord of ``src`` (a file or a folder) belongs to it; without, ``src`` must
    hold Waymo's training/ and/or validation/ folders, which become the train / val splits (and an unlabeled/
    folder the split ``unlabeled``).

    Raises:
        ItkdError: no TFRecord there, or no split named and no training/validation/unlabeled folder.
    """
    if split is not None:
        if not split or "/" in split:
            raise ItkdError(f"--split {split!r}: expected a plain name such as train or val")
        return {split: tfrecord_files(src)}
    found = {name: tfrecord_files(src / folder) for folder, name in SPLIT_FOLDERS.items() if (src / folder).is_dir()}
    if not found:
        raise ItkdError(f"--src {src}: no training/, validation/ or unlabeled/ folder, and no --split given",
                        hint="name the split these segments form: --split train (or --split val)")
    return found


def _check_segments(sources: dict[str, list[Path]], manifest: dict[str, Any]) -> None:
    """A segment belongs to one split, and a root's split keeps the segments it was converted with."""
    seen: dict[str, str] = {}
    for split, files in sources.items():
        for f in files:
            if f.stem in seen:
                raise ItkdError(f"{f}: segment {f.stem} is given twice ({seen[f.stem]} and {split})")
            seen[f.stem] = split
    for split, names in manifest.get("splits", {}).items():
        for name in names:
            if name in seen and seen[name] != split:
                raise ItkdError(f"segment {name}: already converted into split {split!r} of this root, "
                                f"now given for {seen[name]!r}", hint="convert it into one split only")


def _start_manifest(out: Path, sources: dict[str, list[Path]], options: dict[str, Any]) -> dict[str, Any]:
    """Read (or start) the root's manifest, refuse other options, record the splits being converted."""
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        if manifest.get("options") != options:
            raise ItkdError(f"--out {out}: converted with other options ({manifest.get('options')}, now {options})",
                            hint="repeat the root's --lidars / --returns, or convert into a new --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ItkdError(f"--out {out}: exists and is not a converted Waymo root", hint="choose a new or empty folder")
    else:
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "options": options, "splits": {}}
    _check_segments(sources, manifest)
    for split, files in sources.items():
        manifest["splits"][split] = sorted({*manifest["splits"].get(split, []), *(f.stem for f in files)})
    write_json(out / MANIFEST, manifest)  # before any segment: a reader names what is missing, never guesses
    return manifest


def _convert_all(jobs: list[tuple[Path, Path]], options: dict[str, Any], workers: int,
                 progress: Optional[Progress]) -> dict[str, int]:
    """Run the worker on every (tfrecord, segment folder); the first failure stops new ones starting."""
    lock = threading.Lock()
    state = {"segments": 0, "frames": 0, "skipped": 0}

    def one(record: Path, folder: Path) -> None:
        def line(text: str) -> None:
            with lock:
                if text.startswith("frame "):
                    state["frames"] += 1
                elif text == "skipped":
                    state["skipped"] += 1
                if progress is not None:
                    progress(state["segments"], len(jobs), state["frames"])

        run_tool("convert", record, folder, "--lidars", options["lidars"], "--returns", str(options["returns"]),
                 on_line=line)
        with lock:
            state["segments"] += 1
            if progress is not None:
                progress(state["segments"], len(jobs), state["frames"])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, record, folder) for record, folder in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()  # segments not started stay for the re-run; running ones finish their frames
            exc = failed[0].exception()
            if isinstance(exc, ItkdError):
                raise ItkdError(exc.message, hint=exc.hint or "fix the cause, then run the same command again: "
                                "segments already converted are kept and skipped", exit_code=exc.exit_code)
            raise exc
    return state


def prepare_waymo(src: Path, out: Path, split: Optional[str] = None, lidars: str = "all", returns: int = 2,
                  workers: int = 2, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Convert Waymo segments into a root that ``dataset.kind: waymo`` recipes train and evaluate on.

    Args:
        src: a .tfrecord, a folder of them, or a folder with Waymo's training/ and validation/ folders (and
            unlabeled/, converted as split ``unlabeled``).
        out: the converted root (new, empty, or one converted earlier with the same options).
        split: the split the segments form (default: from training/ -> train, validation/ -> val).
        lidars: "all" five LiDARs (OpenPCDet) or the "top" one only.
        returns: 2 (both returns, OpenPCDet) or 1 (first return only).
        workers: segments converted at once (one Waymo-venv process each).
        progress: called with (segments done, segments total, frames converted).

    Returns:
        Summary: out, options, per split its segments and frames, segments skipped (already converted),
        seconds.

    Raises:
        ItkdError: bad arguments, no TFRecords, no Waymo venv, a truncated or foreign TFRecord, a full
            disk (what was converted is kept: the same command resumes), a root of other options or version.
    """
    if lidars not in LIDARS:
        raise ItkdError(f"--lidars {lidars}: expected one of {', '.join(LIDARS)}")
    if returns not in RETURNS:
        raise ItkdError(f"--returns {returns}: expected 1 or 2")
    if workers < 1:
        raise ItkdError(f"--workers {workers}: must be at least 1")
    start = time.perf_counter()
    sources = sources_by_split(Path(src), split)
    waymo_python()  # no venv: one line naming the command that makes it, before anything is written
    options = {"lidars": lidars, "returns": returns}
    _start_manifest(out, sources, options)
    jobs = [(f, out / SEGMENTS / f.stem) for files in sources.values() for f in files]
    state = _convert_all(jobs, options, workers, progress)
    splits = {}
    for name, files in sources.items():
        frames = sum(len(read_segment(out, f.stem)["frames"]) for f in files)
        splits[name] = {"segments": len(files), "frames": frames}
    return {"out": str(out), "options": options, "splits": splits, "skipped": state["skipped"],
            "seconds": round(time.perf_counter() - start, 2)}
