"""The fenced code blocks of README.md and docs/*.md, found with Sybil's Markdown lexer (the fence rules of
CommonMark: backtick and tilde fences, nesting, info strings), and classified by the HTML comment right before
each fence:

- `<!-- not-in-ci: REASON -->`: not run in CI (a GPU, TensorRT, a cluster); counted, with the reason.
- `<!-- synopsis ... -->`: a command synopsis; its flags, choices and defaults are compared with `--help`.
- none: a `bash` block is run command by command, a `python` block is executed.

Every fence names its language (`bash`, `python`, `text`, `yaml`, ...), so an untagged block cannot hide."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sybil import Document
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell")
CODE = (*SHELL, "python")
MARK = re.compile(r"<!--\s*(?P<kind>not-in-ci|synopsis)\b:?\s*(?P<reason>.*?)\s*-->\s*$")
INFO = re.compile(r"(?P<language>[^\n]*)$\n", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    source: str
    kind: str  # "run", "synopsis" or "not-in-ci"
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    doc = Document(text, str(path))
    out = []
    for region in RawFencedCodeBlockLexer(info_pattern=INFO)(doc):
        before = text[:region.start].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        kind, reason = (mark["kind"], mark["reason"]) if mark else ("run", "")
        out.append(Block(path, text.count("\n", 0, region.start) + 1, region.lexemes["language"].strip(),
                         str(region.lexemes["source"]), kind, reason))
    return out


def all_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks(path)]


def logical_lines(source: str) -> list[str]:
    """Shell lines with backslash continuations joined and a synopsis' indented continuation lines appended."""
    lines: list[str] = []
    pending = ""
    for raw in source.splitlines():
        if pending:
            raw, pending = pending + " " + raw.strip(), ""
        if raw.rstrip().endswith("\\"):
            pending = raw.rstrip()[:-1].rstrip()
            continue
        if raw.strip() and raw[:1].isspace() and lines:
            lines[-1] += " " + raw.strip()
        elif raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw)
    return lines
