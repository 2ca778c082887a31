"""slimkit.plugins.torch: the torch adapter and the torch toolkit techniques share (``training``: running
models, fine-tuning and distillation after pruning; ``train``: the training loop and the bundled models'
recipe; ``batchnorm``, ``zoo``, ``mlp``)."""
