"""Which site trains on which cases: a seeded split (``--sites N``) or a user's site map (``--site-map``).

Sites only ever receive cases of the fold's training part. The fold's validation cases and the inner
validation cases (carved out exactly as ``monet_train`` carves them) stay with the server, which uses
them to pick the best round and for the final validation.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from monetpipe.errors import MonetError
from monetpipe.preprocessing.slice_cache import CacheLayout

log = logging.getLogger(__name__)
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def split_sites(case_ids: list[str], num_sites: int, seed: int = 12345) -> dict[str, list[str]]:
    """Deal the cases to ``site_1`` .. ``site_N`` in a seeded random order (whole cases; sizes differ
    by at most one case).

    Raises:
        MonetError: fewer cases than sites.
    """
    ids = sorted(case_ids)
    if len(ids) < num_sites:
        raise MonetError(
            f"--sites {num_sites}: the fold has only {len(ids)} training case(s) to share; use fewer sites."
        )
    order = np.random.RandomState(seed).permutation(len(ids))
    width = len(str(num_sites))
    return {f"site_{k + 1:0{width}d}": sorted(ids[i] for i in order[k::num_sites]) for k in range(num_sites)}


def read_site_map(path: str | Path) -> dict[str, list[str]]:
    """Parse a site map file ``{"site_a": ["case_001", ...], ...}`` (shape only, no case checks).

    Raises:
        MonetError: missing, not JSON, or not an object of site names to lists of case ids.
    """
    path = Path(path)
    fix = 'Write it as {"site_a": ["case_001", ...], "site_b": [...]}.'
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MonetError(f"{path}: site map not found. {fix}") from None
    except (OSError, ValueError) as exc:
        raise MonetError(f"{path}: not a readable JSON site map ({exc}). {fix}") from None
    if not isinstance(raw, dict) or not raw:
        raise MonetError(f"{path}: a site map must be a non-empty JSON object. {fix}")
    sites: dict[str, list[str]] = {}
    for name, cases in raw.items():
        if not SITE_NAME.match(str(name)):
            raise MonetError(
                f"{path}: site name {name!r} is not usable (letters, digits, '_', '-', '.'; at most 64). Rename it."
            )
        if not isinstance(cases, list) or not cases or not all(isinstance(c, str) for c in cases):
            raise MonetError(f"{path}: site {name!r} must list at least one case id as strings. {fix}")
        sites[str(name)] = sorted(dict.fromkeys(cases))
    return sites


def check_site_map(
    sites: dict[str, list[str]],
    train_cases: list[str],
    inner_val_cases: list[str],
    val_cases: list[str],
    layout: CacheLayout,
    fold: int | str,
    source: str = "site map",
) -> dict[str, list[str]]:
    """Refuse a case that is unknown, not cached, held out for validation, or given to two sites.

    Returns:
        ``sites`` unchanged.

    Raises:
        MonetError: naming the first offending case, its site and the fix.
    """
    owner: dict[str, str] = {}
    val, inner, train = set(val_cases), set(inner_val_cases), set(train_cases)
    for name, cases in sites.items():
        for case in cases:
            if case in owner:
                raise MonetError(
                    f"{source}: case {case!r} is listed for both {owner[case]!r} and {name!r}; a case belongs "
                    f"to one site. Remove it from one of them."
                )
            owner[case] = name
            if case in val:
                raise MonetError(
                    f"{source}: case {case!r} of site {name!r} is a validation case of fold {fold} "
                    f"(splits_final.json); it must never reach a site. Remove it, or choose another fold (-f)."
                )
            if case in inner:
                raise MonetError(
                    f"{source}: case {case!r} of site {name!r} is held out for the inner validation of fold "
                    f"{fold} (it picks the best round); it must never reach a site. Remove it from the site map."
                )
            if case not in train or not layout.properties_file(case).is_file():
                raise MonetError(
                    f"{source}: case {case!r} of site {name!r} is not a training case of fold {fold} in the slice "
                    f"cache {layout.slices}. Fix the case id, or run monet_plan_and_preprocess on a task "
                    f"that contains it."
                )
    unused = sorted(train - set(owner))
    if unused:
        log.warning(
            "%s: %d training case(s) of fold %s belong to no site and are not used: %s",
            source,
            len(unused),
            fold,
            ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else ""),
        )
    return sites
