"""Every runnable example in README.md and docs/ runs here, on the tiny model and with tiny budgets.

Blocks come from doc_blocks.py (Sybil's Markdown lexer). A `bash` block runs command by command:
`blt-export`/`blt-run`/`blt-bench` in-process through click (no interpreter start per command), `blt-run serve`
as a server on a free loopback port until /health and /v1/models answer, `curl` and Python clients of
127.0.0.1:8000 against one such server on the tiny bundle, `make` as a dry run (`make -n`: the
targets and their recipes exist), `pip install` by checking the extras and pins it names against pyproject.toml.
Placeholders become real paths (BUNDLE: the session's tiny bundle, or a fresh directory in a block that builds
one; CHECKPOINT and graphs/default_model: the tiny model; RUN, DIR: fresh directories); budgets shrink
(`--steps 2`, short sequences) and a build without a CHECKPOINT builds the tiny model instead of the bundled
one. A `python` block is executed with its string placeholders ("bundle", "ckpt", "HF_DIR") replaced. Marked
blocks (not-in-ci, synopsis) are counted in test_block_census; synopses are checked in test_cli_flags.py."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner
from doc_blocks import CODE, ROOT, SHELL, all_blocks, logical_lines

BLOCKS = all_blocks()
RUNNABLE = [b for b in BLOCKS if b.language in CODE and b.kind == "run"]
PROGRAMS = {"blt-export": "fastblt.export.cli", "blt-run": "fastblt.runtime.cli", "blt-bench": "fastblt.benchmarks.cli"}
BUDGET = {"--steps": "2", "--max-new-bytes": "16", "--new-bytes": "16", "--prompts": "1", "--repeats": "1",
          "--max-windows": "2", "--heldout-windows": "2", "--calibration-prompts": "1"}
APPEND = {"train": [("--seq-len", "64"), ("--batch-size", "1"), ("--eval-every", "1000"), ("--eval-windows", "2"),
                    ("--ckpt-every", "1000"), ("--quiet",)],
          "build": [("--heldout-windows", "2"), ("--calibration-prompts", "1")], "eval": [("--max-windows", "2")],
          "compare": [("--max-new-bytes", "16")]}
BUILDS = ("build", "onnx")

def _extras() -> dict[str, list[str]]:
    """pyproject.toml's extras as installed: requirement strings per extra (the package's own metadata)."""
    from importlib import metadata

    meta = metadata.metadata("fastblt")
    out: dict[str, list[str]] = {e: [] for e in meta.get_all("Provides-Extra") or []}
    for req in meta.get_all("Requires-Dist") or []:
        m = re.match(r"(?P<req>[^;]+?)\s*;\s*extra == \"(?P<extra>[\w-]+)\"", req)
        if m:
            out.setdefault(m["extra"], []).append(m["req"].replace(" ", ""))
    return out


EXTRAS = _extras()


def test_block_census(capsys):
    """Every fence names its language; the code blocks that do not run in CI are marked with a reason, and
    their share is printed so the skipping stays visible."""
    untagged = [b.id for b in BLOCKS if not b.language]
    assert not untagged, f"fences without a language (```bash, ```python, ```text, ...): {untagged}"
    code = [b for b in BLOCKS if b.language in CODE]
    skipped = [b for b in code if b.kind == "not-in-ci"]
    assert all(b.reason for b in skipped), [b.id for b in skipped if not b.reason]
    assert not [b.id for b in BLOCKS if b.kind != "run" and b.language not in CODE]
    ran = len(code) - len(skipped)
    with capsys.disabled():
        print(f"\ndocs: {len(code)} shell/Python blocks: {len(RUNNABLE)} run, "
              f"{sum(b.kind == 'synopsis' for b in code)} synopses checked against --help, {len(skipped)} not in CI "
              f"({ran / len(code):.0%} in CI): " + "; ".join(f"{b.id} ({b.reason})" for b in skipped))
    assert ran / len(code) >= 0.75  # the GPU, TensorRT and cluster examples are the rest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shell:
    def __init__(self, block, paths: dict[str, str], tmp_path) -> None:
        self.block, self.paths, self.tmp = block, paths, tmp_path
        self.builds = any(f"{p} {c} " in line and "--out BUNDLE" in line for line in logical_lines(block.source)
                          for p in PROGRAMS for c in BUILDS)

    def words(self, words: list[str]) -> list[str]:
        out = []
        for i, w in enumerate(words):
            if i and words[i - 1] in BUDGET:
                w = BUDGET[words[i - 1]]
            elif w == "BUNDLE":
                w = str(self.tmp / "built") if self.builds else self.paths["bundle"]
            elif w in self.paths:
                w = self.paths[w]
            elif w in ("RUN", "DIR", "OUT", "HF_DIR"):
                w = str(self.tmp / w.lower())
            out.append(w)
        return out

    def run(self, line: str) -> None:
        words = shlex.split(line, comments=True)
        commands, current = [], []
        for w in words:
            if w == "&&":
                commands.append(current)
                current = []
            else:
                current.append(w)
        commands.append(current)
        for command in commands:
            self.command(self.words(command))

    def command(self, words: list[str]) -> None:
        program = words[0].rsplit("/", 1)[-1]
        if program == "make":
            res = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0 and res.stdout.strip(), f"make -n {words[1:]}: {res.stderr}"
        elif program in ("pip", "pip3"):
            pip_install(words)
        elif words[:3] in (["python3", "-m", "venv"], ["python", "-m", "venv"]):
            pass  # the environment the tests run in is that venv
        elif program == "blt-run" and words[1] == "serve":
            serve(words)
        elif program == "curl":
            curl(words)
        elif program in PROGRAMS:
            cli(program, words[1:], self.paths)
        else:
            pytest.fail(f"{self.block.id}: the docs runner cannot run {words[0]!r}; mark the block "
                        "<!-- not-in-ci: reason --> or teach tests/docs/test_examples.py the command")


def pip_install(words: list[str]) -> None:
    """`pip install -e '.[a,b]'`, `pip install 'fastblt[a]'`, `pip install torch==V`: the extras exist and the pins
    are pyproject's."""
    for w in words[2:]:
        if w.startswith("-"):
            continue
        m = re.fullmatch(r"(?:\.|fastblt)\[([\w,-]+)\]", w)
        if m:
            missing = [e for e in m[1].split(",") if e not in EXTRAS]
            assert not missing, f"pip install {w}: pyproject.toml has no extras {missing}"
            continue
        pinned = {r.split("==")[0]: r for reqs in EXTRAS.values() for r in reqs if "==" in r}
        name = re.split(r"[=<>~!]", w, maxsplit=1)[0]
        assert name in pinned and pinned[name] == w, f"pip install {w}: pyproject.toml pins {pinned.get(name)}"


def cli(program: str, args: list[str], paths: dict[str, str]) -> None:
    import importlib

    if len(args) > 0 and args[0] in BUILDS and (len(args) < 2 or args[1].startswith("-")):
        args = [args[0], paths["CHECKPOINT"], *args[1:]]  # the tiny model, not the bundled one
    if args and args[0] in APPEND:
        args = [*args, *[w for option in APPEND[args[0]] if option[0] not in args for w in option]]
    main = importlib.import_module(PROGRAMS[program]).main
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, f"{program} {shlex.join(args)} exited {res.exit_code}:\n{res.output[-3000:]}"


def start_server(args: list[str]) -> tuple[subprocess.Popen, int]:
    """`blt-run serve ARGS` on a free loopback port, once /health and /v1/models answer."""
    port = _free_port()
    code = "import sys; from fastblt.runtime.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, *args, "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                assert proc.poll() is None, f"blt-run serve exited:\n{proc.stdout.read()[-3000:]}"
                assert time.monotonic() < deadline, "blt-run serve did not answer /health within 120 s"
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
            assert json.loads(r.read())["data"], "GET /v1/models listed no model"
    except BaseException:
        stop_server(proc)
        raise
    return proc, port


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def serve(words: list[str]) -> None:
    proc, _ = start_server(words[1:])
    stop_server(proc)


def curl(words: list[str]) -> None:
    res = subprocess.run(words, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{shlex.join(words)}: {res.stderr}"
    body = json.loads(res.stdout)
    assert "error" not in body and body.get("choices"), body


DOC_URL = "127.0.0.1:8000"  # where the docs' client examples find `blt-run serve`


@pytest.fixture(scope="module")
def doc_server(doc_bundle):
    proc, port = start_server(["serve", "--bundle", str(doc_bundle), "--workers", "1"])
    yield f"127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(scope="module")
def paths(doc_bundle, doc_checkpoint, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("doc") / "packages"
    corpus.mkdir()
    (corpus / "example.py").write_text("def add(a, b):\n    return a + b\n" * 40)
    return {"bundle": str(doc_bundle), ".cache/bundle-default": str(doc_bundle), "CHECKPOINT": str(doc_checkpoint),
            "CKPT": str(doc_checkpoint), "graphs/default_model": str(doc_checkpoint), "PACKAGES_DIR": str(corpus)}


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_example_runs(block, paths, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # whatever an example writes lands in a fresh directory
    if DOC_URL in block.source and "blt-run serve" not in block.source:  # a client of the docs' server
        block = dataclasses.replace(block, source=block.source.replace(DOC_URL, request.getfixturevalue("doc_server")))
    if block.language in SHELL:
        shell = Shell(block, paths, tmp_path)
        for line in logical_lines(block.source):
            shell.run(line)
        return
    source = block.source
    for name, path in (("bundle", paths["bundle"]), ("ckpt", paths["CHECKPOINT"]), ("HF_DIR", tmp_path / "hf")):
        source = source.replace(f'"{name}"', repr(str(path)))
    code = compile(source, block.id, "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, {"__name__": "__doc_example__"})
