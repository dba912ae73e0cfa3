"""Every shipped recipe validates; bad recipes give file/field errors and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from itkd_cli.recipe.load import RecipeError, builtin_names, load_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_recipe_validates(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.description, f"{name}: needs a description for `itkd recipe ls`"
    heads = [c for task in recipe.model.head.tasks for c in task]
    assert sorted(heads) == sorted(recipe.dataset.class_names)


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_recipe_opens_with_its_command(name: str) -> None:
    first = (REPO / "recipes" / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# itkd "), f"{name}: first line should show the command that uses it"


def test_derived_sizes_of_embedded_default() -> None:
    model = load_recipe("synth-pillar").model
    nx, ny, nz = model.grid.grid_size
    lo, hi, size = model.grid.point_range[:3], model.grid.point_range[3:], model.grid.voxel_size
    assert (nx, ny, nz) == tuple(round((b - a) / v) for a, b, v in zip(lo, hi, size))
    assert nz == 1  # pillars
    assert model.head_map_size == (ny // model.feature_map_stride, nx // model.feature_map_stride)
    assert model.bev_out_channels == sum(model.backbone_2d.num_upsample_filters)


def _write(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_extends_and_overrides(tmp_path: Path) -> None:
    child = _write(tmp_path, "child.yaml", {"extends": "synth-pillar", "train": {"epochs": 3}})
    recipe = load_recipe(child, overrides=["train.batch_size=2", "model.head.min_radius=3"])
    assert recipe.train.epochs == 3 and recipe.train.batch_size == 2
    assert recipe.model.head.min_radius == 3
    assert recipe.model.grid == load_recipe("synth-pillar").model.grid  # inherited


@pytest.mark.parametrize(
    "content, expected",
    [
        ("model: [unclosed", "invalid YAML"),
        ({"extends": "synth-pillar", "trian": {"epochs": 1}}, "trian: Extra inputs are not permitted"),
        ({"extends": "synth-pillar", "train": {"epochs": "many"}}, "train.epochs:"),
        ({"extends": "synth-pillar", "train": {"epochs": 0}}, "train.epochs: Input should be greater than or equal to 1"),
        ({"extends": "synth-pillar", "student": {"ratio": 1.5}}, "student.ratio:"),
        ({"extends": "does-not-exist"}, "does-not-exist: no such recipe"),
        ({"extends": "synth-pillar", "model": {"head": {"tasks": [["car"]]}}}, "no task head predicts"),
        ({"extends": "synth-pillar", "model": {"grid": {"voxel_size": [0.35, 0.4, 8.0]}}}, "not a multiple"),
        ({"extends": "synth-pillar", "model": {"grid": {"point_range": [-6.4, -6.4, -5.0, 6.4, 6.4, 3.0]}}},
         "must be divisible by 8"),
    ],
)
def test_bad_recipes_name_file_and_field(tmp_path: Path, content, expected: str) -> None:
    path = _write(tmp_path, "bad.yaml", content)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert expected in str(err.value)
    assert all(line.startswith(str(path)) or "no such recipe" in line for line in err.value.problems)


def test_recipe_including_itself_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", {"extends": "b.yaml"})
    path = _write(tmp_path, "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(RecipeError, match="includes itself"):
        load_recipe(path)


def test_cli_validate_reports_every_error_and_exits_2(tmp_path: Path, cli) -> None:
    bad = _write(tmp_path, "bad.yaml", {"extends": "synth-pillar", "trian": 1, "train": {"lr": -1}})
    result = cli("recipe", "validate", "synth-pillar", str(bad))
    assert result.exit_code == 2
    assert "trian" in result.output and "train.lr" in result.output
    assert "Traceback" not in result.output


def test_cli_ls_show_cp(tmp_path: Path, cli) -> None:
    listed = json.loads(cli("recipe", "ls", "--json").stdout)
    assert listed["schema_version"] == 1 and {"synth-pillar"} <= {row["name"] for row in listed["recipes"]}
    shown = cli("recipe", "show", "synth-pillar", "--set", "train.epochs=2")
    assert shown.exit_code == 0 and yaml.safe_load(shown.stdout)["train"]["epochs"] == 2
    dest = tmp_path / "mine.yaml"
    assert cli("recipe", "cp", "synth-pillar", str(dest)).exit_code == 0
    assert load_recipe(dest).model == load_recipe("synth-pillar").model
    again = cli("recipe", "cp", "synth-pillar", str(dest))
    assert again.exit_code == 2 and "already exists" in again.output


def test_a_bad_override_is_blamed_on_the_flag_not_the_file(tmp_path: Path) -> None:
    child = _write(tmp_path, "child.yaml", {"extends": "synth-pillar", "train": {"lr": -1}})
    with pytest.raises(RecipeError) as err:
        load_recipe(child, overrides=["train.epochs=0", "dataset.data_root=x", "train.batch_size=2"])
    assert sorted(err.value.problems) == sorted([
        f"{child}: train.lr: Input should be greater than 0",
        "--set train.epochs=0: train.epochs: Input should be greater than or equal to 1",
        "--set dataset.data_root=x: dataset.data_root: Extra inputs are not permitted"])


def test_cli_bad_override_is_a_user_error(cli) -> None:
    result = cli("recipe", "show", "synth-pillar", "--set", "train.epochs")
    assert result.exit_code == 2 and "key.path=value" in result.output


@pytest.mark.parametrize("raw,expected", [
    (b"description: caf\xe9\n", "not a UTF-8 text file (byte 16: b'\\xe9')"),  # Latin-1
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a UTF-8 text file (byte 0"),  # binary
    (b"\x00\x01abc", "invalid YAML: special characters are not allowed"),  # UTF-8, but no text
])
def test_a_recipe_that_is_not_text_is_one_error_naming_the_file(tmp_path: Path, cli, raw: bytes, expected: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(raw)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert err.value.problems == [f"{path}: {expected}"] or err.value.problems[0].startswith(f"{path}: {expected}")
    for args in (("recipe", "validate", str(path)), ("recipe", "show", str(path)),
                 ("train", "--recipe", str(path), "--out", str(tmp_path / "run"))):
        result = cli(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output, args
        assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
            f"error: {err.value.problems[0]}"], args
    assert not (tmp_path / "run").exists()


def test_a_pool_threshold_below_decoding_is_refused() -> None:
    """Teacher boxes under model.post.score_threshold never reach the pool's threshold: say so, do not ignore it."""
    pool = "dataset.unlabeled={source: split, split: synth_unlabeled, score_threshold: 0.05}"
    with pytest.raises(RecipeError, match=r"dataset.unlabeled.score_threshold: 0.05 is below model.post.score_threshold 0.1"):
        load_recipe("synth-pillar", [pool])
    assert load_recipe("synth-pillar", [pool, "model.post.score_threshold=0.05"]).dataset.unlabeled.score_threshold == 0.05
