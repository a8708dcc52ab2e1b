"""The paper's augmentation with batchgenerators, run in background worker processes.

Per slice: rotation by ``U(-rotation, +rotation)`` degrees, zoom by ``U(1 - scale, 1 + scale)``
(half the draws shrink, half enlarge, as batchgenerators draws it), each drawn for a slice with probability
``spatial_probability`` (1, every slice, by default and in the paper), and a shift of the patch centre by
up to ``shift`` of the patch height / width. The shift is batchgenerators' own random crop: the patch
centre is drawn uniformly within ``shift * size`` of the slice centre (``patch_center_dist_from_border``),
pixels that come from outside the slice are zero (image) and background (labels). Images are
interpolated linearly (Keras' ImageDataGenerator, which the paper used, is bilinear too), labels by
nearest neighbour. ``mirror`` adds random flips (not in the paper; off by default) of the axes
``mirror_axes`` names (both by default; Task04 is better flipped left-right only, docs/training.md).
``intensity_augmentation`` (off by default, not in the paper) adds nnU-Net's intensity transforms.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from monetpipe.training.config import TrainConfig

log = logging.getLogger(__name__)


def training_transforms(config: TrainConfig, patch_size: tuple[int, int]) -> AbstractTransform:
    """The augmentation pipeline for one training batch of ``patch_size`` slices.

    Args:
        config: reads ``rotation_deg``, ``scale``, ``spatial_probability``, ``shift``,
            ``intensity_augmentation``, ``mirror`` and ``mirror_axes``.
        patch_size: (H, W) of the loader's batches; the output has the same size.
    """
    angle = math.radians(config.rotation_deg)
    center_dist = [p // 2 - int(round(config.shift * p)) for p in patch_size]
    transforms: list[AbstractTransform] = [
        SpatialTransform(
            patch_size,
            patch_center_dist_from_border=center_dist,
            do_elastic_deform=False,
            do_rotation=angle > 0,
            angle_x=(-angle, angle),
            do_scale=config.scale > 0,
            scale=(1 - config.scale, 1 + config.scale),
            border_mode_data="constant",
            border_cval_data=0,
            order_data=1,
            border_mode_seg="constant",
            border_cval_seg=0,
            order_seg=0,
            random_crop=config.shift > 0,
            p_rot_per_sample=config.spatial_probability,
            p_scale_per_sample=config.spatial_probability,
        )
    ]
    if config.intensity_augmentation:
        transforms += intensity_transforms()
    if config.mirror_dims:
        transforms.append(MirrorTransform(axes=config.mirror_dims))
    return Compose(transforms)


def intensity_transforms() -> list[AbstractTransform]:
    """``--intensity-augmentation``: noise, blur, brightness, contrast and gamma, each drawn per slice.

    The ranges and probabilities are nnU-Net's defaults (noise variance up to 0.1 for 10 % of slices, blur
    sigma 0.5-1 for 20 %, brightness x 0.75-1.25 and contrast x 0.75-1.25 for 15 % each, gamma 0.7-1.5 for
    30 %, keeping the slice's mean and standard deviation). A slice's channels are one image's neighbouring
    slices (2.5D) or its modalities, so each draw applies to all of them alike; only the noise differs
    pixel by pixel. Batchgenerators' gamma maps the slice to [0, 1] first, so it suits z-scored inputs.
    """
    return [
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=False, p_per_sample=0.2),
        BrightnessMultiplicativeTransform((0.75, 1.25), per_channel=False, p_per_sample=0.15),
        ContrastAugmentationTransform((0.75, 1.25), per_channel=False, p_per_sample=0.15),
        GammaTransform((0.7, 1.5), per_channel=False, retain_stats=True, p_per_sample=0.3),
    ]


@contextlib.contextmanager
def batch_stream(
    loader, transform: AbstractTransform | None, num_workers: int, pin_memory: bool = False
) -> Iterator[Iterator[dict]]:
    """Iterate augmented batches from ``loader``, in ``num_workers`` background processes (0: in this one).

    The workers are always shut down on leaving the ``with`` block, also on errors and Ctrl-C; if the
    training process is killed outright they receive SIGTERM (see ``SliceBatchLoader.set_thread_id``).
    """
    if num_workers == 0:
        yield SingleThreadedAugmenter(loader, transform)
        return
    augmenter = MultiThreadedAugmenter(
        loader, transform, num_workers, num_cached_per_queue=2, pin_memory=pin_memory, wait_time=0.005
    )
    try:
        yield augmenter
    finally:
        augmenter._finish(timeout=5)  # batchgenerators' shutdown: stops producers, drains queues, joins
