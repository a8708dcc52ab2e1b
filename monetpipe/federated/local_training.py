"""One site's part of one round: ``monet_train``'s data, augmentation, loss and step, from the global weights.

Composed from the training package's public pieces (:class:`~monetpipe.training.data.SliceIndex`,
:class:`~monetpipe.training.data.SliceBatchLoader`, :func:`~monetpipe.training.augmentation.training_transforms`,
:func:`~monetpipe.training.losses.build_loss`, :func:`~monetpipe.training.trainer.train_epoch`), so a site
trains exactly as ``monet_train`` does, only for a few steps. Nothing here knows about Flower.

Each round starts a fresh NAdam at the run's learning rate (the optimizer state never leaves the site and
is not kept between rounds). Batch ``b`` of a site is fixed by (run seed, site name, round, step), so a
resumed federation draws what the uninterrupted one would have.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from monetpipe.errors import MonetError
from monetpipe.preprocessing.plans import Plans
from monetpipe.preprocessing.slice_cache import CacheLayout
from monetpipe.training.config import TrainConfig, resolve_channels_last
from monetpipe.training.data import SliceBatchLoader, SliceIndex, derive_seed, iterations_per_epoch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteUpdate:
    """What a site sends back: the weight change, and numbers for the log."""

    delta: dict[str, torch.Tensor]  # local minus global, float32, floating tensors only
    train_loss: float
    num_slices: int
    steps: int
    seconds: float


def floating_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a federation exchanges: every floating parameter and buffer (BatchNorm running
    statistics included; integer counters such as ``num_batches_tracked`` stay local)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if v.is_floating_point()}


def load_floating_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (any floating dtype) into ``model``; every floating tensor must be present."""
    own = model.state_dict()
    missing = sorted(k for k, v in own.items() if v.is_floating_point() and k not in state)
    if missing:
        raise MonetError(
            f"the global model lacks {len(missing)} tensor(s) of this network ({', '.join(missing[:3])} ...); "
            f"server and site run different model versions. Install the same monetpipe on both."
        )
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))


class ProximalLoss(nn.Module):
    """FedProx's local objective: the training loss plus ``mu / 2 * ||w - w_global||^2`` over the
    trainable parameters (Li et al. 2020, eq. 2)."""

    def __init__(self, base: nn.Module, model: nn.Module, mu: float) -> None:
        super().__init__()
        self.base, self.mu = base, float(mu)
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._anchor = [p.detach().clone() for p in self._params]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.base(logits, target)
        if self.mu == 0:
            return loss
        prox = sum((p - a).pow(2).sum() for p, a in zip(self._params, self._anchor, strict=True))
        return loss + 0.5 * self.mu * prox


def site_seed(seed: int, site: str) -> int:
    """A site's own seed: its batches differ from every other site's, and are the same on every rerun."""
    return derive_seed(seed, zlib.crc32(site.encode()))


def local_steps(num_slices: int, batch_size: int, local_iters: int | None, local_epochs: int, cap: int) -> int:
    """Optimizer steps of one round: ``local_iters``, else ``local_epochs`` x one pass over the site's slices
    (``ceil(slices / batch)``, at most ``cap``: ``monet_train``'s epoch)."""
    if local_iters:
        return int(local_iters)
    return local_epochs * iterations_per_epoch(num_slices, batch_size, cap)


def _site_parts(
    model_name: str,
    plans: Plans,
    global_state: dict,
    train_config: TrainConfig,
    proximal_mu: float,
    device: torch.device,
):
    """The round's network (from the global weights), loss (FedProx's when ``proximal_mu`` > 0) and a fresh
    optimizer, as ``monet_train``'s training step takes them."""
    from monetpipe.networks import build_network, dropout_overrides
    from monetpipe.training.losses import build_loss
    from monetpipe.training.trainer import EarlyStopping, TrainingParts

    torch.manual_seed(train_config.seed)  # non-floating buffers as on the server
    net = build_network(
        model_name,
        plans.num_input_channels,
        plans.num_classes,
        **dropout_overrides(model_name, train_config.dropout),
    )
    load_floating_state(net, global_state)
    net.to(device)
    channels_last = resolve_channels_last(train_config.channels_last, device.type)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    loss: nn.Module = build_loss(train_config.loss)
    if proximal_mu > 0:
        loss = ProximalLoss(loss, net, proximal_mu)
    optimizer = torch.optim.NAdam(net.parameters(), lr=train_config.lr)
    return TrainingParts(
        net,
        loss,
        optimizer,
        torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer),  # unused: the lr is the server's
        torch.amp.GradScaler(device.type, enabled=False),
        EarlyStopping(1),
        device,
        False,
        channels_last,
    )


def train_site_round(
    *,
    layout: CacheLayout,
    plans: Plans,
    model_name: str,
    site: str,
    case_ids: list[str],
    global_state: dict[str, torch.Tensor],
    server_round: int,
    train_config: TrainConfig,
    local_iters: int | None,
    local_epochs: int,
    proximal_mu: float = 0.0,
    device: torch.device | None = None,
) -> SiteUpdate:
    """Train from ``global_state`` on this site's cases and return the weight change.

    Args:
        layout: this site's slice cache (its own ``MONET_preprocessed``).
        plans: the server's plans; every case must have been cached with them.
        model_name: registry name of the network.
        site: the site's name (seeds its batches).
        case_ids: this site's training cases.
        global_state: the round's global weights (floating tensors).
        server_round: 1-based round number.
        train_config: batch size, lr, loss, seed and augmentation as ``monet_train`` reads them.
        local_iters / local_epochs: how long to train (see :func:`local_steps`).
        proximal_mu: FedProx's mu; 0 is plain FedAvg.
        device: where to train (default CPU).

    Raises:
        MonetError: a case is not in this site's cache, or was cached with other plans.
    """
    from monetpipe.training.augmentation import batch_stream, training_transforms
    from monetpipe.training.checkpoint import unwrap
    from monetpipe.training.trainer import train_epoch

    start = time.perf_counter()
    device = device or torch.device("cpu")
    index = SliceIndex.build(layout, case_ids, plans)
    batch = train_config.batch_size or plans.batch_size
    steps = local_steps(index.num_slices, batch, local_iters, local_epochs, train_config.iters_per_epoch)
    parts = _site_parts(model_name, plans, global_state, train_config, proximal_mu, device)
    net = parts.model
    seed = site_seed(train_config.seed, site)
    first = (server_round - 1) * steps
    loader = SliceBatchLoader(
        index,
        plans.patch_size,
        plans.num_input_channels,
        batch,
        steps,
        train_config.foreground_fraction,
        seed,
        start_batch=first,
    )
    torch.manual_seed(derive_seed(seed, server_round, 0xD7))  # dropout, per round
    with batch_stream(loader, training_transforms(train_config, plans.patch_size), 0) as batches:
        train_loss = train_epoch(parts, batches, steps, first, progress=False)
    if not math.isfinite(train_loss):
        raise MonetError(
            f"site {site}: the training loss became {train_loss} in round {server_round}; lower --lr and start again."
        )
    local = floating_state(unwrap(net))
    delta = {k: local[k].float() - global_state[k].float() for k in local}
    seconds = time.perf_counter() - start
    log.info(
        "site %s round %d: %d steps on %d slices (%d cases), train loss %.4f, %.1f s",
        site,
        server_round,
        steps,
        index.num_slices,
        len(case_ids),
        train_loss,
        seconds,
    )
    return SiteUpdate(delta, float(train_loss), index.num_slices, steps, seconds)


def apply_delta(state: dict[str, torch.Tensor], delta: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """``state + delta`` in float32 (the aggregated update of a round applied to the global model)."""
    return {k: (v.float() + torch.from_numpy(np.asarray(delta[k], dtype=np.float32))) for k, v in state.items()}
