"""The incremental graphs: one nn.Module per exported graph, whose forward signature is the ONNX I/O."""

from __future__ import annotations

from fastblt.graphs.incremental.decoder_block import DecoderBlockGraph
from fastblt.graphs.incremental.decoder_step import DecoderStepGraph
from fastblt.graphs.incremental.encoder import EncoderGraph
from fastblt.graphs.incremental.global_step import GlobalGraph
from fastblt.graphs.incremental.patcher import PatcherGraph


def build_graphs(model) -> dict:
    """Graph name → module, all sharing `model`'s weights."""
    return {
        "patcher": PatcherGraph(model),
        "encoder": EncoderGraph(model),
        "global": GlobalGraph(model),
        "decoder_step": DecoderStepGraph(model),
        "decoder_block": DecoderBlockGraph(model),
    }


__all__ = ["build_graphs", "PatcherGraph", "EncoderGraph", "GlobalGraph", "DecoderStepGraph", "DecoderBlockGraph"]
