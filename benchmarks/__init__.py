"""fastblt.benchmarks — `blt-bench`: graph latency, decode speed, quality, the HF anchor and the paper's table.

Imports nothing heavy at package import; torch, transformers and matplotlib load inside the subcommands that
need them."""
