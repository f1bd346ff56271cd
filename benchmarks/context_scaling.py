"""Bytes/s and graph calls per byte at 128 B and at 2 KB of context, side by side, per mode.

Incremental decoding makes the cost per byte independent of the context (the caches are window-bounded):
the ratio column should stay near 1.

    .venv/bin/python benchmarks/context_scaling.py [--bundle DIR | --checkpoint DIR] [--new-bytes 128]
"""

from __future__ import annotations

import argparse

from common import heldout_text, machine, write

import fastblt.runtime as rt
from fastblt.runtime.unmask import UnmaskConfig

MODES = [("ar", {}), ("blts", {"draft_k": 8}), ("bltd", {"block_size": 8}),
         ("bltdv", {"block_size": 8, "unmask": UnmaskConfig("one_step")})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--bundle")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--new-bytes", type=int, default=128)
    ap.add_argument("--contexts", default="128,2048")
    args = ap.parse_args()
    backend = "ort" if args.bundle else "torch"
    gen = rt.load(args.bundle or args.checkpoint, backend=backend,
                  **({"precision": args.precision} if args.bundle else {}))
    contexts = [int(c) for c in args.contexts.split(",")]
    text = heldout_text(max(contexts) + 64)
    rows, data = [], {"machine": machine(), "backend": backend, "new_bytes": args.new_bytes, "results": []}
    for mode, kw in MODES:
        if mode in ("bltd", "bltdv") and not gen.config.diffusion_trained:
            continue
        line = []
        for ctx in contexts:
            gen.generate(text[:ctx], mode=mode, max_new_bytes=8, **kw)  # warm-up
            r = gen.generate(text[:ctx], mode=mode, max_new_bytes=args.new_bytes, **kw)
            calls = sum(r.counters["decode_graph_calls"].values())
            line.append((r.bytes_per_s, calls / max(len(r.bytes), 1)))
            data["results"].append({"mode": mode, "context": ctx, "bytes_per_s": r.bytes_per_s,
                                    "new_bytes": len(r.bytes), "decode_graph_calls": r.counters["decode_graph_calls"]})
        rows.append((mode, line))
    head = " | ".join(f"B/s @ {c} B | calls/byte @ {c} B" for c in contexts)
    table = [f"backend: {backend}", "", f"| mode | {head} | speed ratio {contexts[-1]}/{contexts[0]} |",
             "|---" * (2 * len(contexts) + 2) + "|"]
    for mode, line in rows:
        cells = " | ".join(f"{bps:.1f} | {cpb:.2f}" for bps, cpb in line)
        table.append(f"| {mode} | {cells} | {line[-1][0] / line[0][0]:.2f} |")
    write(f"context_scaling_{backend}", data, "\n".join(table))


if __name__ == "__main__":
    main()
