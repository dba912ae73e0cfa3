"""The gates through the CLI: each gate passes (exit 0) and fails (exit 1, one line naming it, the entry in
report.json / metrics.json), with everything still written. Only the expensive stage is replaced: compress's
training and evaluation (the real recipe resolution, report writing and gate judging run), eval's inference.
tests/integration/test_compress_cli.py runs a real compress with a failing gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from itkd_cli.recipe.load import load_recipe
from tests.unit.test_gates import CASES, REPORT


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """An itkd synth-pillar checkpoint (random weights): compress resolves its recipe from it."""
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    recipe = load_recipe("synth-pillar")
    return save_checkpoint(tmp_path_factory.mktemp("t") / "teacher.pth", build_model(recipe.model), recipe, "teacher")


@pytest.fixture()
def fake_training(monkeypatch):
    """compress with the hand numbers of test_gates.REPORT in place of training + evaluation; what follows them
    (report.json, gates, report.md / report.html) is the real ``finish_report``."""
    import itkd_cli.pipeline.compress as mod

    def fake(recipe, teacher, out_dir, **_):
        mod.gating.check_applicable(recipe.gates, "compress", "nuscenes", source="recipe")
        student = Path(out_dir) / "student.pth"
        student.parent.mkdir(parents=True, exist_ok=True)
        student.write_bytes(b"student weights")
        report = {"method": "itkd", "ratio": 0.25, "policy": "neck", "teacher_checkpoint": str(teacher),
                  "student_checkpoint": str(student), "split": "synth_val", "frames": 3,
                  "teacher": dict(REPORT["teacher"]), "student": dict(REPORT["student"]), "curves": None,
                  "kd_pull": {}, "notes": [], "recipe": recipe.model_dump(mode="json")}
        rj, rm, checked = mod.finish_report(out_dir, report, recipe.gates)
        return mod.CompressResult(student, rj, rm, None, report, tuple(checked))

    monkeypatch.setattr(mod, "compress", fake)


def _compress(cli, teacher: Path, out: Path, *flags: str):
    return cli("--quiet", "compress", "--teacher", teacher, "--out", out, *flags)


@pytest.mark.parametrize("name,good,bad,line", CASES)
def test_each_gate_passes_and_fails_through_compress(cli, teacher, fake_training, tmp_path, name, good, bad, line):
    flag = "--" + name.replace("_", "-")
    ok = _compress(cli, teacher, tmp_path / "ok", flag, str(good))
    assert ok.exit_code == 0, ok.output
    assert "gates: 1 passed" in ok.output and not _errors(ok.output)
    ko = _compress(cli, teacher, tmp_path / "ko", flag, str(bad))
    assert ko.exit_code == 1, ko.output
    assert _errors(ko.output) == [f"error: {line}"]
    for out, threshold, passed in ((tmp_path / "ok", good, True), (tmp_path / "ko", bad, False)):
        report = json.loads((out / "report.json").read_text())
        (gate,) = report["gates"]
        assert (gate["name"], gate["threshold"], gate["passed"]) == (name, threshold, passed)
        assert report["gates_passed"] is passed and report["recipe"]["gates"][name] == threshold
        assert (out / "student.pth").is_file() and (out / "report.html").is_file()
        assert ("| FAILED |" in (out / "report.md").read_text()) is not passed


def test_recipe_gates_apply_and_flags_override_them(cli, teacher, fake_training, tmp_path):
    ko = _compress(cli, teacher, tmp_path / "ko", "--set", "gates.min_map=0.38")
    assert ko.exit_code == 1 and _errors(ko.output) == ["error: gate --min-map failed: student mAP 0.3700 is below 0.38"]
    ok = _compress(cli, teacher, tmp_path / "ok", "--set", "gates.min_map=0.38", "--min-map", "0.35")
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "ok" / "report.json").read_text())["gates"][0]["threshold"] == 0.35


def test_a_failed_gate_under_json_is_the_full_result_then_exit_1(cli, teacher, fake_training, tmp_path):
    result = _compress(cli, teacher, tmp_path / "run", "--json", "--min-map", "0.9", "--max-drop", "0.05")
    assert result.exit_code == 1
    data = json.loads(result.stdout)  # one object: the result, not an error object
    assert data["schema_version"] == 1 and data["gates_passed"] is False and "error" not in data
    assert [(g["name"], g["passed"]) for g in data["gates"]] == [("min_map", False), ("max_drop", True)]
    assert data["report_html"] == str(tmp_path / "run" / "report.html")
    assert _errors(result.stderr) == ["error: gate --min-map failed: student mAP 0.3700 is below 0.9"]


def test_several_failed_gates_are_one_line_each(cli, teacher, fake_training, tmp_path):
    result = _compress(cli, teacher, tmp_path / "run", "--min-map", "0.9", "--max-params", "10", "--min-nds", "0.1")
    assert result.exit_code == 1
    assert [e.split(" failed")[0] for e in _errors(result.output)] == ["error: gate --min-map", "error: gate --max-params"]


def test_the_gates_a_teacher_was_made_under_are_not_the_students(cli, fake_training, tmp_path):
    """A student compressed again: the gates stored in its recipe were its own job's, not this one's."""
    from itkd_cli.models.build import build_model
    from itkd_cli.models.checkpoint import save_checkpoint

    recipe = load_recipe("synth-pillar", ["gates.min_map=0.99"])
    gated = save_checkpoint(tmp_path / "student.pth", build_model(recipe.model), recipe, "student")
    result = _compress(cli, gated, tmp_path / "again")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "again" / "report.json").read_text())["gates"] == []


# ------------------------------------------------------------------------------------------------------ eval
@pytest.fixture()
def fake_inference(monkeypatch, tmp_path):
    """eval with a 110-parameter network and hand metrics in place of loading, inference and the devkit."""
    import torch

    import itkd_cli.evaluate.run as run
    import itkd_cli.evaluate.waymo_eval as waymo

    recipe = load_recipe("synth-pillar", [f"dataset.root={tmp_path}"])

    def metrics(out_dir, data):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(data))
        return dict(data)

    monkeypatch.setattr(run, "load_model", lambda path: (torch.nn.Linear(10, 10), recipe))
    monkeypatch.setattr(run, "evaluate_nuscenes", lambda rec, model, out, **_: metrics(out, {
        "mAP": 0.37, "NDS": 0.42, "per_class": {}, "split": "synth_val", "frames": 3, "subset": False}))
    monkeypatch.setattr(waymo, "score_objects", lambda pred, gt, out: metrics(out, {
        "dataset": "waymo", "mAP_L2": 0.5, "mAPH_L2": 0.45, "frames": 1, "per_class": {}}))
    checkpoint = tmp_path / "student.pth"
    checkpoint.write_bytes(b"weights")
    return checkpoint


@pytest.mark.parametrize("flag,good,bad,line", [
    ("--min-map", "0.37", "0.5", "gate --min-map failed: mAP 0.3700 is below 0.5"),
    ("--min-nds", "0.42", "0.5", "gate --min-nds failed: NDS 0.4200 is below 0.5"),
    ("--max-params", "110", "109", "gate --max-params failed: params 110 is above 109"),
])
def test_each_eval_gate_passes_and_fails(cli, fake_inference, tmp_path, flag, good, bad, line):
    ok = cli("eval", "--checkpoint", fake_inference, "--out", tmp_path / "ok", flag, good)
    assert ok.exit_code == 0, ok.output
    ko = cli("eval", "--checkpoint", fake_inference, "--out", tmp_path / "ko", flag, bad, "--json")
    assert ko.exit_code == 1 and _errors(ko.stderr) == [f"error: {line}"]
    assert json.loads(ko.stdout)["gates_passed"] is False
    for out, passed in ((tmp_path / "ok", True), (tmp_path / "ko", False)):
        (gate,) = json.loads((out / "metrics.json").read_text())["gates"]
        assert gate["passed"] is passed and gate["name"] == flag[2:].replace("-", "_")


def test_waymo_gates_read_the_level_2_mapH(cli, fake_inference, tmp_path):
    files = ("--predictions", fake_inference, "--ground-truth", fake_inference)
    ok = cli("eval", "--dataset", "waymo", *files, "--out", tmp_path / "ok", "--min-maph", "0.45", "--json")
    assert ok.exit_code == 0, ok.output
    ko = cli("eval", "--dataset", "waymo", *files, "--out", tmp_path / "ko", "--min-maph", "0.5", "--min-map", "0.6",
             "--json")
    assert ko.exit_code == 1
    assert _errors(ko.stderr) == ["error: gate --min-map failed: mAP LEVEL_2 0.5000 is below 0.6",
                                  "error: gate --min-maph failed: mAPH LEVEL_2 0.4500 is below 0.5"]


@pytest.mark.parametrize("args,first_word", [
    (("--max-drop", "0.03"), "--max-drop"),
    (("--min-speedup", "2"), "--min-speedup"),
    (("--min-maph", "0.3"), "--min-maph"),
    (("--dataset", "waymo", "--min-nds", "0.3"), "--min-nds"),
    (("--dataset", "waymo", "--predictions", "p.bin", "--ground-truth", "g.bin", "--max-params", "9"), "--max-params"),
    (("--min-map", "2"), "--min-map"),
])
def test_eval_refuses_a_gate_it_cannot_check_before_any_work(cli, fake_inference, tmp_path, args, first_word):
    result = cli("eval", "--checkpoint", fake_inference, "--out", tmp_path / "ev", *args)
    assert result.exit_code == 2
    (line,) = _errors(result.output)
    assert line.startswith(f"error: {first_word}: ") and not (tmp_path / "ev").exists()
