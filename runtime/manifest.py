"""The bundle manifest (torch-free): one typed, versioned schema with its reader and its writer.

A bundle is one directory: manifest.json, the ONNX files per precision, optional TensorRT engines.
`blt-export build` writes the manifest through `write_manifest` (so a build can never write one this reader
refuses) and every runtime backend reads it through `Manifest.load`'s typed fields. Every file is listed
with its sha256; a backend verifies the files it loads, so a missing or altered file is a clear error, never a
silent wrong answer. docs/bundles.md describes the fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastblt.graphs.config import BltConfig, ConfigError
from fastblt.graphs.spec import GraphSpec, fused_graph_specs, graph_specs

FORMAT = "fastblt-bundle"
FORMAT_VERSION = 2  # 2: hash tables in one host-side file (encoder input hash_embeds), external data listed
MANIFEST = "manifest.json"
LAYOUTS = ("standard", "fused")  # fused: the ONNX Runtime CPU layout (graphs/incremental/fused.py)
REBUILD_HINT = "rebuild the bundle with `blt-export build`"
# At load, files up to this size are checked by sha256 and larger ones by size: hashing runs at ~1 GB/s here
# (docs/scale.md), so a 10 GB bundle would spend ~10 s per load on it. `blt-export check` hashes everything.
VERIFY_HASH_MAX = 256 << 20
VERIFY_MODES = ("auto", "full", "size")


class BundleError(ValueError):
    """A bundle is missing, altered, or of an unknown format; the message names the file and the fix."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _get(data: dict, name: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    """One field of a JSON object, type-checked; a missing required field or a wrong type names the field."""
    if name not in data or (data[name] is None and default is not ...):
        if default is ...:
            raise BundleError(f"{where}: field {name!r} is missing; {REBUILD_HINT}")
        return default
    value = data[name]
    bad_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if not isinstance(value, kind) or bad_bool:
        want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BundleError(f"{where}: field {name!r} must be {want}, got {type(value).__name__}; {REBUILD_HINT}")
    return value


def _no_unknown(data: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise BundleError(f"{where}: unknown fields {unknown} (known: {list(known)}); the bundle was written by "
                          "another fastblt: upgrade fastblt or rebuild the bundle")


def resolve_inside(root: Path, rel: str, where: str) -> Path:
    """`root / rel`, refused unless it stays inside the bundle (no absolute path, no `..`, no symlink out)."""
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts or "\\" in rel:
        raise BundleError(f"{where}: path {rel!r} must be relative and inside the bundle; {REBUILD_HINT}")
    path = root / rel
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except OSError:
        inside = False
    if not inside:
        raise BundleError(f"{where}: path {rel!r} resolves outside the bundle {root}; {REBUILD_HINT}")
    return path


@dataclass(frozen=True)
class DataFile:
    """A file a graph or the hash table reads (ONNX external data, table rows, scales): path, sha256, size."""

    path: str
    sha256: str
    bytes: int

    @classmethod
    def from_dict(cls, data: Any, where: str) -> DataFile:
        if not isinstance(data, dict):
            raise BundleError(f"{where}: must be an object with path, sha256 and bytes; {REBUILD_HINT}")
        _no_unknown(data, ("path", "sha256", "bytes"), where)
        return cls(_get(data, "path", str, where), _get(data, "sha256", str, where), _get(data, "bytes", int, where))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class GraphFile:
    """One graph's ONNX file in one precision, relative to the bundle root, and its external-data files."""

    path: str
    sha256: str
    bytes: int | None = None
    data: tuple[DataFile, ...] = ()
    weight_bytes: int | None = None  # this graph's own weights (a shared data file holds other graphs' too)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> GraphFile:
        if not isinstance(data, dict):
            raise BundleError(f"{where}: must be an object with path and sha256; {REBUILD_HINT}")
        _no_unknown(data, ("path", "sha256", "bytes", "data", "weight_bytes"), where)
        files = _get(data, "data", list, where, [])
        return cls(_get(data, "path", str, where), _get(data, "sha256", str, where),
                   _get(data, "bytes", int, where, None),
                   tuple(DataFile.from_dict(f, f"{where}.data[{i}]") for i, f in enumerate(files)),
                   _get(data, "weight_bytes", int, where, None))

    @property
    def digest(self) -> str:
        """What identifies the graph's weights and structure together (engine keys): the .onnx file's sha256
        alone when it holds its weights, else a sha256 over the .onnx's and every data file's sha256."""
        if not self.data:
            return self.sha256
        blob = json.dumps([self.sha256, *[(d.path, d.sha256) for d in self.data]])
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "sha256": self.sha256}
        if self.bytes is not None:
            out["bytes"] = self.bytes
        if self.data:
            out["data"] = [d.to_dict() for d in self.data]
        if self.weight_bytes is not None:
            out["weight_bytes"] = self.weight_bytes
        return out

    @property
    def all_files(self) -> tuple[DataFile, ...]:
        return (DataFile(self.path, self.sha256, self.bytes if self.bytes is not None else -1), *self.data)

    @property
    def total_bytes(self) -> int:
        """The graph's weight bytes (what sizes its session: threads, prepacking)."""
        if self.weight_bytes is not None:
            return self.weight_bytes
        return sum(max(f.bytes, 0) for f in self.all_files)


TABLE_FIELDS = ("rows", "dim", "dtype", "data", "scales")


@dataclass(frozen=True)
class HashTableEntry:
    """The bundle's one hash n-gram table file (all tables stacked, row-major) and, for int8, its scales."""

    rows: int
    dim: int
    dtype: str
    data: DataFile
    scales: DataFile | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> HashTableEntry:
        from fastblt.runtime.hash_table import TABLE_DTYPES

        if not isinstance(data, dict):
            raise BundleError(f"{where}: must be an object with rows, dim, dtype and data; {REBUILD_HINT}")
        _no_unknown(data, TABLE_FIELDS, where)
        dtype = _get(data, "dtype", str, where)
        if dtype not in TABLE_DTYPES:
            raise BundleError(f"{where}: dtype {dtype!r} must be one of {list(TABLE_DTYPES)}; {REBUILD_HINT}")
        scales = _get(data, "scales", dict, where, None)
        if dtype == "int8" and scales is None:
            raise BundleError(f"{where}: an int8 table needs field 'scales'; {REBUILD_HINT}")
        return cls(_get(data, "rows", int, where), _get(data, "dim", int, where), dtype,
                   DataFile.from_dict(_get(data, "data", dict, where), f"{where}.data"),
                   DataFile.from_dict(scales, f"{where}.scales") if scales is not None else None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "dim": self.dim, "dtype": self.dtype, "data": self.data.to_dict()}
        if self.scales is not None:
            out["scales"] = self.scales.to_dict()
        return out

    @property
    def files(self) -> tuple[DataFile, ...]:
        return (self.data,) if self.scales is None else (self.data, self.scales)


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph (a `decoder_block` once per block size): its layout and its file per precision.

    Its I/O spec (names, dtypes, symbolic dims) is not stored: `spec` derives it from the model config through
    fastblt.graphs.spec, the one definition export, validation, engine build and runtime all read."""

    key: str
    graph: str
    block_size: int | None = None
    layout: str = "standard"
    files: dict[str, GraphFile] = field(default_factory=dict)

    @property
    def is_standard(self) -> bool:
        """The portable layout (what TensorRT and Polygraphy read)."""
        return self.layout == "standard"

    def spec(self, config: BltConfig) -> GraphSpec:
        specs = graph_specs(config) if self.is_standard else fused_graph_specs(config)
        return specs[self.graph]

    @classmethod
    def from_dict(cls, key: str, data: Any, where: str) -> GraphEntry:
        if not isinstance(data, dict):
            raise BundleError(f"{where}: must be an object with graph, block_size and files; {REBUILD_HINT}")
        _no_unknown(data, ("graph", "block_size", "layout", "files"), where)
        layout = _get(data, "layout", str, where, "standard")
        if layout not in LAYOUTS:
            raise BundleError(f"{where}: layout {layout!r} must be one of {list(LAYOUTS)}; {REBUILD_HINT}")
        files = _get(data, "files", dict, where, {})
        return cls(key, _get(data, "graph", str, where), _get(data, "block_size", int, where, None), layout,
                   {p: GraphFile.from_dict(f, f"{where}.files.{p}") for p, f in files.items()})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"graph": self.graph, "block_size": self.block_size}
        if not self.is_standard:
            out["layout"] = self.layout
        out["files"] = {p: f.to_dict() for p, f in self.files.items()}
        return out


ENGINE_FIELDS = ("graph_key", "precision", "path", "sha256", "gpu_name", "compute_capability", "trt_version",
                 "onnx_sha256")


@dataclass(frozen=True)
class EngineEntry:
    """One TensorRT engine and the device, TensorRT version and ONNX file it was built for (any may be missing
    from a hand-edited record: the TensorRT backend then refuses the engine, naming the field)."""

    graph_key: str
    precision: str
    path: str
    sha256: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    trt_version: str | None = None
    onnx_sha256: str | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EngineEntry:
        if not isinstance(data, dict):
            raise BundleError(f"{where}: must be an object with graph_key, precision and path; {REBUILD_HINT}")
        _no_unknown(data, ENGINE_FIELDS, where)
        required = {k: _get(data, k, str, where) for k in ENGINE_FIELDS[:3]}
        return cls(**required, **{k: _get(data, k, str, where, None) for k in ENGINE_FIELDS[3:]})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest, read and checked; `root` is the bundle directory (the files' paths are relative)."""

    root: Path
    model: dict[str, Any]
    created: str | None = None
    opset: int | None = None
    block_sizes: tuple[int, ...] = ()
    special_ids: dict[str, int | None] = field(default_factory=dict)
    patching: dict[str, Any] = field(default_factory=dict)
    precisions: tuple[str, ...] = ("fp32",)
    graphs: dict[str, GraphEntry] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    engines: tuple[EngineEntry, ...] = ()
    tools: dict[str, str] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    hash_table: HashTableEntry | None = None

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
            fmt = data.get("format") if isinstance(data, dict) else None
            raise BundleError(f"{path}: not a fastblt bundle manifest (format {fmt!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{path}: manifest format_version {data.get('format_version')!r} is not supported by "
                              f"this fastblt (it reads version {FORMAT_VERSION}); rebuild the bundle with "
                              "`blt-export build` or upgrade fastblt")
        return cls.from_dict(root, {k: v for k, v in data.items() if k not in ("format", "format_version")},
                             str(path))

    @classmethod
    def from_dict(cls, root: str | Path, data: dict[str, Any], where: str = MANIFEST) -> Manifest:
        """Check every field of a manifest body (no format/format_version) and build the typed manifest."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "root"]
        _no_unknown(data, tuple(names), where)
        model = _get(data, "model", dict, where)
        try:
            BltConfig.from_dict(model, f"{where}: model")
        except ConfigError as exc:
            raise BundleError(f"{where}: field 'model': {exc}; {REBUILD_HINT}") from None
        block_sizes = _get(data, "block_sizes", list, where)
        precisions = _get(data, "precisions", list, where)
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in block_sizes):
            raise BundleError(f"{where}: field 'block_sizes' must be a list of integers; {REBUILD_HINT}")
        if not all(isinstance(p, str) for p in precisions):
            raise BundleError(f"{where}: field 'precisions' must be a list of names; {REBUILD_HINT}")
        graphs = _get(data, "graphs", dict, where)
        if not graphs:
            raise BundleError(f"{where}: field 'graphs' lists no graph; {REBUILD_HINT}")
        engines = _get(data, "engines", list, where)
        return cls(
            root=Path(root), model=model, created=_get(data, "created", str, where),
            opset=_get(data, "opset", int, where), block_sizes=tuple(block_sizes),
            special_ids=_get(data, "special_ids", dict, where), patching=_get(data, "patching", dict, where),
            precisions=tuple(precisions),
            graphs={k: GraphEntry.from_dict(k, e, f"{where}: graphs.{k}") for k, e in graphs.items()},
            validation=_get(data, "validation", dict, where),
            quantization=_get(data, "quantization", dict, where),
            engines=tuple(EngineEntry.from_dict(e, f"{where}: engines[{i}]") for i, e in enumerate(engines)),
            tools=_get(data, "tools", dict, where), quality=_get(data, "quality", dict, where),
            hash_table=HashTableEntry.from_dict(_get(data, "hash_table", dict, where), f"{where}: hash_table"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON body (format and format_version are added by `write`)."""
        out: dict[str, Any] = {"created": self.created, "model": self.model, "opset": self.opset,
                               "block_sizes": list(self.block_sizes), "special_ids": self.special_ids,
                               "patching": self.patching, "precisions": list(self.precisions),
                               "graphs": {k: e.to_dict() for k, e in self.graphs.items()},
                               "validation": self.validation, "quantization": self.quantization,
                               "engines": [e.to_dict() for e in self.engines], "tools": self.tools,
                               "quality": self.quality,
                               "hash_table": self.hash_table.to_dict() if self.hash_table else None}
        return {k: v for k, v in out.items() if v is not None}

    def write(self, root: str | Path | None = None) -> Path:
        from fastblt.graphs.atomic import atomic_file

        path = Path(self.root if root is None else root) / MANIFEST
        body = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.to_dict()}
        return atomic_file(path, json.dumps(body, indent=2) + "\n")  # a new file: never writes through a link

    @property
    def config(self) -> BltConfig:
        return BltConfig.from_dict(self.model, f"{self.root / MANIFEST}: model")

    def entry(self, key: str) -> GraphEntry:
        if key not in self.graphs:
            raise BundleError(f"{self.root}: the manifest has no graph {key!r} (graphs: {sorted(self.graphs)}); "
                              f"{REBUILD_HINT}")
        return self.graphs[key]

    def spec(self, key: str) -> GraphSpec:
        """The I/O spec of a graph file (names, dtypes, symbolic dims), from the model config."""
        return self.entry(key).spec(self.config)

    def standard_keys(self) -> list[str]:
        """Keys of the portable-layout graphs (the ones TensorRT engines and Polygraphy cover)."""
        return [k for k, e in self.graphs.items() if e.is_standard]

    def has_file(self, key: str, precision: str) -> bool:
        return key in self.graphs and precision in self.graphs[key].files

    def file_entry(self, key: str, precision: str) -> GraphFile:
        files = self.entry(key).files
        if precision not in files:
            raise BundleError(f"{self.root}: graph {key!r} has no {precision} file (precisions: {sorted(files)}); "
                              f"rebuild with `blt-export build --precision {precision}`")
        return files[precision]

    def graph_file(self, key: str, precision: str = "fp32", verify: bool | str = True) -> Path:
        """Path of a graph's ONNX file, after checking it and its external-data files against the manifest
        (`verify`: True/"auto" = sha256 up to VERIFY_HASH_MAX bytes, size above; "full"; "size"; False)."""
        entry = self.file_entry(key, precision)
        where = f"{self.root / MANIFEST}: graphs.{key}.files.{precision}"
        for f in entry.all_files:
            self.verify_file(f, where, "auto" if verify is True else verify)
        return resolve_inside(self.root, entry.path, where)

    def verify_file(self, f: DataFile, where: str, mode: str | bool = "auto") -> Path:
        """One listed file: inside the bundle, present, of its recorded size, and (by `mode`) of its sha256."""
        path = resolve_inside(self.root, f.path, where)
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle (listed in {MANIFEST}); rebuild the bundle")
        if mode is False:
            return path
        if mode not in VERIFY_MODES:
            raise ValueError(f"verify mode {mode!r}; valid modes are {list(VERIFY_MODES)}")
        size = path.stat().st_size
        if f.bytes >= 0 and size != f.bytes:
            raise BundleError(f"{path}: {size} bytes, {MANIFEST} lists {f.bytes} (the file was truncated or "
                              "replaced); rebuild the bundle")
        if mode == "full" or (mode == "auto" and size <= VERIFY_HASH_MAX):
            if sha256_file(path) != f.sha256:
                raise BundleError(f"{path}: sha256 does not match {MANIFEST} (the file was altered or truncated); "
                                  "rebuild the bundle")
        return path

    def listed_files(self) -> list[tuple[str, DataFile]]:
        """(where, file) for every file the manifest lists: graphs with their data, the hash table, engines."""
        out = []
        for key, entry in self.graphs.items():
            for precision, gf in entry.files.items():
                out += [(f"graphs.{key}.files.{precision}", f) for f in gf.all_files]
        if self.hash_table is not None:
            out += [("hash_table", f) for f in self.hash_table.files]
        out += [(f"engines[{i}]", DataFile(e.path, e.sha256, -1)) for i, e in enumerate(self.engines) if e.sha256]
        return out

    def verify_all(self, progress=None) -> int:
        """sha256 of every listed file (`blt-export check`), a file several graphs share once; returns the bytes
        hashed."""
        total, seen = 0, set()
        for where, f in self.listed_files():
            if (f.path, f.sha256) in seen:
                continue
            seen.add((f.path, f.sha256))
            path = self.verify_file(f, f"{self.root / MANIFEST}: {where}", "full")
            total += path.stat().st_size
            if progress is not None:
                progress(f.path)
        return total

    def open_hash_table(self, verify: str | bool = "auto"):
        """The bundle's hash n-gram tables, memory-mapped (runtime/hash_table.py)."""
        from fastblt.runtime.hash_table import HashTable, TableLayout

        if self.hash_table is None:
            raise BundleError(f"{self.root / MANIFEST}: field 'hash_table' is missing; {REBUILD_HINT}")
        t, where = self.hash_table, f"{self.root / MANIFEST}: hash_table"
        paths = [self.verify_file(f, where, verify) for f in t.files]
        cfg = self.config
        if (t.rows, t.dim) != (cfg.n_hash_tables * cfg.hash_vocab, cfg.encoder.dim):
            raise BundleError(f"{where}: a {t.rows}×{t.dim} table does not match the model's "
                              f"{cfg.n_hash_tables * cfg.hash_vocab}×{cfg.encoder.dim}; {REBUILD_HINT}")
        return HashTable.open(paths[0], TableLayout(t.rows, t.dim, t.dtype), paths[1] if len(paths) > 1 else None)


def write_manifest(root: Path, data: dict[str, Any]) -> Path:
    """Write a manifest body (a dict, as a build assembles it) after checking it against the schema."""
    return Manifest.from_dict(root, data, f"{Path(root) / MANIFEST} (being written)").write()
