"""edgekit.converters: canonicalize, quantize, prune, export (ONNX, TFLite, Core ML, TVM) and validate."""
