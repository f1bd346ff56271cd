"""What bounds BLT-D's speed on this machine: the exact commit each block pays, whatever the decoder's steps.

A BLT-D block costs one commit (patcher and encoder over its bytes, one global call, its decoder rows) plus s
diffusion steps (encoder in scratch + `decoder_block`). From the graph-call counters of greedy runs on held-out
prompts this splits the measured time into the two, and prints the speedup over AR that s steps per block
would give: at s = 0 it is the ceiling no decoder can pass.

    python -m fastblt.benchmarks.commit_floor --bundle BUNDLE [--precision fp32] [--prompts 8] [--context 1024]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from fastblt.benchmarks.common import heldout_prompts, machine, machine_line


@dataclass(frozen=True)
class BlockCost:
    bytes_per_block: float
    commit_ms: float  # graph time of one block's commit
    step_ms: float  # graph time of one diffusion step
    outside: float  # share of decode time outside graph calls
    steps: float  # measured steps per block

    def speedup(self, ar_ms_per_byte: float, steps: float) -> float:
        """Speedup over AR at `steps` diffusion steps per block, host share as measured."""
        ms = (self.commit_ms + steps * self.step_ms) / (1.0 - self.outside)
        return ar_ms_per_byte / (ms / self.bytes_per_block)


def block_cost(ms: dict, calls: dict, blocks: int, steps: int, seconds: float, new_bytes: int) -> BlockCost:
    """Split BLT-D's graph time: per block patcher, global, decoder_step (commit rows run on their own) and one
    encoder call; the other encoder calls and every decoder_block call are diffusion steps."""
    encoder_call = ms["encoder"] / calls["encoder"]
    commit = ms["patcher"] + ms["global"] + ms.get("decoder_step", 0.0) + encoder_call * blocks
    step = ms["decoder_block"] + ms["encoder"] - encoder_call * blocks
    return BlockCost(new_bytes / blocks, commit / blocks, step / steps, 1.0 - sum(ms.values()) / 1000 / seconds,
                     steps / blocks)


def _run(gen, prompts, mode: str, **options) -> tuple[dict, dict, int, float, list]:
    ms: dict = {}
    calls: dict = {}
    nbytes, seconds, steps = 0, 0.0, []
    for p in prompts:
        r = gen.generate(p, mode=mode, max_new_bytes=256, **options)
        for g, v in r.counters["decode_graph_ms"].items():
            ms[g] = ms.get(g, 0.0) + v
        for g, v in r.counters["decode_graph_calls"].items():
            calls[g] = calls.get(g, 0) + v
        nbytes += len(r.bytes)
        seconds += r.seconds - r.prefill_seconds
        steps += r.counters.get("steps_per_block", [])
    return ms, calls, nbytes, seconds, steps


def main(argv: list[str] | None = None) -> None:
    from fastblt.runtime import load

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--context", type=int, default=1024)
    args = ap.parse_args(argv)
    gen = load(args.bundle, backend="ort", precision=args.precision)
    prompts = heldout_prompts(args.prompts, args.context)
    gen.generate(prompts[0], mode="ar", max_new_bytes=16)  # warm-up
    print(machine_line(machine()))
    _, _, nbytes, seconds, _ = _run(gen, prompts, "ar")
    ar = seconds * 1000 / nbytes
    print(f"AR: {nbytes / seconds:.0f} B/s ({ar:.3f} ms per byte); {args.prompts} held-out prompts of "
          f"{args.context} bytes, 256 new bytes each, greedy, ORT {args.precision}")
    for size in (8, 16):
        ms, calls, nbytes, seconds, steps = _run(gen, prompts, "bltd", block_size=size)
        cost = block_cost(ms, calls, len(steps), sum(steps), seconds, nbytes)
        at = ", ".join(f"s={s:g}: {cost.speedup(ar, s):.2f}×" for s in (0, 1, 1.66, 2.8, round(cost.steps, 2)))
        print(f"BLT-D B={size}: {cost.bytes_per_block:.2f} new bytes per block, commit {cost.commit_ms:.2f} ms, "
              f"step {cost.step_ms:.2f} ms, {cost.steps:.2f} steps per block measured, outside graph calls "
              f"{cost.outside:.0%}; speedup over AR at s steps per block: {at}")
    gen.close()


if __name__ == "__main__":
    main()
