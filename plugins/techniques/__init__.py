"""slimkit.plugins.techniques: one package per technique.

``<name>/__init__.py`` holds the technique's ``Config``, its ``Technique`` subclass (framework-neutral:
``apply`` dispatches on the adapter's name) and its ``slimkit_register_techniques`` hook;
``torch_backend.py`` / ``onnx_backend.py`` implement it for one framework each. Techniques for one
framework only keep everything in ``__init__.py`` (``channel_prune`` and ``sparse`` split theirs by
topic). Techniques import the frameworks' toolkits (``slimkit.plugins.torch.training``,
``slimkit.plugins.onnx.graph``, ...); adapters and toolkits import no technique.
"""
