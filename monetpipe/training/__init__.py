"""Stage 2: train MoNet and the U-Net baselines on the cached slices (``monet_train``).

Library use::

    from monetpipe.training import TrainConfig, train_fold
    train_fold("Task04", "monet", fold=0, config=TrainConfig(epochs=20))

The recipe, every setting and the run folder are described in docs/training.md. The names below
are imported on first use, so ``monet_train --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "monetpipe.training.config",
    "FoldResult": "monetpipe.training.api",
    "plan_fold": "monetpipe.training.api",
    "train_fold": "monetpipe.training.api",
    "train_models": "monetpipe.training.api",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'monetpipe.training' has no attribute {name!r}")
