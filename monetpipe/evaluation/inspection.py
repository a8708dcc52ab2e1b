"""``monet_inspect``'s work: load trained models, pick a slice of a cached case, draw the activation figure.

Writes ``MONET_results/<Task>/inspect/<case>_z<slice>.png`` (the figure) and ``.csv`` beside it (one row
per model and activation layer: mean, std, share of values near zero, share of dead channels).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from monetpipe.errors import MonetError
from monetpipe.paths import MonetPaths, find_task
from monetpipe.preprocessing.plans import DEFAULT_PLANS
from monetpipe.results import ModelFolder, load_checkpoint

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def load_model(folder: ModelFolder, fold: int | str, checkpoint: str) -> tuple[torch.nn.Module, dict]:
    """The eval-mode (unfused) network of one trained fold and its checkpoint dict."""
    from monetpipe.inference.loading import network_from_checkpoint

    path = folder.checkpoint(fold, checkpoint)
    if not path.is_file():
        raise MonetError(
            f"{path}: no such checkpoint. Train it first (monet_train -t {folder.root.parent.name} "
            f"-m {folder.model} -f {fold}) or choose another with --checkpoint/-f."
        )
    ckpt = load_checkpoint(path)
    return network_from_checkpoint(ckpt, path), ckpt


def choose_slice(seg: np.ndarray, slice_index: int | None, case_id: str) -> int:
    """``slice_index`` if given (checked), else the slice with the most foreground (the middle if none)."""
    n = seg.shape[0]
    if slice_index is not None:
        if not 0 <= slice_index < n:
            raise MonetError(f"case {case_id} has {n} slices along the plan's slice axis; --slice {slice_index}")
        return slice_index
    area = (np.asarray(seg) > 0).reshape(n, -1).sum(axis=1)
    return int(area.argmax()) if area.max() > 0 else n // 2


def inspect_models(
    task: str | os.PathLike,
    models: Sequence[str],
    case_id: str,
    paths: MonetPaths,
    plans_name: str = DEFAULT_PLANS,
    fold: int | str = 0,
    checkpoint: str = "final",
    slice_index: int | None = None,
    output: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """Draw the activation figure of ``models`` on one slice of a cached case.

    Returns:
        The PNG and the CSV written.
    """
    import pandas as pd

    from monetpipe.evaluation.activations import draw_figure, inspect_slice, layer_statistics
    from monetpipe.io.atomic import atomic_path
    from monetpipe.preprocessing.context import stack_context
    from monetpipe.preprocessing.plans import Plans
    from monetpipe.preprocessing.slice_cache import CacheLayout, load_case

    name, _ = find_task(task, [paths.results, paths.preprocessed, paths.raw])
    layout = CacheLayout(paths.preprocessed / name, plans_name)
    if not layout.properties_file(case_id).is_file():
        known = sorted(p.name[: -len(".json")] for p in layout.slices.glob("*.json")) if layout.slices.is_dir() else []
        hint = f" Cached cases: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}." if known else ""
        raise MonetError(
            f"{layout.properties_file(case_id)}: case {case_id!r} is not in the {plans_name} slice cache. "
            f"Run monet_plan_and_preprocess -t {name} first or pick a cached case.{hint}"
        )
    data, seg, _ = load_case(layout, case_id, mmap=True)
    z = choose_slice(seg, slice_index, case_id)
    context = Plans.load(layout.plans_file).context_slices  # 2.5D plans: the network sees slices z-K..z+K
    image, target = stack_context(data, [z], context)[0].astype(np.float32), np.asarray(seg[z])
    inspections = []
    rows = []
    for model_name in models:
        folder = ModelFolder.for_run(paths.results, name, model_name.lower(), plans_name)
        model, _ = load_model(folder, fold, checkpoint)
        # 2.5D stacks are slice-major (z-K .. z+K, each with every channel): the slice itself is block K
        ins = inspect_slice(folder.model, model, image, target, shown_channel=context * data.shape[0])
        inspections.append(ins)
        rows += [{"model": folder.model, **row} for row in layer_statistics(ins.activations)]
        log.info("%s: %d activation layers on %s slice %d", folder.model, len(ins.activations), case_id, z)
    out_png = Path(output) if output else paths.results / name / "inspect" / f"{case_id}_z{z}.png"
    draw_figure(inspections, out_png)
    out_csv = out_png.with_suffix(".csv")
    with atomic_path(out_csv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")
    return out_png, out_csv
