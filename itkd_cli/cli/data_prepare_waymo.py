"""`itkd data prepare --dataset waymo --src DIR --out ROOT`: convert Waymo segments (called by `prepare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from itkd_cli.cli.common import STATE, console, emit_json, result


def convert(src: Path, out: Path, split: Optional[str], lidars: str, returns: int, workers: int,
            json_out: bool) -> None:
    """Convert the TFRecords under ``src`` into the root ``out`` with a progress bar, then print the summary."""
    from itkd_cli.data.waymo_prepare import prepare_waymo

    columns = (TextColumn("converting segments"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[frames]} frames"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=STATE["quiet"]) as bar:
        task = bar.add_task("convert", total=None, frames=0)
        summary = prepare_waymo(src, out, split, lidars, returns, workers,
                                progress=lambda done, total, frames: bar.update(task, completed=done, total=total,
                                                                                frames=frames))
    if json_out:
        emit_json(summary)
        return
    table = Table("split", "segments", "frames", title=f"itkd data prepare --dataset waymo -> {out}")
    for name, info in summary["splits"].items():
        table.add_row(name, str(info["segments"]), str(info["frames"]))
    console.print(table)
    skipped = f"; {summary['skipped']} already converted, skipped" if summary["skipped"] else ""
    result(f"converted {sum(s['segments'] for s in summary['splits'].values())} segment(s) "
           f"({summary['options']['lidars']} LiDARs, {summary['options']['returns']} return(s)){skipped} -> {out}")
