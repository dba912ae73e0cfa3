"""Fuzzing the recipe loader and `--set` (hypothesis): hostile text, bytes and overrides either load as a valid
Recipe or raise ItkdError, never another exception (which the CLI would show as a traceback)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")  # the `test` extra; a plain runtime install may lack it
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from itkd_cli.core.errors import ItkdError  # noqa: E402
from itkd_cli.recipe.load import builtin_dir, dump_yaml, load_recipe  # noqa: E402
from itkd_cli.recipe.schema import Recipe  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
BASE = "synth-pillar"
SEED_TEXT = (builtin_dir() / f"{BASE}.yaml").read_text()


def _paths(data: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        out += _paths(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return out


def _values(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        out.update(_values(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


FIELDS = _paths(load_recipe("synth-voxel").model_dump(mode="json"))
CURRENT = _values(load_recipe(BASE).model_dump(mode="json"))
# YAML that makes PyYAML's constructors or our validators raise something other than a YAMLError
NASTY = ["2001-13-45", "!!int x", "!!int 0x", "!!float .", "!!bool maybe", "!!timestamp soon", "!!binary zz",
         "!!set {a}", "&a [*a]", "*nope", "!!python/name:os.system", "[" * 2000, "{a: " * 400, ".nan", ".inf",
         "-.inf", "1e400", "-1e308", "1e308", "1e-320", "0", "-1", "9" * 400, "[]", "{}", "~", "''", "'x'", "[1, 2]",
         "[0, 0, 0]", "[-1e308, -1e308, -5, 1e308, 1e308, 3]", "[.nan, .nan, .nan, .nan, .nan, .nan]",
         "{x: 1}", "!!str", "? [a]\n: b", "---\n---", "\x00", "\ufeff", "\t", "extends", "synth-voxel",
         "a" * 5000, "/", "..", "\"a\\0b\""]
SCALAR = st.one_of(st.sampled_from(NASTY), st.text(max_size=30), st.integers(), st.floats())


def _near(value):
    """Values of the same type as a field's current one (so that some overrides are accepted)."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-2, 2 * value + 2)
    if isinstance(value, float):
        return st.floats(-2 * abs(value) - 1, 2 * abs(value) + 1) | st.just(value)
    if isinstance(value, list) and value:
        return st.lists(_near(value[0]), min_size=len(value), max_size=len(value)) | st.just(value)
    return st.just(value)


NEAR = st.sampled_from(sorted(CURRENT)).flatmap(lambda k: _near(CURRENT[k]).map(lambda v: (k, json.dumps(v))))
KEY = st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS).map(lambda f: f.rsplit(".", 1)[0]),
                st.text(max_size=20))


def _check(recipe: object) -> None:
    """A loaded recipe is a real Recipe that survives a dump/reload unchanged."""
    assert isinstance(recipe, Recipe)
    dumped = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    assert json.dumps(Recipe.model_validate(recipe.model_dump(mode="json")).model_dump(mode="json"),
                      sort_keys=True) == dumped
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "again.yaml"
        path.write_text(dump_yaml(recipe))
        assert json.dumps(load_recipe(path).model_dump(mode="json"), sort_keys=True) == dumped


def _load(content: bytes | str, overrides: list[str] = ()) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        try:
            recipe = load_recipe(path, overrides)
        except ItkdError as exc:
            assert str(exc).strip(), "an ItkdError with an empty message"
            event("refused")  # --hypothesis-show-statistics: how often each branch ran
            return
    event("loaded")
    _check(recipe)


@st.composite
def mutated_recipe(draw) -> str:
    """A built-in recipe's text with lines dropped, values replaced and nasty snippets spliced in."""
    lines = SEED_TEXT.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "value", "splice", "indent"]))
        if action == "drop":
            del lines[i]
        elif action == "value" and ":" in lines[i]:
            lines[i] = lines[i].split(":", 1)[0] + ": " + str(draw(SCALAR))
        elif action == "splice":
            cut = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:cut] + str(draw(SCALAR)) + lines[i][cut:]
        elif action == "indent":
            lines[i] = " " * draw(st.integers(1, 5)) + lines[i]
        if not lines:
            break
    return "\n".join(lines)


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_fuzz_raw_text_and_bytes(content) -> None:
    _load(content)


@FUZZ
@given(mutated_recipe())
def test_fuzz_mutated_recipe_text(text: str) -> None:
    _load(text)


@FUZZ
@given(st.lists(st.tuples(KEY, SCALAR) | NEAR, max_size=4), st.sampled_from(["", "", "", "="]))
def test_fuzz_set_overrides(pairs, sep_only) -> None:
    overrides = [f"{key}={value}" for key, value in pairs] + ([sep_only] if sep_only else [])
    try:
        recipe = load_recipe(BASE, overrides)
    except ItkdError:
        event("refused")
        return
    event("loaded")
    _check(recipe)


@FUZZ
@given(st.one_of(st.text(max_size=60), st.sampled_from(NASTY)))
def test_fuzz_extends_and_names(name: str) -> None:
    _load(f"extends: {json.dumps(name)}\n")
    try:
        load_recipe(name)
    except ItkdError:
        pass


@settings(max_examples=40, deadline=None, database=None)
@given(st.one_of(mutated_recipe(), st.sampled_from(NASTY)), st.lists(st.tuples(KEY, SCALAR), max_size=2))
def test_fuzz_through_the_cli(text: str, pairs) -> None:
    from itkd_cli.cli.main import app

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        runner = CliRunner()
        for args in (["recipe", "validate", str(path)], ["recipe", "validate", str(path), "--json"],
                     ["recipe", "show", BASE, *[a for k, v in pairs for a in ("--set", f"{k}={v}")]]):
            res = runner.invoke(app, args)
            assert res.exit_code in (0, 2), (args, res.output, res.exception)
            assert "Traceback" not in res.output
            assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


# Each crashed (a traceback) before load.py caught it; kept as plain cases so they replay without the fuzzer.
CRASHES_FOUND = [
    ("train: {epochs: 2001-13-45}", [], "invalid YAML: a value cannot be read"),  # date out of range
    ("train: {epochs: !!int x}", [], "invalid YAML"),  # bad explicit tag: ValueError
    ("train: {amp: !!bool maybe}", [], "invalid YAML"),  # KeyError
    ("train: {amp: !!timestamp soon}", [], "invalid YAML"),  # AttributeError
    ("[" * 3000, [], "nested too deeply"),  # RecursionError
    ("", ["train.epochs=2001-13-45"], "is not valid YAML"),
    ("", ["train.epochs=" + "[" * 3000], "is not valid YAML: nested too deeply"),
    ("extends: " + "a" * 5000, [], "no such recipe"),  # OSError: file name too long
    ("", ["model.grid.point_range=[-1e308,-1e308,-5,1e308,1e308,3]"], "a number is out of range"),  # OverflowError
]


@pytest.mark.parametrize("body, overrides, message", CRASHES_FOUND)
def test_crashes_the_fuzzer_found_are_one_line_errors(tmp_path: Path, body: str, overrides: list, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text((f"extends: {BASE}\n" if not body.startswith(("extends", "[")) else "") + body)
    with pytest.raises(ItkdError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_recipe(path, overrides)
    assert all(len(line) < 1000 for line in str(err.value).splitlines())  # no 5,000-character echo


def test_very_long_recipe_name_is_a_short_error() -> None:
    with pytest.raises(ItkdError, match=r"no such recipe") as err:
        load_recipe("a" * 5000)
    assert len(str(err.value)) < 1000
