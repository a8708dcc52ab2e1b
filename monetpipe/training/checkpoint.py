"""Checkpoints that load with ``torch.load(..., weights_only=True)`` and resume a run exactly.

Keys (``monetpipe/results.py`` documents the ones inference reads):

- ``network``: ``{"name", "in_channels", "num_classes"}``; ``model_state``; ``plans`` (dict);
- ``epoch``: completed epochs; ``history``: one dict per completed epoch (the training log, so a
  resumed run rewrites ``training_log.csv`` from the checkpoint and can have neither gaps nor duplicates);
- ``optimizer``, ``scheduler``, ``scaler``, ``early_stopping``, ``best_dice``;
- ``rng``: torch (tensor), CUDA (tensors), NumPy and Python generator states as plain lists;
- ``config``: the :class:`~monetpipe.training.config.TrainConfig` as a dict; ``finished``: training ended;
- with ``--ema`` only: ``model_state`` is the weights' moving average, ``training_model_state`` the weights
  the optimizer trains and ``ema`` ``{"decay", "updates"}`` (:mod:`monetpipe.training.ema`).

Everything is tensors, numbers, strings, lists and dicts: nothing that needs unpickling code.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monetpipe.io.atomic import atomic_path


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside a DistributedDataParallel (or compiled) wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model


def rng_states() -> dict:
    """The torch, CUDA, NumPy and Python RNG states as tensors and plain lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "algorithm": np_state[0],
            "keys": np_state[1].tolist(),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore_rng_states(states: dict) -> None:
    """Inverse of :func:`rng_states` (CUDA states only when as many GPUs are visible)."""
    torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state(
        (
            n["algorithm"],
            np.asarray(n["keys"], dtype=np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(checkpoint: dict, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def save_latest(checkpoint: dict, latest: Path, previous: Path) -> None:
    """Write ``checkpoint_latest``, keeping the file it replaces as ``checkpoint_previous``.

    Every step is a rename, in this order: the new checkpoint goes to a temporary file; the current
    ``latest`` is linked (or copied) to a temporary name that is renamed over ``previous``; the temporary
    checkpoint is renamed over ``latest``. A kill at any point therefore leaves a complete ``latest`` (old
    or new) once one existed, and ``previous`` is always a complete, older state.
    """
    with atomic_path(latest) as tmp:
        torch.save(checkpoint, tmp)
        if latest.is_file():
            with atomic_path(previous) as previous_tmp:
                try:
                    os.link(latest, previous_tmp)  # latest is only ever replaced, never rewritten in place
                except OSError:  # a filesystem without hard links
                    shutil.copyfile(latest, previous_tmp)


def network_spec(name: str, in_channels: int, num_classes: int) -> dict:
    return {"name": name, "in_channels": int(in_channels), "num_classes": int(num_classes)}


def load_pretrained(model: nn.Module, checkpoint: dict, source: str) -> tuple[int, list[str]]:
    """Copy every weight whose name and shape match from ``checkpoint["model_state"]`` into ``model``.

    Returns:
        How many tensors were copied, and the names of this model's tensors left at their initial value
        (e.g. the output layer when the class count differs).

    Raises:
        ValueError: nothing matches (a different architecture).
    """
    own = model.state_dict()
    given = checkpoint.get("model_state", {})
    usable = {k: v for k, v in given.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{source}: none of its weights fit this network (another architecture?)")
    model.load_state_dict(usable, strict=False)
    return len(usable), sorted(set(own) - set(usable))
