"""`blt-bench`: graph latency, decode speed, quality, the HF anchor and the paper's table, as Markdown + one JSON
+ PNG plots per run (`OUT/NAME.json`, `OUT/NAME.md`, `OUT/NAME/*.png`); `blt-bench report` re-renders a run."""

from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path

import click

from fastblt.benchmarks.common import BenchError, Target, machine, parse_settings
from fastblt.graphs.atomic import atomic_file
from fastblt.runtime.backends import BACKENDS

DEFAULT_OUT = "blt-bench-results"


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise BenchError(f"--{name} {text!r}: give comma-separated positive integers, e.g. 128,1024,2048")
    return values


def targets(bundle, checkpoint, backend, precision, device, layout, fallback: tuple[str, ...]) -> list[Target]:
    """One target per precision × layout; `auto` precisions: those of `fallback` the bundle has (else all)."""
    if bundle and checkpoint:
        raise BenchError("pass either --bundle (ort/trt) or --checkpoint (torch), not both")
    backend = backend or ("ort" if bundle else "torch")
    if backend == "torch":
        return [Target(checkpoint, "torch")]
    if not bundle:
        raise BenchError(f"backend {backend!r} runs a bundle: pass --bundle DIR (build one with "
                         "`blt-export build --out DIR`)")
    from fastblt.runtime.manifest import Manifest

    have = list(Manifest.load(bundle).precisions)
    if precision in ("auto", "all"):
        chosen = [p for p in fallback if p in have] if precision == "auto" else []
        chosen = chosen or have
    else:
        chosen = [p.strip() for p in precision.split(",") if p.strip()]
        missing = [p for p in chosen if p not in have]
        if missing:
            raise BenchError(f"{bundle}: no {missing} graphs (it has {have}); rebuild with "
                             f"`blt-export build --precision {','.join(chosen)}`")
    layouts = [x.strip() for x in layout.split(",")] if backend == "ort" else ["auto"]
    return [Target(str(bundle), backend, p, device, lay) for p in chosen for lay in layouts]


def finish(name: str, sections: dict, out: str, quiet: bool, note: str | None = None) -> Path:
    """Write OUT/NAME.json, then the Markdown and plots rendered from it."""
    from fastblt.benchmarks import report

    out_dir = Path(out)
    path = out_dir / f"{name}.json"
    data = {"format": report.FORMAT, "version": 1, "machine": MACHINE or machine(),
            "command": "blt-bench " + shlex.join(sys.argv[1:]), "results_file": path.name, "sections": sections}
    if note:
        data["note"] = note
    atomic_file(path, json.dumps(data, indent=1, default=str) + "\n")
    report.write(data, out_dir / f"{name}.md", quiet)
    click.echo(f"wrote {path}, {out_dir / name}.md and {out_dir / name}/*.png", err=True)
    return path


MACHINE: dict | None = None  # taken at the start of a run, before the benchmark loads the machine


def errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global MACHINE
        MACHINE = machine()
        try:
            return fn(*args, **kwargs)
        except (BenchError, ValueError, FileNotFoundError, ImportError) as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def source_options(fn):
    for opt in reversed([
        click.option("--bundle", type=click.Path(), help="Bundle from `blt-export build` (ort/trt backends)."),
        click.option("--checkpoint", type=click.Path(), help="Checkpoint directory (torch; default: bundled model)."),
        click.option("--backend", type=click.Choice(BACKENDS), default=None, help="Default: ort with --bundle."),
        click.option("--precision", default="auto", show_default=True,
                     help="Comma-separated bundle precisions; auto: fp32 and int8-dynamic where present."),
        click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
                     help="ONNX Runtime execution provider."),
        click.option("--out", default=DEFAULT_OUT, show_default=True, help="Folder for NAME.json/.md and plots."),
        click.option("--quiet", is_flag=True, help="No progress bars, no Markdown on stdout."),
    ]):
        fn = opt(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmark a BLT bundle or checkpoint: latency, throughput and quality per mode × precision × backend."""


@main.command("graphs")
@source_options
@click.option("--layout", default="fused,standard", show_default=True, help="ORT graph layouts to time.")
@click.option("--contexts", default="128,1024,2048", show_default=True)
@click.option("--calls", type=int, default=200, show_default=True, help="Decode calls timed per context.")
@errors
def graphs_cmd(bundle, checkpoint, backend, precision, device, out, quiet, layout, contexts, calls):
    """Milliseconds per call of every graph at several context lengths, against the memory bound."""
    from fastblt.benchmarks import graphs

    ts = _graph_targets(bundle, checkpoint, backend, precision, device, layout)
    cfg = graphs.GraphsConfig(_ints(contexts, "contexts"), max(calls, 8))
    finish("graphs", {"graphs": graphs.run(ts, cfg, quiet)}, out, quiet)


def _graph_targets(bundle, checkpoint, backend, precision, device, layout) -> list[Target]:
    from fastblt.graphs.constants import fused_key
    from fastblt.runtime.manifest import Manifest

    ts = targets(bundle, checkpoint, backend, precision, device, layout, ("fp32", "int8-dynamic"))
    if not bundle:
        return ts
    m = Manifest.load(bundle)
    return [t for t in ts if t.layout != "fused" or (t.device == "cpu" and m.has_file(fused_key("global"),
                                                                                      t.precision))]


@main.command("decode")
@source_options
@click.option("--layout", default="auto", show_default=True, help="ORT graph layouts (comma-separated).")
@click.option("--modes", default=None, help="Mode settings, e.g. ar,blts/k=16,bltd/B=8/alpha=0.7 (default: 12).")
@click.option("--contexts", default="128,1024,2048", show_default=True)
@click.option("--prompts", type=int, default=3, show_default=True)
@click.option("--repeats", type=int, default=2, show_default=True)
@click.option("--new-bytes", type=int, default=128, show_default=True)
@errors
def decode_cmd(bundle, checkpoint, backend, precision, device, out, quiet, layout, modes, contexts, prompts, repeats,
               new_bytes):
    """Bytes/s, latency, TTFB and the paper's counters per mode setting (interleaved, held-out prompts)."""
    from fastblt.benchmarks import decode

    cfg = decode.DecodeConfig(tuple(parse_settings(modes or decode.DEFAULT_SETTINGS)), _ints(contexts, "contexts"),
                              max(prompts, 1), max(repeats, 1), max(new_bytes, 1))
    ts = targets(bundle, checkpoint, backend, precision, device, layout, ("fp32", "int8-dynamic"))
    finish("decode", {"decode": decode.run(ts, cfg, quiet)}, out, quiet)


def _quality_cfg(modes, lines, bpb_windows, humaneval, humaneval_modes):
    from fastblt.benchmarks import decode, quality

    return quality.QualityConfig(tuple(parse_settings(modes or decode.DEFAULT_SETTINGS)), max(bpb_windows, 1),
                                 lines=max(lines, 1), humaneval=max(humaneval, 0),
                                 humaneval_settings=tuple(parse_settings(humaneval_modes)))


@main.command("quality")
@source_options
@click.option("--modes", default=None, help="Mode settings for line completion (default: as decode).")
@click.option("--lines", type=int, default=40, show_default=True, help="Held-out lines to complete per mode.")
@click.option("--bpb-windows", type=int, default=32, show_default=True, help="Held-out 256-byte windows.")
@click.option("--humaneval", type=int, default=164, show_default=True, help="HumanEval problems (0: skip).")
@click.option("--humaneval-modes", default="ar,bltd/B=8/alpha=0.7", show_default=True)
@errors
def quality_cmd(bundle, checkpoint, backend, precision, device, out, quiet, modes, lines, bpb_windows, humaneval,
                humaneval_modes):
    """Held-out bits/byte per precision; line completion per mode; HumanEval pass@1."""
    from fastblt.benchmarks import quality

    ts = targets(bundle, checkpoint, backend, "all" if precision == "auto" else precision, device, "auto", ())
    cfg = _quality_cfg(modes, lines, bpb_windows, humaneval, humaneval_modes)
    finish("quality", {"quality": quality.run(ts, cfg, quiet)}, out, quiet)


@main.command("paper")
@source_options
@click.option("--modes", default=None, help="Mode settings (default: as decode).")
@click.option("--task", type=click.Choice(["HumanEval", "MBPP", "FR-EN", "DE-EN"]), default="HumanEval",
              show_default=True, help="Which of the paper's tables to compare against.")
@click.option("--prompts", type=int, default=2, show_default=True)
@click.option("--new-bytes", type=int, default=512, show_default=True, help="The paper's L.")
@errors
def paper_cmd(bundle, checkpoint, backend, precision, device, out, quiet, modes, task, prompts, new_bytes):
    """The paper's Eq. 8 from its tables, next to this model's N_enc/N_dec per byte, acceptance, steps/block."""
    from fastblt.benchmarks import decode, paper

    t = targets(bundle, checkpoint, backend, "fp32" if precision == "auto" and bundle else precision, device, "auto",
                ("fp32",))[0]
    cfg = paper.PaperConfig(tuple(parse_settings(modes or decode.DEFAULT_SETTINGS)), task, max(prompts, 1),
                            max(new_bytes, 1))
    finish("paper", {"paper": paper.run(t, cfg, quiet)}, out, quiet)


@main.command("anchor")
@click.option("--weights", default="trained", show_default=True, help="trained, random, or an HF BLT directory.")
@click.option("--context", type=int, default=1024, show_default=True)
@click.option("--new-bytes", type=int, default=64, show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--draft-k", default="8,16", show_default=True, help="BLT-S draft windows.")
@click.option("--precision", default="fp32,int8,int8-dynamic", show_default=True, help="Bundle precisions to build.")
@click.option("--threads", type=int, default=2, show_default=True, help="torch threads (HF and fastblt torch).")
@click.option("--fused/--no-fused", default=True, show_default=True, help="Also build and time the fused CPU layout.")
@click.option("--out", default=DEFAULT_OUT, show_default=True)
@click.option("--quiet", is_flag=True)
@errors
def anchor_cmd(weights, context, new_bytes, repeats, rounds, draft_k, precision, threads, fused, out, quiet):
    """HF transformers `generate` against fastblt on the same weights (identical greedy bytes checked)."""
    finish("anchor", {"anchor": _anchor(weights, context, new_bytes, repeats, rounds, draft_k, precision, threads,
                                        out, quiet, fused)}, out, quiet)


def _anchor(weights, context, new_bytes, repeats, rounds, draft_k, precision, threads, out, quiet,
            fused: bool = True) -> dict:
    from fastblt.benchmarks import anchor

    ks = _ints(draft_k, "draft-k")
    if max(ks) > 64:
        raise BenchError(f"--draft-k {draft_k!r}: draft windows lie in [1, 64]")
    precisions = tuple(p.strip() for p in precision.split(",") if p.strip())
    if "fp32" not in precisions:
        raise BenchError("--precision must include fp32 (the anchor compares the same weights)")
    cfg = anchor.AnchorConfig(weights, context, new_bytes, max(repeats, 1), threads, ks, max(rounds, 1), precisions,
                              fused)
    return anchor.run(cfg, Path(out) / "anchor-work", quiet)


@main.command("scale")
@click.option("--work", default=".cache/scale", show_default=True, type=click.Path(),
              help="Where the checkpoint, bundle and logs go (about 30 GB for blt-1b; never in git).")
@click.option("--preset", type=click.Choice(["blt-1b", "blt-7b", "tiny"]), default="blt-1b", show_default=True)
@click.option("--precision", "precisions", default="fp32,int8-dynamic,int4", show_default=True,
              help="CPU precisions to build (or add) and measure.")
@click.option("--new-bytes", type=int, default=32, show_default=True)
@click.option("--small-bundle", type=click.Path(), default=None,
              help="A bundle of the trained default model, whose call counts feed the projection (default: built "
                   "into WORK/default-bundle).")
@errors
def scale_cmd(work, preset, precisions, new_bytes, small_bundle):
    """A public BLT shape (random init) through init, inspect, build, check and generation in every mode, each
    stage under /usr/bin/time -v (what `make scale-check` runs; docs/scale.md quotes its JSON)."""
    from fastblt.benchmarks.scale import render, run_scale

    results = run_scale(Path(work), preset, precisions, new_bytes, log=click.echo,
                        small=Path(small_bundle) if small_bundle else None)
    click.echo(render(results))
    click.echo(f"results: {Path(work) / 'scale.json'}; docs/scale.md quotes a copy in docs/benchmarks/ through "
               "`blt-bench readme --readme docs/scale.md`", err=True)


@main.command("precision")
@click.option("--bundle", required=True, type=click.Path(), help="Bundle with fp32 and the precisions to compare "
              "(e.g. `blt-export build --precision fp32,fp16,bf16,int8-dynamic,int4`).")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="The checkpoint the bundle was built from, for the torch bf16 row (default: the bundled model).")
@click.option("--windows", type=int, default=200, show_default=True, help="Held-out 256-byte windows.")
@click.option("--prompts", type=int, default=8, show_default=True, help="Prompts for greedy BLT-S/BLT-DV vs AR.")
@click.option("--new-bytes", type=int, default=64, show_default=True)
@click.option("--int4-blocks", default="32,64,128", show_default=True, help="MatMulNBits block sizes to compare.")
@click.option("--ablations/--no-ablations", default=True, show_default=True,
              help="Also measure fp16 without each fp32 island and int4 at each block size.")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="Folder for precision.json and precision.md.")
@errors
def precision_cmd(bundle, checkpoint, windows, prompts, new_bytes, int4_blocks, ablations, out):
    """Quality, size and speed of every precision of a bundle, side by side, and the measured choices behind fp16's
    fp32 islands and int4's block size (docs/scale.md quotes it)."""
    from fastblt.benchmarks.common import machine_line
    from fastblt.benchmarks.precision import markdown, run_precision

    results = run_precision(bundle, checkpoint, windows, prompts, new_bytes, _ints(int4_blocks, "int4-blocks"),
                            ablations, log=lambda m: click.echo(m, err=True))
    data = {"machine": MACHINE or machine(), "command": "blt-bench " + shlex.join(sys.argv[1:]), "results": results}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_file(out_dir / "precision.json", json.dumps(data, indent=1, default=str) + "\n")
    text = markdown(results, machine_line(data["machine"]))
    atomic_file(out_dir / "precision.md", text)
    click.echo(text)


@main.command("all")
@source_options
@click.option("--anchor/--no-anchor", "with_anchor", default=True, show_default=True,
              help="Include the HF anchor (needs torch + transformers).")
@click.option("--fast", is_flag=True, help="Smaller settings (fewer prompts, calls and lines) for a quick look.")
@errors
def all_cmd(bundle, checkpoint, backend, precision, device, out, quiet, with_anchor, fast):
    """The default set (what `make bench` runs): graphs, decode, quality, paper and anchor in one record."""
    from fastblt.benchmarks import decode, graphs, paper, quality

    settings = tuple(parse_settings(decode.DEFAULT_SETTINGS))
    ts = targets(bundle, checkpoint, backend, precision, device, "auto", ("fp32", "int8-dynamic"))
    sections = {}
    gcfg = graphs.GraphsConfig((128, 1024, 2048), 60 if fast else 200)
    sections["graphs"] = graphs.run(_graph_targets(bundle, checkpoint, backend, precision, device, "fused,standard")
                                    if bundle else ts, gcfg, quiet)
    sections["decode"] = decode.run(ts, decode.DecodeConfig(settings, prompts=2 if fast else 3,
                                                            repeats=1 if fast else 2), quiet)
    qts = targets(bundle, checkpoint, backend, "all", device, "auto", ())  # bits/byte of every precision: cheap
    qcfg = _quality_cfg(None, 16 if fast else 40, 8 if fast else 32, 20 if fast else 164, "ar,bltd/B=8/alpha=0.7")
    sections["quality"] = quality.run(qts, qcfg, quiet)
    sections["paper"] = paper.run(ts[0], paper.PaperConfig(settings, prompts=1 if fast else 2), quiet)
    if with_anchor:
        sections["anchor"] = _anchor("trained", 1024, 64, 3 if fast else 5, 2 if fast else 3, "8,16",
                                     "fp32,int8-dynamic", 2, out, quiet)
    finish("bench", sections, out, quiet)


@main.command("readme")
@click.option("--readme", "path", type=click.Path(), default="README.md", show_default=True,
              help="The Markdown file whose generated regions to fill.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when a region differs from its results file.")
def readme_cmd(path, check):
    """Fill README.md's generated regions (measured numbers) from their results files (benchmarks/readme.py)."""
    from fastblt.benchmarks import readme

    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
        filled = readme.fill(text)
    except (BenchError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    names = ", ".join(name for name, *_ in readme.regions(text))
    if check:
        if filled != text:
            raise click.ClickException(f"{target}: generated regions ({names}) differ from their results files; "
                                       "run `blt-bench readme` and commit the result")
        click.echo(f"{target}: generated regions up to date ({names})")
        return
    if filled != text:
        atomic_file(target, filled)
    click.echo(f"{target}: {'rewrote' if filled != text else 'unchanged,'} generated regions ({names})")


@main.command("bundle-quality")
@click.option("--bundle", required=True, type=click.Path(), help="A bundle from `blt-export build`.")
@click.option("--command", "build_command", required=True,
              help="The command that built it (quoted in the README), e.g. 'blt-export build --out B'.")
@click.option("--out", type=click.Path(), default="docs/benchmarks/default-bundle.json", show_default=True)
def bundle_quality_cmd(bundle, build_command, out):
    """Record a bundle's held-out quality per precision (its manifest) with the machine and commit, as the
    results file of the README's bundle-quality region."""
    from fastblt.benchmarks import readme

    try:
        data = readme.bundle_quality_record(Path(bundle), build_command, machine())
    except (BenchError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    atomic_file(Path(out), json.dumps(data, indent=1) + "\n")
    click.echo(f"wrote {out}")


@main.command("report")
@click.argument("results", type=click.Path(), nargs=-1, required=True)
@click.option("--md", type=click.Path(), default=None,
              help="Markdown to write (default: next to RESULTS); plots go to a folder of the same name.")
@click.option("--note", default=None, help="A line to print under the machine (e.g. why settings were reduced).")
@click.option("--quiet", is_flag=True)
def report_cmd(results, md, note, quiet):
    """Render saved RESULTS.json files again as Markdown + plots (e.g. --md docs/benchmarks.md); several files
    (one per subcommand run) are merged into one report."""
    from fastblt.benchmarks import report

    try:
        data = report.merge([report.load(Path(r)) for r in results])
        if note:
            data["note"] = note
        path = report.write(data, Path(md) if md else Path(results[0]).with_suffix(".md"), quiet)
    except (BenchError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path} and {path.with_suffix('')}/*.png", err=True)


if __name__ == "__main__":
    sys.exit(main())
