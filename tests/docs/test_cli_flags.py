"""Flags, choices and defaults quoted in README.md and docs/ against each command's own `--help`.

Commands come from the synopsis and runnable blocks and from inline code (`blt-run serve --port 8000 ...`).
Each `--flag` must be an option of that command and appear in its `--help` text; `a|b|c` after a flag lists
values the option accepts; `[--flag VALUE]` in a synopsis states the default. The options tables of
docs/serving.md and the decoding-modes table of the README ("default X") are read the same way."""

from __future__ import annotations

import importlib
import re

import click
import pytest
from click.testing import CliRunner
from doc_blocks import DOCS, all_blocks, logical_lines

PROGRAMS = {"blt-export": "fastblt.export.cli", "blt-run": "fastblt.runtime.cli", "blt-bench": "fastblt.benchmarks.cli",
            "blt-demo": "fastblt.demo.cli"}
# list-valued options whose documented values are members of a vocabulary, not one default
PRECISION_OPTIONS = {"--precision"}


def _main(program: str) -> click.Command:
    return importlib.import_module(PROGRAMS[program]).main


def _command(program: str, words: list[str]) -> tuple[click.Command, list[str], str]:
    """The click command a documented command line names, the words after it, and its name for messages."""
    cmd, name, rest = _main(program), program, list(words)
    while isinstance(cmd, click.Group) and rest and rest[0] in cmd.commands:
        name += " " + rest[0]
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    return cmd, rest, name


def _help(program: str, name: str) -> str:
    res = CliRunner().invoke(_main(program), [*name.split()[1:], "--help"])
    assert res.exit_code == 0, res.output
    return res.output


def documented_commands() -> list[tuple[str, str, str]]:
    """(where, kind, command line) for every command of a fastblt CLI quoted in the docs."""
    out = []
    for block in all_blocks():
        if block.language not in ("bash", "sh") or block.kind == "not-in-ci":
            continue
        for line in logical_lines(block.source):
            code = line.split("  #")[0].split(" # ")[0].strip()
            if code.split(" ")[0] in PROGRAMS:
                out.append((block.id, block.kind, code))
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        pattern = "`((?:" + "|".join(PROGRAMS) + r") [^`]+)`"
        for m in re.finditer(pattern, prose):
            out.append((f"{path.name} (inline)", "inline", m.group(1)))
    return out


COMMANDS = documented_commands()


def _param(cmd: click.Command, flag: str) -> click.Option | None:
    for p in cmd.params:
        if isinstance(p, click.Option) and (flag in p.opts or flag in p.secondary_opts):
            return p
    return None


def _tokens(line: str) -> list[str]:
    return [t for t in re.split(r"\s+", line.replace("[", " [ ").replace("]", " ] ")) if t]


def check_line(kind: str, line: str) -> list[str]:
    words = _tokens(line)
    program = words[0]
    group = _main(program)
    plain = [w for w in words[1:] if w not in ("[", "]")]
    if isinstance(group, click.Group) and len(plain) > 1 and plain[1] == "|":
        # `blt-export train | train-decoder | eval`: a list of subcommands
        names = [w for w in plain if w not in ("|", "...") and not w.startswith(("-", "#", "docs/"))]
        return [f"{program}: no subcommand {n!r}" for n in names if n not in group.commands]
    cmd, _, name = _command(program, plain)
    if isinstance(cmd, click.Group):
        return [f"{line!r}: names no subcommand of {program} (has {sorted(cmd.commands)})"]
    help_text = _help(program, name)
    problems = []
    for i, w in enumerate(words):
        if not re.fullmatch(r"--[a-z0-9][a-z0-9-]*", w):
            continue
        p = _param(cmd, w)
        if p is None:
            problems.append(f"{name}: no option {w} (see `{name} --help`)")
            continue
        if w not in help_text:
            problems.append(f"{name}: {w} is missing from --help")
        value = words[i + 1] if i + 1 < len(words) else ""
        if p.is_flag or not re.fullmatch(r"[a-z0-9][a-z0-9.,|:_\[\]-]*", value):
            continue  # a flag, or a placeholder (DIR, N, λ, ...)
        values = [v for v in re.split(r"[|,]", value) if v and v != "..."]
        if isinstance(p.type, click.Choice):
            bad = [v for v in values if v not in p.type.choices]
            if bad:
                problems.append(f"{name} {w}: {bad} not among its choices {list(p.type.choices)}")
            if "|" in value:
                continue
        if w in PRECISION_OPTIONS:
            from fastblt.export.quantize import PRECISIONS

            bad = [v for v in values if v not in PRECISIONS]
            if bad:
                problems.append(f"{name} {w}: {bad} are no precisions ({list(PRECISIONS)})")
            continue
        bracketed = i > 0 and words[i - 1] == "[" and i + 2 < len(words) and words[i + 2] == "]"
        if kind == "synopsis" and bracketed and "|" not in value and not _default_is(p, value):
            problems.append(f"{name} {w}: the docs give {value} as the default, --help says "
                            f"{p.default if p.default is not None else p.help}")
    return problems


def _default_is(p: click.Option, value: str) -> bool:
    """The option's default is `value`: its click default, or, where that is None (the mode registry fills it
    in), its --help text names `value` as the default."""
    if p.default is not None:
        return _same(value, p.default)
    return "default" in (p.help or "") and value in (p.help or "")


def _same(doc: str, default) -> bool:
    if isinstance(default, bool):
        return False
    try:
        return float(doc) == float(default)
    except (TypeError, ValueError):
        return doc == str(default)


@pytest.mark.parametrize(("where", "kind", "line"), COMMANDS, ids=[f"{w}:{line[:40]}" for w, _, line in COMMANDS])
def test_documented_flags_exist_with_their_defaults(where, kind, line):
    assert not check_line(kind, line), f"{where}: {line}"


def test_the_collector_finds_the_synopses_and_catches_drift():
    assert len({w for w, k, _ in COMMANDS if k == "synopsis"}) >= 6
    assert check_line("synopsis", "blt-export build [--external-data-mb 1024]") == []
    assert check_line("synopsis", "blt-export build [--external-data-mb 512]")  # a wrong default
    assert check_line("synopsis", "blt-export build [--engines auto|maybe|no]")  # a choice that is not one
    assert check_line("synopsis", "blt-export engine BUNDLE --engines yes")  # a flag the command lacks
    assert check_line("synopsis", "blt-export inspect BUNDLE [--json]") == []


def _table_defaults(text: str, header: str) -> list[tuple[str, str]]:
    """(`--flag`, default) from a Markdown table whose header row starts with `header`."""
    out = []
    start = text.index(header)
    for row in text[start:].split("\n")[2:]:
        if not row.startswith("|"):
            break
        cells = [c.strip() for c in row.strip("|").split("|")]
        flags = re.findall(r"`(--[a-z-]+)", cells[0])
        defaults = [d.strip() for d in cells[1].split(",")]
        if len(flags) == len(defaults):
            out += [(f, d) for f, d in zip(flags, defaults, strict=True) if re.fullmatch(r"[\d.]+", d)]
    return out


def test_serving_options_table_matches_serve_help():
    from doc_blocks import ROOT

    rows = _table_defaults((ROOT / "docs" / "serving.md").read_text(encoding="utf-8"), "| option | default |")
    assert len(rows) >= 5, rows
    cmd, _, _ = _command("blt-run", ["serve"])
    for flag, default in rows:
        p = _param(cmd, flag)
        assert p is not None and _default_is(p, default), (flag, default, p and p.default)


def test_readme_mode_table_defaults_match_generate_help():
    from doc_blocks import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## Decoding modes"):text.index("## What is verified where")]
    found = re.findall(r"`(--[a-z-]+)[^`]*`[^|`]*?default `?([\w.]+)", table)
    assert len(found) >= 3, found
    cmd, _, _ = _command("blt-run", ["generate"])
    for flag, default in found:
        p = _param(cmd, flag)
        assert p is not None, flag
        assert _default_is(p, default), (flag, default, p.default, p.help)
