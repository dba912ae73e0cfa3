"""examples/ci/: the workflows call compress.sh and upload what it writes; compress.sh runs compress (gated),
export and report on the embedded world and exits with itkd's code, the artifacts written either way (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.test_compress_cli import TINY_MODEL, teacher, world  # noqa: F401 - module fixtures

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "examples" / "ci"
SCRIPT = CI / "compress.sh"
# What a CI job keeps: the student, its ONNX file, the model card and the report.
ARTIFACTS = ("student.pth", "student.onnx", "student.model_card.md", "student.export.json", "report.html",
             "report.json", "compress.json")


def _script(env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    itkd = Path(sys.executable).with_name("itkd")
    full = {**os.environ, "ITKD": str(itkd), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=full, capture_output=True, text=True, timeout=timeout)


def test_both_workflows_run_the_script_and_upload_its_artifacts() -> None:
    github = yaml.safe_load((CI / "github-compress.yml").read_text())
    steps = github["jobs"]["compress"]["steps"]
    assert any(s.get("run") == "bash examples/ci/compress.sh" for s in steps)
    restore = next(s for s in steps if s.get("uses", "").startswith("actions/download-artifact"))
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert restore["with"]["name"] == "teacher" and upload["if"] == "${{ !cancelled() }}"  # a failed gate uploads too
    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())["compress"]
    assert "bash examples/ci/compress.sh" in gitlab["script"] and gitlab["artifacts"]["when"] == "always"
    for paths, env in ((upload["with"]["path"].split(), github["jobs"]["compress"]["env"]),
                       (gitlab["artifacts"]["paths"], gitlab["variables"])):
        assert {f"{env['OUT']}/{name}" for name in ARTIFACTS} <= set(paths)
        assert env["TEACHER"] == "artifacts/teacher.pth"


def test_the_script_is_strict_bash() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_a_bad_threshold_exits_2_and_writes_nothing(tmp_path) -> None:
    fake = tmp_path / "teacher.pth"
    fake.write_bytes(b"not read: the flags are checked first")
    out = tmp_path / "ci"
    proc = _script({"TEACHER": str(fake), "OUT": str(out), "MIN_MAP": "1.5"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "error: --min-map: 1.5: input should be less than or equal to 1" in proc.stderr
    assert not out.exists()


def _sets(world_root: Path) -> str:
    return "\n".join([f"dataset.root={world_root}", "train.max_steps=1", "train.batch_size=2", "dataset.workers=0",
                      *TINY_MODEL])


@pytest.mark.slow
def test_the_script_end_to_end_on_the_embedded_world(world, teacher, tmp_path) -> None:  # noqa: F811
    base = {"TEACHER": str(teacher), "RECIPE": "synth-pillar-itkd-1-4", "ITKD_SETS": _sets(world)}
    passing = _script({**base, "OUT": str(tmp_path / "pass"), "MAX_DROP": "1", "MAX_PARAMS": "100000000"})
    assert passing.returncode == 0, passing.stderr[-3000:]
    failing = _script({**base, "OUT": str(tmp_path / "fail"), "MIN_MAP": "0.99"})
    assert failing.returncode == 1, failing.stderr[-3000:]
    assert "error: gate --min-map failed: student mAP" in failing.stderr
    for name, passed in (("pass", True), ("fail", False)):
        out = tmp_path / name
        for artifact in ARTIFACTS:
            assert (out / artifact).stat().st_size > 0, (name, artifact)
        result = json.loads((out / "compress.json").read_text())
        assert result["schema_version"] == 1 and result["gates_passed"] is passed
        html = (out / "report.html").read_text()
        assert "verified against PyTorch in onnxruntime on 2 real frames" in html  # the export's figures
        assert html.count("data:image/png;base64,") == 2 and ("FAILED" in html) is not passed
        export = json.loads((out / "student.export.json").read_text())
        assert export["verified"] and export["checkpoint"] == str(out / "student.pth")
    names = {g["name"] for g in json.loads((tmp_path / "pass" / "compress.json").read_text())["gates"]}
    assert names == {"max_drop", "max_params"}
