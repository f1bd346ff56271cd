"""fastblt.graphs.training — how the shipped BLT-D model is made: corpora, the BLT-D objective (masks, noise,
greedy-continuation targets), the training loop and its resumable state, held-out evaluation, the patcher's θ
search and the staged pipeline (`blt-export train`, `train-decoder`).

Needs torch except `data` (corpora and windows), which export and benchmarks read without it.
"""
