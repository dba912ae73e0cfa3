"""Load recipes: YAML files with `extends:` inheritance and `--set a.b=value` overrides."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from itkd_cli.core.errors import ItkdError
from itkd_cli.recipe.schema import FOLDED_FIELDS, REMOVED_FIELDS, Recipe


class RecipeError(ItkdError):
    """One or more recipe problems, each rendered as ``file: field.path: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems), hint="`itkd recipe show NAME` prints a valid recipe to start from")
        self.problems = problems


def builtin_dir() -> Path:
    """Folder of the built-in recipes (``$ITKD_RECIPES`` overrides the repo's ``recipes/``)."""
    env = os.environ.get("ITKD_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "recipes"


def builtin_names() -> list[str]:
    """Names of the built-in recipes, sorted."""
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system: no such recipe either
        return False


def resolve_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """Turn a recipe name (``synth-pillar``) or path into an existing file path."""
    raw = str(name_or_path)
    candidates = []
    if relative_to is not None:
        candidates.append(relative_to / raw)
    candidates += [Path(raw), builtin_dir() / raw, builtin_dir() / f"{raw}.yaml"]
    for cand in candidates:
        if _is_file(cand):
            return cand.resolve()
    names = ", ".join(builtin_names()) or "none"
    # a name with control characters or thousands of them must still print as one readable line
    shown = raw if raw.isprintable() and len(raw) <= 200 else repr(raw[:200]) + ("..." if len(raw) > 200 else "")
    raise RecipeError([f"{shown}: no such recipe file or built-in recipe (built-in: {names})"])


def deep_merge(base: dict, top: dict) -> dict:
    """Merge ``top`` onto ``base``: nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class BadYaml(ValueError):
    """Text that is not YAML we can read: ``problem``, at 1-based ``line`` when known."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        super().__init__(problem)
        self.problem, self.line = problem, line


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` whose every failure is a BadYaml.

    PyYAML's constructors raise plain ValueError / KeyError / AttributeError on a bad explicit tag or
    date (``!!int x``, ``!!bool maybe``, ``2001-13-45``) and RecursionError on deep nesting, not YAMLError.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise BadYaml(problem, mark.line + 1 if mark else None) from None
    except RecursionError:
        raise BadYaml("nested too deeply") from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise BadYaml(f"a value cannot be read ({type(exc).__name__}: {detail})") from None


def read_yaml(path: Path) -> dict:
    """Parse one YAML mapping, with file-named errors."""
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError([f"{path}: cannot read ({exc.strerror})"]) from None
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 1]
        raise RecipeError([f"{path}: not a UTF-8 text file (byte {exc.start}: {bad!r})"]) from None
    except BadYaml as exc:
        where = f" line {exc.line}:" if exc.line else ""
        raise RecipeError([f"{path}:{where} invalid YAML: {exc.problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError([f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}"])
    return data


def load_raw(name_or_path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a recipe and everything it extends into one merged mapping (not yet validated)."""
    parent_dir = _chain[-1].parent if _chain else None
    path = resolve_path(name_or_path, parent_dir)
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise RecipeError([f"{path}: extends: recipe includes itself ({cycle})"])
    data = read_yaml(path)
    bases = data.pop("extends", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError([f"{path}: extends: must be a recipe name/path or a list of them"])
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, load_raw(base, (*_chain, path)))
    return deep_merge(merged, data)


def apply_overrides(data: dict, overrides: Iterable[str], source: str = "--set") -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a raw recipe mapping."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError([f"{source}: {item!r}: expected key.path=value"])
        try:
            parsed = parse_yaml(value) if value.strip() else None
        except BadYaml as exc:
            shown = value if len(value) <= 80 else value[:80] + "..."
            raise RecipeError([f"{source}: {key}: value {shown!r} is not valid YAML: {exc.problem}"]) from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError([f"{source}: {key}: {part} is not a mapping"])
            node = child
        node[parts[-1]] = parsed
    return out


def validate(data: dict, source: str, overrides: Iterable[str] = ()) -> Recipe:
    """Validate a merged mapping; every problem becomes ``source: field.path: message``, or
    ``--set KEY=VALUE: field.path: message`` when that override wrote the field (the file is not at fault),
    or ``source with --set KEY=VALUE: section: message`` for a rule over a section an override wrote into."""
    written = {item.partition("=")[0].strip(): item for item in overrides}
    legacy = [f"{_blame(key, written, source)}: {key}: {why}" for key, why in legacy_fields(data)]
    if legacy:
        raise RecipeError(legacy)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_blame(loc, written, source)}: {loc}: {msg}")
        raise RecipeError(problems) from None
    except (ArithmeticError, RecursionError) as exc:
        # a validator's arithmetic on an extreme number (a 1e308 m point_range has an infinite extent)
        who = " ".join([source, "with", *[f"--set {item}" for item in written.values()]]) if written else source
        raise RecipeError([f"{who}: a number is out of range ({exc})"]) from None


def _blame(loc: str, written: dict[str, str], source: str) -> str:
    """Who set field ``loc``: the override that wrote it, else the file (with the overrides inside a
    section when the failing rule spans the whole section), else the file alone."""
    by = next((item for key, item in written.items() if loc == key or loc.startswith(key + ".")), None)
    if by is not None:
        return f"--set {by}"
    inside = [f"--set {item}" for key, item in written.items() if key.startswith(loc + ".")]
    return " ".join([source, "with", *inside]) if inside else source


def _get(data: dict, path: str) -> tuple[bool, Any]:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def legacy_fields(data: dict) -> list[tuple[str, str]]:
    """(field, reason) for every field of an earlier itkd that a recipe still sets: removed ones and those
    folded into ``distill.itkd.form``. Refused rather than ignored, so an old recipe never changes meaning."""
    found = []
    for key, (why, last) in REMOVED_FIELDS.items():
        if _get(data, key)[0]:
            found.append((key, f"removed ({why}); delete it (itkd {last} still has it)"))
    for key in FOLDED_FIELDS:
        if _get(data, key)[0]:
            found.append((key, "folded into distill.itkd.form ('default': the measured-better itKD, 'paper': "
                               "the published formulas); delete it and set the form"))
    return found


def drop_legacy(data: dict) -> dict:
    """A recipe stored by an earlier itkd (in a checkpoint) without its removed or folded distill fields, and
    without its lambda when it predates ``distill.itkd.form`` (the form then brings its own). A stored
    recipe records a finished run: its distill section never changed the network stored with it."""
    out = copy.deepcopy(data)
    keys = [key for key, _ in legacy_fields(out)]
    if any(k in FOLDED_FIELDS for k in keys):
        keys.append("distill.itkd.lam")
    for key in keys:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def load_recipe(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Load, merge, override and validate a recipe."""
    path = resolve_path(name_or_path)
    overrides = list(overrides)
    data = apply_overrides(load_raw(path), overrides)
    return validate(data, str(path), overrides)


def compress_flags(ratio: float | None, policy: str | None, method: str | None) -> list[str]:
    """`itkd compress`'s --ratio/--policy/--method as recipe overrides (see ``apply_flags``).

    Raises:
        ItkdError: a ratio outside (0, 1] (a student wider than its teacher).
    """
    if ratio is not None and ratio > 1:
        raise ItkdError(f"--ratio: {ratio} is above 1: the student must not be wider than the teacher")
    if ratio is not None and not ratio > 0:  # also NaN
        raise ItkdError(f"--ratio: {ratio} must be above 0 (student width / teacher width, in (0, 1])")
    flags = [f"student.ratio={ratio}"] if ratio is not None else []
    flags += [f"student.policy={policy}"] if policy else []
    return flags + ([f"distill.method={method}"] if method else [])


def apply_flags(recipe: Recipe, flags: Iterable[str]) -> Recipe:
    """``recipe`` with command-line flags (``compress_flags``) folded in, validated like any field."""
    return validate(apply_overrides(recipe.model_dump(mode="json"), flags, "flags"), "command-line flags")


def recipe_from_dict(data: dict[str, Any], source: str = "checkpoint") -> Recipe:
    """Rebuild a recipe stored inside a checkpoint or report (one of an earlier itkd too: ``drop_legacy``).

    A ``model.post`` stored before ``top_k`` existed decoded its ``pre_max`` best peaks straight into NMS. Its
    ``pre_max`` loads as it is, now the cut before NMS, and ``top_k`` takes OpenPCDet's 500: the built-in
    recipes' pre_max were OpenPCDet's NMS_PRE_MAXSIZE, so their old checkpoints now decode as upstream.
    """
    return validate(drop_legacy(data), source)


def dump_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (round-trips through ``load_recipe``)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
