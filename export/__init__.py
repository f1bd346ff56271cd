"""fastblt.export — how a checkpoint becomes ONNX graphs, quantized variants, TensorRT engines and a bundle
manifest (`blt-export`). Needs the [export] extra; TensorRT parts are imported lazily."""
