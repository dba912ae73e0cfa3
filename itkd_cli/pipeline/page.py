"""A report page as a list of blocks, rendered to markdown (images beside it) or to one self-contained HTML file.

The HTML embeds its PNGs (base64) and its style, so a CI artifact opened on its own shows everything.
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import NamedTuple, Sequence, Union


class Heading(NamedTuple):
    text: str
    level: int = 2


class Para(NamedTuple):
    """A paragraph; `backticks` mark code."""

    text: str


class Bullets(NamedTuple):
    items: Sequence[str]


class Table(NamedTuple):
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


class Image(NamedTuple):
    path: Path
    alt: str


class Code(NamedTuple):
    """A block of commands, shown verbatim."""

    text: str


Block = Union[Heading, Para, Bullets, Table, Image, Code]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block], folder: Path) -> str:
    """Markdown of the page; images are linked relative to ``folder`` (where the .md file goes)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [*(f"- {item}" for item in b.items), ""]
        elif isinstance(b, Table):
            out += ["| " + " | ".join(map(_cell, b.header)) + " |", "|" + "---|" * len(b.header)]
            out += ["| " + " | ".join(map(_cell, row)) + " |" for row in b.rows] + [""]
        elif isinstance(b, Image):
            out += [f"![{b.alt}]({Path(os.path.relpath(b.path, folder)).as_posix()})", ""]
        elif isinstance(b, Code):
            out += ["```", b.text.rstrip("\n"), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    parts = re.split(r"`([^`]*)`", str(text))
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;"
         "text-align:left}th{background:#f3f3f3}pre{background:#f6f8fa;padding:.8em;overflow-x:auto}"
         "code{background:#f6f8fa;padding:0 .2em}img{max-width:100%}.failed{color:#b00020;font-weight:bold}"
         ".passed{color:#1b7f3b}")


def _td(text: str) -> str:
    cls = {"FAILED": ' class="failed"', "passed": ' class="passed"'}.get(str(text), "")
    return f"<td{cls}>{_inline(text)}</td>"


def to_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained HTML file: inline style, every image embedded as a base64 PNG."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            body.append(f'<p><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}"></p>')
        elif isinstance(b, Code):
            body.append(f"<pre>{html.escape(b.text)}</pre>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
