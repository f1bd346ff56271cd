"""One atomic writer for every output directory and file (no torch, no numpy).

Bundles, checkpoints, HF exports, training state, engines and reports are written into a temporary
directory or file beside their destination and swapped in only when complete, so an interrupted or failed
write never leaves a half-written output, and readers see the old version or the new one, never a mix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_dir(dest: str | Path, *, start_from_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; on a clean exit it replaces `dest`, on an error it is removed
    and `dest` stays as it was. With `start_from_existing` the directory starts as a copy of `dest` (for
    edits such as adding precisions or engines to a bundle)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.writing-", dir=dest.parent))
    try:
        if start_from_existing:
            tmp.rmdir()
            shutil.copytree(dest, tmp, copy_function=_link_or_copy)
        yield tmp
        _swap_in(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


LINK_BYTES = 1 << 20


def _link_or_copy(src: str, dst: str) -> None:
    """Large files (hash tables, engines: written once, never edited in place) are hard-linked, so adding a
    precision to a bundle does not copy them; small files (manifest, logs) are copied, and so is ONNX external
    data (`.data`), which the onnx package refuses to read through a file with several hard links."""
    if os.path.getsize(src) >= LINK_BYTES and not src.endswith(".data"):
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copy2(src, dst)


def _swap_in(tmp: Path, dest: Path) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an output directory is meant to be shared
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def atomic_file(path: str | Path, data: str | bytes | memoryview) -> Path:
    """Write one file via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
