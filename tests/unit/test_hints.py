"""Every hint names a command or flag that exists: a hint that sends the user to `itkd data check` or a
`--non-strict` the command lacks is worse than none."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import typer

from itkd_cli.cli.main import app

PKG = Path(__file__).resolve().parents[2] / "itkd_cli"
# Flags of other programs that hints may name (torchrun's).
FOREIGN_FLAGS = {"--nproc_per_node"}


def _hint_texts() -> list[tuple[str, str]]:
    """(file:line, literal text) of every ``hint=`` argument (the constant parts of f-strings too)."""
    found = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            for kw in node.keywords:
                if kw.arg != "hint":
                    continue
                parts = [n.value for n in ast.walk(kw.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                found.append((f"{path.relative_to(PKG)}:{kw.lineno}", "".join(parts)))
    return found


def _cli_tree() -> dict[str, set[str]]:
    """{'compress': {'--teacher', ...}, 'data inspect': {...}, ...} of the real CLI."""
    root = typer.main.get_command(app)
    tree: dict[str, set[str]] = {}

    def walk(cmd, name: str) -> None:  # a click command (typer builds them)
        tree[name] = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{name} {sub_name}".strip())

    walk(root, "")
    return tree


def test_hints_were_found() -> None:
    assert len(_hint_texts()) > 30  # the scan reads the code's hints, not nothing


def test_every_hint_names_existing_commands_and_flags() -> None:
    tree = _cli_tree()
    all_flags = set().union(*tree.values()) | FOREIGN_FLAGS
    problems = []
    for where, text in _hint_texts():
        for command in re.findall(r"`itkd ([a-z][a-z -]*?)(?: --|`| [A-Z.]|$)", text):
            words = command.split()
            names = [" ".join(words[:i]) for i in range(len(words), 0, -1)]
            known = next((n for n in names if n in tree), None)
            if known is None or (len(words) > 1 and words[0] in ("data", "checkpoint", "recipe") and known == words[0]):
                problems.append(f"{where}: `itkd {command}` is no command")
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z_-]*)", text):
            if flag not in all_flags:
                problems.append(f"{where}: {flag} is no flag of any command")
    assert not problems, problems


def test_a_hint_naming_a_command_and_its_flag_matches() -> None:
    """`itkd X --flag` in a hint: the flag is one of X's own."""
    tree = _cli_tree()
    problems = []
    for where, text in _hint_texts():
        for command, flag in re.findall(r"`itkd ([a-z][a-z ]*?) (--[a-z][a-z-]*)", text):
            if command in tree and flag not in tree[command]:
                problems.append(f"{where}: `itkd {command}` has no {flag}")
    assert not problems, problems
