"""slimkit.plugins.onnx: ONNX files as first-class models (adapter, inspection, the graph helpers techniques use)."""
