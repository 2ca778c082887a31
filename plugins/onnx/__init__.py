"""slimkit.plugins.onnx: ONNX files as first-class models (adapter, inspection, graph techniques)."""
