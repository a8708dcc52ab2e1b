"""ONNX export with a dynamic batch dimension (for ONNX Runtime on CPUs and other runtimes).

onnx and onnxscript (PyTorch 2.x's default exporter) are optional: ``pip install 'monetpipe[onnx]'``.
They are imported only when an export is asked for.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from monetpipe.networks.blocks import check_input

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def _dynamic_dims(divisor: int, dynamic_size: bool) -> dict:
    dims: dict = {0: torch.export.Dim("batch", min=1)}
    if dynamic_size:  # H = divisor * h_blocks: the exporter must know every size divides
        dims[2] = divisor * torch.export.Dim("h_blocks", min=1, max=1024)
        dims[3] = divisor * torch.export.Dim("w_blocks", min=1, max=1024)
    return dims


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    in_channels: int,
    height: int,
    width: int,
    opset_version: int | None = None,
    dynamic_size: bool = False,
) -> Path:
    """Write ``model`` in eval mode as a single ONNX file; the batch size is free at run time.

    Input ``image`` (N, C, H, W) float32 -> output ``logits`` (N, K, H, W). H and W are fixed to the
    given size (the plans' patch size). Pass ``fuse_for_inference(model)`` for a BatchNorm-folded graph.

    Args:
        model: a network (its train/eval mode is restored afterwards).
        path: the .onnx file to write (atomically: a partial file never appears under this name).
        in_channels: C.
        height: H, a multiple of ``model.size_divisor``.
        width: W, likewise.
        opset_version: ONNX opset; default: the exporter's.
        dynamic_size: also leave H and W free (any multiple of ``model.size_divisor``), so one file
            serves every slice size (the int8 model of ``monet_predict --precision int8``).

    Returns:
        The written path.

    Raises:
        ImportError: onnx / onnxscript missing, with the install command.
        ValueError: a size the model cannot take.
    """
    path = Path(path)
    name = getattr(model, "model_name", type(model).__name__)
    divisor = getattr(model, "size_divisor", 1)
    example = torch.zeros(2, in_channels, height, width)  # batch 2: a batch of 1 would be specialised
    check_input(example, getattr(model, "in_channels", in_channels), divisor, name)
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript ({err.name} is missing): pip install 'monetpipe[onnx]'"
        ) from err
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    was_training = model.training
    model.eval()
    try:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(_dynamic_dims(divisor, dynamic_size),),
            opset_version=opset_version,
            external_data=False,
            dynamo=True,
        )
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        tmp.unlink(missing_ok=True)
    logger.info("exported %s (%d x %d x %d, dynamic batch) to %s", name, in_channels, height, width, path)
    return path
