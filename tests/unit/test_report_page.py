"""`itkd report RUN_DIR`: the page of a compress run from hand-made run folders: its sections, the AP chart's
bars (the numbers drawn), a self-contained HTML file, the rerun commands, and one-line errors."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from itkd_cli.pipeline.report import plot_ap_per_class, plot_curves
from itkd_cli.recipe.load import load_recipe

PNG = b"\x89PNG\r\n\x1a\n"


def _side(params: int, latency: float, ap: dict[str, float]) -> dict:
    return {"params": params, "gmacs": 1.5, "latency_ms": latency, "mAP": sum(ap.values()) / len(ap), "NDS": 0.4,
            "per_class": {k: {"AP": v} for k, v in ap.items()}, "profile_frame": {"points": 1000, "voxels": 200}}


@pytest.fixture()
def run(tmp_path) -> Path:
    """A compress run folder as compress leaves it (without training): report.json, metrics.jsonl, curves.png."""
    out = tmp_path / "run"
    (out / "train").mkdir(parents=True)
    records = [{"step": s, "epoch": 1, "lr": 1e-3, "loss": 3.0 - s / 10, "det": 2.0} for s in (1, 2, 3)]
    (out / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_curves(out / "train" / "metrics.jsonl", out / "curves.png", "test")
    report = {
        "method": "itkd", "ratio": 0.25, "policy": "neck", "teacher_checkpoint": "teachers/t.pth",
        "student_checkpoint": str(out / "student.pth"), "split": "synth_val", "frames": 3,
        "teacher": {**_side(4_000_000, 20.0, {"car": 0.6, "pedestrian": 0.4}),
                    "cache_key": {"teacher_sha256": "ab" * 32}},
        "student": _side(1_000_000, 5.0, {"car": 0.5, "pedestrian": 0.1}),
        "curves": str(out / "curves.png"), "kd_pull": {}, "notes": [],
        "recipe": load_recipe("synth-pillar-itkd-1-4", ["gates.max_drop=0.1"]).model_dump(mode="json"),
        "max_eval_frames": 3, "cwd": str(tmp_path),
        "gates": [{"name": "max_drop", "threshold": 0.1, "value": 0.2, "passed": False,
                   "metric": "mAP drop (teacher - student)"},
                  {"name": "min_speedup", "threshold": 2.0, "value": 4.0, "passed": True, "metric": "latency"}],
        "gates_passed": False,
    }
    (out / "report.json").write_text(json.dumps(report))
    return out


def _export_record(run: Path) -> None:
    frame = {"frame": "synth_val[0] abc", "pillars": 200, "decoded": {"torch_count": 7, "ort_count": 7,
             "max_score_diff": 1e-7, "max_box_diff": 2e-6, "unexplained": 0, "tie_ambiguous": 0},
             "outputs": {"task0_hm": {"shape": [1, 5, 8, 8], "max_abs": 3.5e-6, "mean_abs": 1e-7},
                         "task0_dim": {"shape": [1, 3, 8, 8], "max_abs": 1e-6, "mean_abs": 1e-7}}}
    (run / "student.onnx").write_bytes(b"onnx")
    (run / "student.export.json").write_text(json.dumps({
        "onnx": str(run / "student.onnx"), "graph": "pillar_full", "opset": 17, "atol": 1e-3, "frames": [frame],
        "latency_ms": {"torch_eager": 4.0, "onnxruntime": 2.0, "provider": "CPUExecutionProvider", "speedup": 2.0}}))


def test_the_ap_chart_draws_each_class_ap_teacher_beside_student(run, tmp_path):
    report = json.loads((run / "report.json").read_text())
    drawn = plot_ap_per_class(report, tmp_path / "ap.png")
    assert drawn == {"classes": ["car", "pedestrian"], "teacher": [0.6, 0.4], "student": [0.5, 0.1]}
    assert (tmp_path / "ap.png").read_bytes().startswith(PNG)
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(tmp_path / "ap.png").shape
    assert (width, height) == (600, 400)  # 6 x 4 inches at 100 dpi
    empty = {**report, "teacher": {}, "student": {}}
    assert plot_ap_per_class(empty, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_markdown_page_has_every_section(cli, run):
    result = cli("report", run)
    assert result.exit_code == 0, result.output
    text = (run / "report.md").read_text()
    for part in ("# itkd compress report: itkd student, ratio 0.25 (neck policy)", "gates: 1 passed, 1 failed",
                 "| --max-drop | mAP drop (teacher - student) | 0.1000 | 0.2000 | FAILED |",
                 "| --min-speedup | latency | 2.00x | 4.00x | passed |",
                 "| params | 4,000,000 | 1,000,000 | 0.250 |", "| car | 0.6000 | 0.5000 |",
                 "![AP per class, teacher vs student](ap_per_class.png)", "![training curves](curves.png)",
                 "3 logged steps in `train/metrics.jsonl`, the last step 3", "No ONNX export beside the student",
                 "(1,000 points, 200 pillars/voxels)", "sha256 abababababababab"):
        assert part in text, part
    assert (run / "ap_per_class.png").read_bytes().startswith(PNG)


def test_the_rerun_commands_and_recipe_reproduce_the_run(cli, run, tmp_path):
    assert cli("report", run).exit_code == 0
    code = re.search(r"```\n(.*?)\n```", (run / "report.md").read_text(), re.S).group(1).splitlines()
    assert code == [f"cd {tmp_path}",
                    f"itkd compress --teacher teachers/t.pth --recipe {run / 'recipe.yaml'} --out {run}.rerun "
                    "--max-eval-frames 3",
                    f"itkd export --onnx --checkpoint {run}.rerun/student.pth",
                    f"itkd report {run}.rerun --format html"]
    stored = json.loads((run / "report.json").read_text())["recipe"]
    again = load_recipe(run / "recipe.yaml")
    assert again.model_dump(mode="json") == stored and again.gates.max_drop == 0.1


def test_html_page_is_one_file_with_its_pictures_embedded(cli, run):
    _export_record(run)
    result = cli("report", run, "--format", "html", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1 and data["report"] == str(run / "report.html")
    assert data["onnx"] == str(run / "student.onnx") and data["gates_passed"] is False
    html = (run / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', html)
    embedded = [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]
    assert embedded == [(run / "ap_per_class.png").read_bytes(), (run / "curves.png").read_bytes()]
    text = re.sub(r'src="data:image/png;base64,[^"]*"', "", html)
    assert "href=" not in text and "http" not in text and "src=" not in text  # nothing outside the file
    assert '<td class="failed">FAILED</td>' in html
    assert "3.50e-06 (task0_hm)" in html and "7 / 7" in html and "onnxruntime [CPUExecutionProvider] 2.0 ms" in html


def test_out_elsewhere_gets_its_chart_and_recipe_beside_it(cli, run, tmp_path):
    page = tmp_path / "pages" / "job.md"
    assert cli("report", run, "--out", page).exit_code == 0
    assert (page.parent / "ap_per_class.png").is_file() and (page.parent / "recipe.yaml").is_file()
    assert "![training curves](../run/curves.png)" in page.read_text()
    assert not (run / "report.md").exists()


def test_a_report_from_an_itkd_without_gates_or_recipe_still_renders(cli, run):
    report = json.loads((run / "report.json").read_text())
    for key in ("gates", "gates_passed", "recipe", "cwd", "max_eval_frames"):
        report.pop(key)
    (run / "report.json").write_text(json.dumps(report))
    assert cli("report", run).exit_code == 0
    text = (run / "report.md").read_text()
    assert "Not checked: this report.json was written by an itkd without gates." in text
    assert "stores no recipe this itkd can read" in text and not (run / "recipe.yaml").exists()


def _one_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_a_missing_folder_or_one_without_a_compress_report_is_one_line_exit_2(cli, run, tmp_path):
    assert "no such run folder" in _one_error(cli("report", tmp_path / "nope"))
    train_run = tmp_path / "teacher"
    train_run.mkdir()
    (train_run / "last.pth").write_bytes(b"weights")
    assert "not an itkd compress run (no report.json)" in _one_error(cli("report", train_run))
    (train_run / "report.json").write_text("{not json")
    assert "report.json: unreadable" in _one_error(cli("report", train_run))
    (train_run / "report.json").write_text('{"mAP": 0.3}')
    assert "not a compress report (no method, teacher, student)" in _one_error(cli("report", train_run))
    assert "--format pdf: expected one of md, html" in _one_error(cli("report", run, "--format", "pdf"))
    assert not (run / "report.pdf").exists() and not (run / "ap_per_class.png").exists()
    data = json.loads(cli("report", tmp_path / "nope", "--json").stdout)
    assert data["schema_version"] == 1 and data["exit_code"] == 2
