"""Train/validation splits (``splits_final.json``, nnU-Net's format), made once and never changed silently."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from monetpipe.errors import MonetError
from monetpipe.io.atomic import read_json, write_json

log = logging.getLogger(__name__)
SPLIT_SEED = 12345


def holdout_split(case_ids: list[str], val_fraction: float = 0.3, seed: int = SPLIT_SEED) -> list[dict]:
    """The paper's single hold-out: ``round(val_fraction * N)`` validation cases drawn from the sorted ids."""
    ids = sorted(case_ids)
    n_val = int(round(val_fraction * len(ids)))
    if len(ids) < 2 or n_val == 0:
        raise MonetError(f"A hold-out split needs at least 2 cases; this task has {len(ids)}.")
    order = np.random.RandomState(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return [{"train": [c for c in ids if c not in set(val)], "val": val}]


def kfold_split(case_ids: list[str], folds: int = 5, seed: int = SPLIT_SEED) -> list[dict]:
    """K-fold with shuffling, identical to scikit-learn's ``KFold(folds, shuffle=True, random_state=seed)``
    on the sorted ids (what nnU-Net uses), written without the scikit-learn dependency."""
    ids = sorted(case_ids)
    if folds < 2 or folds > len(ids):
        raise MonetError(
            f"--folds {folds} is impossible with {len(ids)} cases; use 2..{len(ids)} (or 1 for the hold-out)."
        )
    order = np.random.RandomState(seed).permutation(len(ids))
    sizes = np.full(folds, len(ids) // folds)
    sizes[: len(ids) % folds] += 1
    splits, start = [], 0
    for size in sizes:
        val_idx = set(order[start : start + size].tolist())
        start += size
        splits.append(
            {
                "train": [ids[i] for i in range(len(ids)) if i not in val_idx],
                "val": [ids[i] for i in range(len(ids)) if i in val_idx],
            }
        )
    return splits


def make_splits(case_ids: list[str], folds: int = 1) -> list[dict]:
    return holdout_split(case_ids) if folds == 1 else kfold_split(case_ids, folds)


def ensure_splits(path: Path, case_ids: list[str], folds: int = 1, overwrite: bool = False) -> list[dict]:
    """Write ``splits_final.json`` unless it exists; an existing one is kept unless ``overwrite``.

    Raises:
        MonetError: the existing split disagrees with what was asked (other fold count, other cases) and
            ``overwrite`` is false — changing a split silently would invalidate every trained model.
    """
    wanted = make_splits(case_ids, folds)
    if path.is_file() and not overwrite:
        existing = read_json(path)
        existing_cases = sorted({c for s in existing for c in s["train"] + s["val"]})
        if len(existing) != len(wanted) or existing_cases != sorted(case_ids):
            raise MonetError(
                f"{path}: the existing split has {len(existing)} fold(s) over {len(existing_cases)} cases, but "
                f"{len(wanted)} fold(s) over {len(case_ids)} cases were asked for. Splits are never changed "
                f"silently (trained models depend on them); pass --overwrite-splits to replace it."
            )
        log.info("Keeping existing split %s", path)
        return existing
    write_json(wanted, path)
    return wanted


def load_splits(path: Path, known_cases: Iterable[str] | None = None) -> list[dict]:
    """Read ``splits_final.json`` and check it: folds of ``{"train": [...], "val": [...]}`` case ids.

    A case id becomes part of file names (``<id>_data.npy``, ``validation/<id>.nii.gz``), so every id must
    be a plain name (no folder separator, not ``.``/``..``) and, when ``known_cases`` is given (the ids of
    the slice cache), one of them: a crafted id can neither reach outside the task's folders nor name a
    case that was never preprocessed.

    Raises:
        MonetError: the file is missing, not in this format, or holds an unknown or unsafe case id.
    """
    if not path.is_file():
        raise MonetError(f"{path}: no splits. Run monet_plan_and_preprocess for this task first.")
    fix = f"Re-create it with monet_plan_and_preprocess -t {path.parent.name} --overwrite-splits, or edit the file."
    try:
        splits = read_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MonetError(f"{path}: not valid JSON ({exc}). {fix}") from None
    if not isinstance(splits, list) or not splits:
        raise MonetError(f'{path}: expected a list of folds, each {{"train": [...], "val": [...]}}. {fix}')
    known = None if known_cases is None else set(known_cases)
    for k, split in enumerate(splits):
        if not isinstance(split, dict) or not all(isinstance(split.get(part), list) for part in ("train", "val")):
            raise MonetError(f'{path}: fold {k} is not {{"train": [...], "val": [...]}}. {fix}')
        for part in ("train", "val"):
            for case_id in split[part]:
                problem = unsafe_case_id(case_id)
                if problem is None and known is not None and case_id not in known:
                    problem = "is not in the slice cache (no such preprocessed case)"
                if problem:
                    raise MonetError(f"{path}: case id {case_id!r} (fold {k}, {part}) {problem}. {fix}")
    return splits


def unsafe_case_id(case_id: object) -> str | None:
    """Why ``case_id`` cannot be used in a file name (``None`` when it can)."""
    if not isinstance(case_id, str) or not case_id.strip():
        return "is not a non-empty string"
    if PureWindowsPath(case_id).drive or PurePosixPath(case_id).is_absolute():
        return "is an absolute path, not a case name"
    if "/" in case_id or "\\" in case_id or case_id in (".", "..") or "\0" in case_id:
        return "is not a plain case name (it holds a folder separator or is '.'/'..')"
    return None
