"""Offline text corpora as deterministic, streamed byte sequences (BOS first, EOS at each document end).

Default corpus: the running interpreter's standard library `.py` sources, test folders excluded, split
into train / held-out by a hash of the path (CRC32 % 20 == 0 → held-out). Extra corpora: directories of
text files or `.jsonl` files (a "text" field per line). Nothing is ever loaded whole: documents are read one
at a time in a seeded order and cut into windows.
"""

from __future__ import annotations

import json
import random
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastblt.graphs.constants import BOS, EOS, OFFSET

TEST_DIRS = {"test", "tests", "idle_test"}
TEXT_SUFFIXES = {".py", ".txt", ".md", ".rst", ".c", ".h", ".json", ".toml", ".cfg", ".ini", ".yaml", ".yml",
                 ".html", ".css", ".js", ".sh", ".jsonl"}


class CorpusError(ValueError):
    """A corpus path is missing, empty or unreadable."""


@dataclass(frozen=True)
class Document:
    source: str  # file path, or "path:line" for jsonl records
    path: Path
    line: int | None = None

    def read(self) -> bytes:
        if self.line is None:
            return self.path.read_bytes()
        with self.path.open("rb") as fh:
            for i, raw in enumerate(fh):
                if i == self.line:
                    return str(json.loads(raw).get("text", "")).encode("utf-8")
        return b""


def held_out(source: str) -> bool:
    return zlib.crc32(source.encode("utf-8")) % 20 == 0


def stdlib_documents() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or TEST_DIRS & set(rel.parts[:-1]):
            continue
        docs.append(Document(str(rel), path))
    return docs


def path_documents(spec: str) -> list[Document]:
    path = Path(spec)
    if not path.exists():
        raise CorpusError(f"corpus {spec!r} does not exist; pass a directory of text files or a .jsonl file")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    docs: list[Document] = []
    for f in files:
        # the split hashes the path relative to the corpus, so it survives moving or copying the corpus
        rel = f.name if path.is_file() else str(f.relative_to(path))
        if f.suffix == ".jsonl":
            with f.open("rb") as fh:
                docs += [Document(f"{rel}:{i}", f, i) for i, raw in enumerate(fh) if raw.strip()]
        elif f.suffix in TEXT_SUFFIXES or path.is_file():
            docs.append(Document(rel, f))
    return docs


def corpus_documents(corpora: list[str] | None = None, split: str = "train") -> list[Document]:
    """Documents of the named corpora ("stdlib" or paths) in the given split ("train", "heldout", "all")."""
    docs: list[Document] = []
    for spec in corpora or ["stdlib"]:
        docs += stdlib_documents() if spec == "stdlib" else path_documents(spec)
    if split != "all":
        want = split == "heldout"
        docs = [d for d in docs if held_out(d.source) == want]
    if not docs:
        raise CorpusError(f"corpus {corpora or ['stdlib']} has no {split} documents (is it empty, or too small "
                          "to hold out 1 file in 20? add more files)")
    return docs


def windows(doc_bytes: bytes, seq_len: int) -> Iterator[list[int]]:
    """Cut one document into windows of seq_len+1 ids (BOS first; the last id only serves as a target).
    Every window restarts with BOS, so the patcher and the model never see a cross-document context."""
    ids = [b + OFFSET for b in doc_bytes] + [EOS]
    step = seq_len
    for at in range(0, len(ids), step):
        chunk = [BOS] + ids[at: at + seq_len]
        if len(chunk) >= 8:  # tiny tails teach nothing
            yield chunk


class Stream:
    """Endless deterministic stream of windows for one data-parallel rank; `skip` resumes mid-stream."""

    def __init__(self, docs: list[Document], seq_len: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = 512) -> None:
        self.docs, self.seq_len, self.seed = docs, seq_len, seed
        self.rank, self.world, self.buffer = rank, world, shuffle_buffer

    def __iter__(self) -> Iterator[list[int]]:
        epoch = 0
        count = 0
        while True:
            order = list(range(len(self.docs)))
            random.Random(self.seed * 1000003 + epoch).shuffle(order)
            rng = random.Random(self.seed * 7919 + epoch)
            pool: list[list[int]] = []
            produced = False
            for i in order:
                try:
                    data = self.docs[i].read()
                except OSError:
                    continue
                for w in windows(data, self.seq_len):
                    if count % self.world == self.rank:
                        pool.append(w)
                        if len(pool) >= self.buffer:
                            produced = True
                            yield pool.pop(rng.randrange(len(pool)))
                    count += 1
            rng.shuffle(pool)
            produced = produced or bool(pool)
            yield from pool
            if not produced:
                raise CorpusError("the corpus produced no training windows (all documents empty?)")
            epoch += 1


def batches(stream: Stream, batch_size: int, pad_id: int, skip: int = 0) -> Iterator[list[list[int]]]:
    """Batches of right-padded windows (PAD = `pad_id`, excluded from every loss). `skip` batches are dropped
    first, so a resumed run sees exactly the batches it would have seen."""
    it = iter(stream)
    n = 0
    while True:
        rows = [next(it) for _ in range(batch_size)]
        n += 1
        if n <= skip:
            continue
        width = max(len(r) for r in rows)
        yield [r + [pad_id] * (width - len(r)) for r in rows]


def heldout_windows(corpora: list[str] | None, seq_len: int, max_windows: int, per_doc: int = 2) -> list[list[int]]:
    """A fixed evaluation set: up to `per_doc` evenly spaced windows from each held-out document."""
    out: list[list[int]] = []
    for doc in corpus_documents(corpora, "heldout"):
        ws = list(windows(doc.read(), seq_len))
        stride = max(1, len(ws) // per_doc)
        out += ws[::stride][:per_doc]
        if len(out) >= max_windows:
            return out[:max_windows]
    return out
