"""BatchNorm statistics after a layer swap: re-estimate running mean and variance on data."""

from __future__ import annotations

from typing import Any


def recalibrate_batchnorm(model: Any, split: Any, batch_size: int = 256) -> int:
    """Re-estimate the running mean and variance of every BatchNorm layer on ``split`` (no training).

    Returns the number of BatchNorm layers updated. Other layers and all weights are unchanged.
    """
    import torch
    from torch import nn

    from .training import run

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    try:
        with torch.no_grad():
            for inputs, _ in split.batches(batch_size):
                run(model, inputs)
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    return len(bns)
