"""The bundle manifest (torch-free): what `blt-export build` writes and every runtime backend reads.

A bundle is one directory: manifest.json, the ONNX files per precision, optional TensorRT engines. Every
file is listed with its sha256; a backend verifies the files it loads, so a missing or altered file is a
clear error, never a silent wrong answer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastblt.graphs.config import BltConfig

FORMAT = "fastblt-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle is missing, altered, or of an unknown format; the message names the file and the fix."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_standard(entry: dict) -> bool:
    """Whether a manifest graph entry is the portable layout (what TensorRT and Polygraphy read)."""
    return entry.get("layout", "standard") == "standard"


@dataclass
class Manifest:
    root: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, bundle: str | Path) -> Manifest:
        root = Path(bundle)
        path = root / MANIFEST
        if not path.is_file():
            raise BundleError(f"{root}: no {MANIFEST}; is this a bundle written by `blt-export build`?")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"{path}: not a fastblt bundle manifest (format {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: manifest format_version {data.get('format_version')!r} is not supported by "
                              f"this fastblt (it reads version {FORMAT_VERSION}); rebuild the bundle with "
                              "`blt-export build` or upgrade fastblt")
        return cls(root, data)

    @property
    def config(self) -> BltConfig:
        return BltConfig.from_dict(self.data["model"], f"{self.root / MANIFEST}: model")

    @property
    def precisions(self) -> list[str]:
        return list(self.data.get("precisions", ["fp32"]))

    @property
    def block_sizes(self) -> list[int]:
        return list(self.data.get("block_sizes", []))

    def has_file(self, key: str, precision: str) -> bool:
        return precision in self.data.get("graphs", {}).get(key, {}).get("files", {})

    def graph_file(self, key: str, precision: str = "fp32", verify: bool = True) -> Path:
        """Path of a graph's ONNX file, after checking it exists and its sha256 matches the manifest."""
        graphs = self.data.get("graphs", {})
        if key not in graphs:
            raise BundleError(f"{self.root}: the manifest has no graph {key!r} (graphs: {sorted(graphs)})")
        files = graphs[key]["files"]
        if precision not in files:
            raise BundleError(f"{self.root}: graph {key!r} has no {precision} file (precisions: {sorted(files)}); "
                              f"rebuild with `blt-export build --precision {precision}`")
        entry = files[precision]
        path = self.root / entry["path"]
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (listed in {MANIFEST}); rebuild the bundle")
        if verify and sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{path}: sha256 does not match {MANIFEST} (the file was altered or truncated); "
                              "rebuild the bundle")
        return path


def write_manifest(root: Path, data: dict[str, Any]) -> Path:
    path = Path(root) / MANIFEST
    path.write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **data}, indent=2) + "\n")
    return path
