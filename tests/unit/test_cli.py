"""`itkd --help` shows exactly the working commands; README documents them; conventions hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from itkd_cli import __version__
from itkd_cli.cli.main import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
TOP = ["demo", "compress", "eval", "export", "report", "train", "info", "data", "checkpoint", "recipe"]
SUB = {"data": ["synth", "prepare", "inspect"], "checkpoint": ["inspect", "convert"],
       "recipe": ["ls", "show", "cp", "validate"]}


def _commands(help_text: str) -> list[str]:
    box = help_text.split("Commands")[1]
    return re.findall(r"^│ (\w[\w-]*)\s", box, flags=re.M)


def test_help_lists_exactly_the_commands(cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    assert _commands(result.output) == TOP


@pytest.mark.parametrize("group", sorted(SUB))
def test_groups_list_their_commands(cli, group: str) -> None:
    result = cli(group, "--help")
    assert result.exit_code == 0
    assert sorted(_commands(result.output)) == sorted(SUB[group])


@pytest.mark.parametrize("args", [[c] for c in TOP if c not in SUB] + [[g, s] for g in SUB for s in SUB[g]])
def test_every_command_has_help_and_json(cli, args: list[str]) -> None:
    result = cli(*args, "--help")
    assert result.exit_code == 0, result.output
    if args not in (["recipe", "cp"],):
        assert "--json" in result.output, f"{args}: every command offers --json"


def test_version(cli) -> None:
    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"itkd {__version__}"


def test_readme_documents_every_command() -> None:
    for command in TOP:
        assert f"`itkd {command}" in README, f"README: no entry for `itkd {command}`"
    for group, subs in SUB.items():
        for sub in subs:
            assert re.search(rf"itkd {group} [^`]*\b{sub}\b", README), f"README: no entry for itkd {group} {sub}"


def test_readme_set_up_commands_exist() -> None:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README and re.search(rf"^{target}:", makefile, flags=re.M)
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci, ".ci/run must run the README's test command"


def test_user_error_is_one_line_exit_2(cli, tmp_path: Path) -> None:
    result = cli("compress", "--teacher", str(tmp_path / "missing.pth"), "--ratio", "0.25")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.pth" in errors[0]
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir()), "nothing may be written on a user error"


def test_bad_recipe_value_from_set_is_one_line_exit_2(cli) -> None:
    """A cross-field recipe rule (the neck's lists of one length) reaches the user as one error line."""
    result = cli("recipe", "show", "synth-pillar", "--set", "model.backbone_2d.layer_nums=[1, 1]")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.backbone_2d: layer_strides: needs 2 entries like layer_nums" in errors[0]
    assert "with --set model.backbone_2d.layer_nums=[1, 1]: model.backbone_2d:" in errors[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("key,value", [("distill.kd_until", "0.5"), ("distill.itkd.head_standardize", "true")])
def test_removed_or_folded_field_is_refused_in_one_line(cli, key, value) -> None:
    """A recipe of an earlier itkd must not silently change meaning: each old field is named and refused."""
    result = cli("recipe", "show", "synth-pillar", "--set", f"{key}={value}")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--set {key}={value}: {key}: " in errors[0]
    assert ("removed" if key.endswith("kd_until") else "folded into distill.itkd.form") in errors[0]


def test_quiet_keeps_results_and_drops_status(cli, tmp_path: Path) -> None:
    """--quiet: "only errors and results": the dataset table and where files went stay, status lines go."""
    root = tmp_path / "w"
    args = ("data", "synth", "--preset", "small", "--scenes", "2", "--frames", "2", "--out", str(root))
    assert cli(*args).exit_code == 0
    again = cli("--quiet", *args)  # a reuse: "already there" is status, the table is the result
    assert again.exit_code == 0 and "already there" not in again.output and "keyframes" in again.output
    copied = cli("--quiet", "recipe", "cp", "synth-pillar", str(tmp_path / "mine.yaml"))
    assert copied.exit_code == 0 and f"wrote {tmp_path / 'mine.yaml'}" in copied.output.replace("\n", "")


def _invoke_in_fresh_python(args: list[str]) -> tuple[int, bool, str]:
    """(exit code, whether torch got imported, output) of ``itkd ARGS`` in a new interpreter."""
    import subprocess
    import sys

    probe = ("import sys; from typer.testing import CliRunner; from itkd_cli.cli.main import app; "
             f"r = CliRunner().invoke(app, {args!r}); print(r.exit_code, 'torch' in sys.modules); print(r.output)")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    code, torch_loaded = res.stdout.splitlines()[0].split()
    return int(code), torch_loaded == "True", res.stdout


def test_a_bad_training_recipe_is_reported_before_torch_loads(tmp_path: Path) -> None:
    """A typo in a recipe is answered at once: validation comes before the training code (and torch) is imported."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -1\n")
    code, torch_loaded, output = _invoke_in_fresh_python(["train", "--recipe", str(bad)])
    assert code == 2 and "train.epochs: Input should be greater than or equal to 1" in output
    assert not torch_loaded


@pytest.mark.parametrize("flags,expected", [
    (["--recipe", "BAD", "--ratio", "0.25"], "train.epochs: Input should be greater than or equal to 1"),
    (["--recipe", "synth-pillar", "--set", "distill.itkd.lam=2"], "--set distill.itkd.lam=2: distill.itkd.lam"),
    (["--ratio", "1.5"], "--ratio: 1.5 is above 1: the student must not be wider than the teacher"),
    (["--ratio", "0"], "--ratio: 0.0 must be above 0"),
    (["--ratio", "nan"], "--ratio: nan must be above 0"),
    (["--recipe", "synth-pillar", "--policy", "wide"], "flags: student.policy"),
    (["--min-map", "1.5"], "--min-map: 1.5: input should be less than or equal to 1"),
    (["--max-drop", "-0.1"], "--max-drop: -0.1: input should be greater than or equal to 0"),
    (["--min-speedup", "nan"], "--min-speedup: nan: input should be a finite number"),
    (["--recipe", "synth-pillar", "--min-maph", "0.3"], "--min-maph: cannot be checked by `itkd compress` on nuscenes"),
    (["--recipe", "synth-pillar-waymo", "--min-nds", "0.3"], "--min-nds: cannot be checked by `itkd compress` on waymo"),
    (["--recipe", "synth-pillar", "--set", "gates.min_map=2"], "--set gates.min_map=2: gates.min_map"),
    (["--recipe", "synth-pillar", "--set", "gates.min_maph=0.2"], "gates.min_maph: cannot be checked"),
])
def test_bad_compress_flags_are_reported_before_torch_loads(tmp_path: Path, flags: list[str], expected: str) -> None:
    """compress checks its flags and an explicit --recipe before importing torch (and reading the teacher)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -1\n")
    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(b"not read before the flags are checked")
    args = ["compress", "--teacher", str(teacher), "--out", str(tmp_path / "run"),
            *[str(bad) if f == "BAD" else f for f in flags]]
    code, torch_loaded, output = _invoke_in_fresh_python(args)
    assert code == 2 and expected in output.replace("\n", " ") and "Traceback" not in output, output
    assert not torch_loaded and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [
    ("compress", "--teacher", "/no/such/teacher.pth", "--json"),
    ("export", "--onnx", "--checkpoint", "/no/such/student.pth", "--json"),
    ("recipe", "show", "no-such-recipe", "--json"),
    ("recipe", "cp", "no-such-recipe", "x.yaml", "--json"),
    ("info", "--recipe", "synth-pillar", "--ratio", "1e-9", "--json"),
])
def test_an_error_under_json_is_one_json_object_on_stdout(cli, args) -> None:
    """A CI job reading --json gets the reason too: {error, hint, exit_code}, and nothing else on stdout."""
    import json

    result = cli(*args)
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert set(data) == {"schema_version", "error", "hint", "exit_code"} and data["exit_code"] == 2 and data["error"]
    assert data["schema_version"] == 1
    assert f"error: {data['error'].splitlines()[0]}" in result.stderr


def test_recipe_cp_json(cli, tmp_path: Path) -> None:
    import json

    from itkd_cli.recipe.load import builtin_dir

    result = cli("recipe", "cp", "synth-pillar-itkd-1-4", str(tmp_path), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"schema_version": 1,
                                         "recipe": str((builtin_dir() / "synth-pillar-itkd-1-4.yaml").resolve()),
                                         "wrote": str(tmp_path / "synth-pillar-itkd-1-4.yaml")}


@pytest.mark.parametrize("args,key", [
    (("recipe", "ls", "--json"), "recipes"),
    (("recipe", "show", "synth-pillar", "--json"), "recipe"),
    (("recipe", "validate", "synth-pillar", "--json"), "results"),
    (("info", "--recipe", "synth-pillar", "--repeats", "0", "--json"), None),
])
def test_every_json_output_is_one_object_with_its_schema_version(cli, args, key) -> None:
    """A CI job can tell the format it reads: schema_version first, in results as in error objects."""
    import json

    from itkd_cli.cli.common import SCHEMA_VERSION

    result = cli(*args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data)[0] == "schema_version" and data["schema_version"] == SCHEMA_VERSION == 1
    assert key is None or key in data


def test_emit_json_takes_objects_only() -> None:
    from itkd_cli.cli.common import emit_json

    with pytest.raises(TypeError, match="must be an object"):
        emit_json([1, 2])
