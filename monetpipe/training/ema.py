"""An exponential moving average of the weights (``monet_train --ema DECAY``).

The average is :class:`torch.optim.swa_utils.AveragedModel` over the parameters and the buffers (so the
BatchNorm running statistics are averaged with the weights they belong to), updated after every
optimizer step. Its decay ramps up with the number of updates ``n`` as ``min(decay, (1 + n) / (10 + n))``
(TensorFlow's ``num_updates`` warm-up): a plain 0.999 would keep 87 % of the random initial weights after
a first epoch of 141 steps, and the inner validation, the best checkpoint and a ``plateau`` schedule all
look at the average. With the ramp the average spans roughly the last tenth of the steps taken, up to
``1 / (1 - decay)`` steps.

In a run with ``--ema`` the average is the model: the inner validation, ``checkpoint_best``, the final
validation, ``monet_predict`` and the prepared precisions all use it, and the checkpoints hold it as
``model_state``; the weights the optimizer trains travel beside it as ``training_model_state`` (with
``ema``: the decay and the number of updates), so ``--continue`` resumes both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

WARMUP_OFFSET = 10  # the ramp (1 + n) / (10 + n): 0.5 after 8 updates, 0.99 after 890, 0.999 after 8,990


def ema_decay(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (0-based): the ramp, capped at ``decay``."""
    return min(decay, (1 + updates) / (WARMUP_OFFSET + updates))


def _average_with_ramp(decay: float):
    """``AveragedModel``'s ``multi_avg_fn``: lerp every floating tensor towards the model's; integer buffers
    (BatchNorm's ``num_batches_tracked``) follow the model."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        weight = 1.0 - ema_decay(decay, int(num_averaged) - 1)  # n_averaged counts the first (copying) update
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, weight)
            else:
                a.copy_(c)

    return update


def build_ema(net: nn.Module, decay: float) -> AveragedModel:
    """An average of ``net`` (the bare network, not a DistributedDataParallel wrapper), in eval mode; its first
    :meth:`~torch.optim.swa_utils.AveragedModel.update_parameters` copies ``net``."""
    ema = AveragedModel(net, multi_avg_fn=_average_with_ramp(decay), use_buffers=True)
    ema.eval()
    return ema


def ema_record(ema: AveragedModel, decay: float) -> dict:
    """The checkpoint's ``ema`` entry (the averaged weights themselves are its ``model_state``)."""
    return {"decay": float(decay), "updates": int(ema.n_averaged)}


def restore_ema(ema: AveragedModel, model_state: dict, record: dict) -> None:
    """Load a checkpoint's average (``model_state``) and its number of updates into ``ema``."""
    ema.module.load_state_dict(model_state)
    ema.n_averaged.fill_(int(record["updates"]))
