"""`itkd report`: the page of one compress run (markdown or one self-contained HTML file) from its report.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from itkd_cli.cli.common import JsonOpt, emit_json, handle_errors, result


def register(app: typer.Typer) -> None:
    """Add the top-level `report` command."""

    @app.command("report")
    @handle_errors
    def report(
        run_dir: Path = typer.Argument(..., help="The --out folder of `itkd compress` (holds report.json)."),
        fmt: str = typer.Option("md", "--format", "-f", help="md (PNGs beside it) or html (one file, PNGs embedded)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Page to write (default: RUN_DIR/report.<format>); "
                                           "ap_per_class.png and recipe.yaml go beside it."),
        json_out: bool = JsonOpt,
    ) -> None:
        """Write the page of a compress run: gates, teacher vs student, AP per class, curves, ONNX checks, rerun commands.

        Run it again after `itkd export --onnx --checkpoint RUN_DIR/student.pth` to add the ONNX verification.
        """
        from itkd_cli.pipeline.report_page import read_run, write_page

        data = read_run(run_dir)
        page = write_page(run_dir, data, fmt, out)
        if json_out:
            emit_json({"report": str(page.path), "format": fmt, "run_dir": str(run_dir),
                       "images": [str(p) for p in page.images], "recipe": str(page.recipe) if page.recipe else None,
                       "onnx": str(page.export) if page.export else None, "gates": data.get("gates"),
                       "gates_passed": data.get("gates_passed")})
            return
        result(f"wrote {page.path}" + ("" if page.export else " (no ONNX export of the student beside it yet)"))
