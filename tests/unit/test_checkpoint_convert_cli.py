"""`itkd checkpoint convert`: honest parameter counts under --non-strict (#45 item 4), no silent overwrite
of --out without --force (#45 item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from itkd_cli.models import build_model, derive_student
from itkd_cli.models.checkpoint import save_checkpoint
from itkd_cli.models.convert import NON_PARAMS
from itkd_cli.recipe import load_recipe
from itkd_cli.recipe.load import dump_yaml

SMALL = ["model.grid.point_range=[-5.12,-5.12,-5.0,5.12,5.12,3.0]"]
SETS = [a for s in SMALL for a in ("--set", s)]


def _params(sd: dict) -> int:
    return sum(v.numel() for k, v in sd.items() if not k.endswith(NON_PARAMS))


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> tuple[Path, dict, dict]:
    """(a 1/4 student checkpoint of the small synth-pillar, its state dict, the teacher network's state dict)."""
    rec = load_recipe("synth-pillar", SMALL)
    student_rec = rec.model_copy(update={"model": derive_student(rec.model, 0.25, "neck")})
    model = build_model(student_rec.model)
    path = save_checkpoint(tmp_path_factory.mktemp("conv") / "student.pth", model, student_rec, "student")
    return path, model.state_dict(), build_model(rec.model).state_dict()


def test_non_strict_reports_what_the_file_holds_and_what_loaded(student, cli, tmp_path: Path) -> None:
    path, file_sd, net_sd = student
    held, net = _params(file_sd), _params(net_sd)
    fits = {k: v for k, v in file_sd.items() if k in net_sd and v.shape == net_sd[k].shape}
    loaded = _params(fits)
    assert 0 < loaded < held < net  # the wrong recipe: a wider teacher network
    out = tmp_path / "wrong.pth"
    res = cli("checkpoint", "convert", path, "--recipe", "synth-pillar", *SETS, "--out", out, "--non-strict")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert (f"the file holds {held:,} parameters, {loaded:,} of them loaded into the recipe's network of {net:,}; "
            f"{net - loaded:,} stayed at init") in text
    res = cli("checkpoint", "convert", path, "--recipe", "synth-pillar", *SETS, "--out", out, "--non-strict",
              "--force", "--json")
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert (data["num_params"], data["loaded_params"], data["model_params"], data["init_params"]) == (
        held, loaded, net, net - loaded)


def test_a_full_fit_reports_one_count(student, cli, tmp_path: Path) -> None:
    path, file_sd, _ = student
    out = tmp_path / "same.pth"
    rec = load_recipe("synth-pillar", SMALL)
    student_rec = rec.model_copy(update={"model": derive_student(rec.model, 0.25, "neck")})
    recipe_file = tmp_path / "student.yaml"  # the student's own architecture as a recipe file
    recipe_file.write_text(dump_yaml(student_rec))
    res = cli("checkpoint", "convert", path, "--recipe", recipe_file, "--out", out, "--role", "student")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert f"no sparse convs, {_params(file_sd):,} parameters)" in text and "stayed at init" not in text


def test_existing_out_is_refused_without_force(student, cli, tmp_path: Path) -> None:
    path, _, _ = student
    out = tmp_path / "taken.pth"
    out.write_bytes(b"precious")
    res = cli("checkpoint", "convert", path, "--recipe", "synth-pillar", *SETS, "--out", out, "--non-strict")
    assert res.exit_code == 2
    assert f"error: {out}: already exists" in res.output and "--force" in res.output
    assert "Traceback" not in res.output and out.read_bytes() == b"precious"
    res = cli("checkpoint", "convert", path, "--recipe", "synth-pillar", *SETS, "--out", out, "--non-strict", "--json")
    assert res.exit_code == 2 and json.loads(res.stdout[res.stdout.index("{"):])["exit_code"] == 2
    res = cli("checkpoint", "convert", path, "--recipe", "synth-pillar", *SETS, "--out", out, "--non-strict", "--force")
    assert res.exit_code == 0, res.output
    assert torch.load(out, weights_only=True)["format"] == "itkd"


def test_out_folder_is_refused(student, cli, tmp_path: Path) -> None:
    path, _, _ = student
    res = cli("checkpoint", "convert", path, "--recipe", "synth-pillar", *SETS, "--out", tmp_path, "--force")
    assert res.exit_code == 2 and f"error: {tmp_path}: is a folder" in res.output
