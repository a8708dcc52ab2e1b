"""The paper's networks (MoNet, U-Net-16, U-Net-64, Attention U-Net), by name, with their costs.

``build_network(name, in_channels, num_classes)`` returns a model whose ``forward`` maps a
(B, C, H, W) batch to logits (B, K, H, W); H and W must be multiples of ``model.size_divisor``.
``fuse_for_inference`` folds BatchNorm where that is exact, ``flops_per_slice`` counts FLOPs and
``export_onnx`` writes an ONNX file with a dynamic batch dimension. See docs/networks.md.
"""

from monetpipe.networks.export import export_onnx
from monetpipe.networks.flops import flops_per_slice
from monetpipe.networks.fusion import fuse_for_inference
from monetpipe.networks.registry import build_network, count_parameters, dropout_overrides, list_networks

__all__ = [
    "build_network",
    "count_parameters",
    "dropout_overrides",
    "export_onnx",
    "flops_per_slice",
    "fuse_for_inference",
    "list_networks",
]
