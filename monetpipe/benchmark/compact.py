"""Compact model files for federated learning (paper Table 3): float16 weights, and a folded ONNX graph.

A float16 state_dict is half the float32 file and still a trainable checkpoint (load it into a model
and the weights come back as float32); the check that matters is that the masks stay the same, which
:func:`mask_agreement` measures.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from monetpipe.io.atomic import atomic_path


def compact_state_dict(model: nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with floating tensors cast to ``dtype`` (integer buffers unchanged)."""
    return {k: v.detach().to(dtype) if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}


def save_compact(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """Save :func:`compact_state_dict` with ``torch.save`` (atomically); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(compact_state_dict(model, dtype), tmp)
    return path


def load_compact(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a compact state_dict into ``model`` (cast to the model's own dtypes); returns ``model``.

    Loads with ``weights_only=True``: a compact file is plain tensors.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in state.items()})
    return model


def masks(logits: torch.Tensor) -> torch.Tensor:
    """Label masks from logits: ``> 0`` for one (sigmoid) channel, argmax over channels otherwise."""
    return logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(dim=1)


def mask_agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of voxels whose mask label is the same in two logit tensors of equal shape."""
    return (masks(reference) == masks(other)).float().mean().item()


@torch.inference_mode()
def fp16_agreement(model: nn.Module, x: torch.Tensor, batch_size: int = 8) -> float:
    """Mask agreement between ``model`` and the same model round-tripped through float16 weights.

    Args:
        model: the float32 network (not modified).
        x: ``(S, C, H, W)`` slices.
        batch_size: slices per forward pass.

    Returns:
        The fraction of voxels with the same label (1.0 = identical masks).
    """
    import copy

    reference = copy.deepcopy(model).eval()
    rounded = copy.deepcopy(model).eval()
    rounded.load_state_dict(
        {k: v.to(torch.float16).to(v.dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    same = total = 0
    for i in range(0, x.shape[0], batch_size):
        a, b = masks(reference(x[i : i + batch_size])), masks(rounded(x[i : i + batch_size]))
        same += int((a == b).sum())
        total += a.numel()
    return same / total


def export_compact(
    model: nn.Module, out_dir: str | os.PathLike, in_channels: int, size: int, onnx: bool = True
) -> dict[str, float]:
    """Write ``<name>_fp16.pth`` (trainable, half size) and ``<name>_folded.onnx`` (inference) to ``out_dir``.

    Args:
        model: the network.
        out_dir: folder for the files.
        in_channels: C of the ONNX input.
        size: H = W of the ONNX input.
        onnx: also write the ONNX graph (needs onnx + onnxscript).

    Returns:
        ``fp16_file_mib`` and, with ``onnx``, ``onnx_mib``.
    """
    from monetpipe.networks import export_onnx, fuse_for_inference

    out_dir = Path(out_dir)
    name = getattr(model, "model_name", type(model).__name__.lower())
    sizes = {"fp16_file_mib": save_compact(model, out_dir / f"{name}_fp16.pth").stat().st_size / 2**20}
    if onnx:
        path = export_onnx(fuse_for_inference(model), out_dir / f"{name}_folded.onnx", in_channels, size, size)
        sizes["onnx_mib"] = path.stat().st_size / 2**20
    return sizes
