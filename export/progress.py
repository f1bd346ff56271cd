"""Build output: one line per stage (with a progress bar on a terminal), library output in a log file.

The exporter, ONNX Runtime's quantizer and ONNX Runtime's C++ logger report per graph (notices, advice,
deprecations) through print, `logging`, `warnings` and straight to file descriptors 1 and 2, so a bundle of
~20 graphs repeats each of them many times. While a `BuildLog` is open all of that goes to its log file. The
warnings that matter, fastblt's own and numerical ones (RuntimeWarning: overflow, invalid values), are shown
once each when the build ends, with their count; the others are counted in one closing line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]  # the source tree (fastblt.export lives in <root>/export)


def _matters(category: type[Warning], filename: str) -> bool:
    """fastblt's own warnings and numerical ones; not the libraries' notices about their own internals."""
    path = str(Path(filename).resolve()) if filename else ""
    ours = path.startswith(str(PROJECT)) and "site-packages" not in path
    return ours or issubclass(category, RuntimeWarning)


class _Bar:
    """A tqdm bar on the terminal stream, or nothing (same update/close interface)."""

    def __init__(self, stream, label: str, total: int, unit: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # the [export] extra has no tqdm: lines only
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=f"{label:<28s}", unit=unit, file=stream, leave=True,
                                dynamic_ncols=True, mininterval=0.5,
                                bar_format="{desc} {bar:20} {n_fmt}/{total_fmt} {unit} [{elapsed}]")

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class BuildLog:
    """Context manager: stage lines go to the terminal (`echo`, or stderr with bars), everything libraries
    write goes to `path`. Without bars, each stage is one `echo` line when it starts."""

    def __init__(self, path: Path, echo=print, bars: bool = False, final_path: Path | None = None) -> None:
        self.path, self.echo, self.bars = Path(path), echo, bars
        self.final_path = Path(final_path or path)  # where the log ends up (the bundle is built in a temp dir)
        self.warned: Counter[str] = Counter()  # warnings that matter, by first line
        self.notices = 0  # library warnings kept in the log only
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> BuildLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self._stack.enter_context(open(self.path, "a", encoding="utf-8", buffering=1))
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self.term_out = io.TextIOWrapper(os.fdopen(os.dup(self._saved[0]), "wb", buffering=0), line_buffering=True,
                                         encoding="utf-8", errors="replace")
        self.term_err = io.TextIOWrapper(os.fdopen(os.dup(self._saved[1]), "wb", buffering=0), line_buffering=True,
                                         encoding="utf-8", errors="replace")
        self._stack.callback(self._restore)
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        self._stack.enter_context(contextlib.redirect_stdout(self.file))
        self._stack.enter_context(contextlib.redirect_stderr(self.file))
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("always")
        warnings.showwarning = self._showwarning
        handler = logging.StreamHandler(self.file)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        self._stack.callback(root.removeHandler, handler)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        for text, n in self.warned.items():
            self.say(f"warning{f' (×{n})' if n > 1 else ''}: {text}")
        if self.notices:
            self.say(f"{self.notices} library notices (deprecations, exporter and quantizer advice) in "
                     f"{self.final_path}")

    def _restore(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self.term_out.close()
        self.term_err.close()

    def _showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.file.write(warnings.formatwarning(message, category, filename, lineno, line))
        if not _matters(category, filename):
            self.notices += 1
            return
        first = str(message).strip().splitlines()[0] if str(message).strip() else ""
        self.warned[f"{category.__name__}: {first}"[:300]] += 1

    def say(self, message: str) -> None:
        """A line for the user (and the log), whatever the libraries did to stdout/stderr meanwhile."""
        if getattr(self, "file", None) is not None and not self.file.closed:
            self.file.write(f"== {message}\n")
        if self.bars:
            print(message, file=self.term_err if not self.term_err.closed else sys.stderr)
            return
        term = getattr(self, "term_out", None)
        if term is None or term.closed:
            self.echo(message)
            return
        with contextlib.redirect_stdout(term), contextlib.redirect_stderr(self.term_err):
            self.echo(message)

    @contextlib.contextmanager
    def stage(self, label: str, total: int, unit: str = "graphs"):
        """One stage: a bar of `total` steps on a terminal (or one line), its name in the log."""
        if self.bars:  # the bar shows it on the terminal
            self.file.write(f"== {label} ({total} {unit})\n")
        else:
            self.say(f"{label} ({total} {unit})")
        bar = _Bar(self.term_err, label, total, unit, self.bars)
        try:
            yield bar
        finally:
            bar.close()
