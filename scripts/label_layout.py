"""Where labels lie relative to each other, per image axis: which axes are safe to mirror in training.

For every pair of foreground labels it measures, in each case, the offset between the two labels'
centroids along each array axis (SimpleITK's numpy order: z, y, x), and reports the median offset and
the share of cases in which it has the majority's sign. An axis along which one label lies on the same
side of the other in (nearly) every case is one where a flip puts them in an order the data never shows:
``monet_train --mirror`` should not flip it (``--mirror-axes``, docs/training.md).

    python scripts/label_layout.py --labels <Task>/labelsTr
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

log = logging.getLogger("label_layout")


def centroid_offsets(label_files: list[Path]) -> dict[tuple[int, int], np.ndarray]:
    """``{(a, b): (cases, 3) offsets}``: centroid of label ``a`` minus centroid of ``b`` in voxels, per axis,
    for the cases holding both."""
    out: dict[tuple[int, int], list[np.ndarray]] = {}
    for f in label_files:
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        labels = [int(v) for v in np.unique(seg) if v != 0]
        centres = dict(zip(labels, ndimage.center_of_mass(np.ones_like(seg), seg, labels), strict=True))
        for a, b in itertools.combinations(labels, 2):
            out.setdefault((a, b), []).append(np.subtract(centres[a], centres[b]))
    return {pair: np.array(v) for pair, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=Path, required=True, help="a folder of label images (e.g. labelsTr)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = sorted(f for f in args.labels.glob("*.nii*") if not f.name.startswith("."))
    for (a, b), d in sorted(centroid_offsets(files).items()):
        for axis, name in enumerate("zyx"):
            v = d[:, axis]
            same = int(max((v > 0).sum(), (v < 0).sum()))
            log.info(
                "labels %d - %d, axis %d (%s): median offset %+.1f voxels, same sign in %d of %d cases (%.0f %%)",
                a,
                b,
                axis,
                name,
                float(np.median(v)),
                same,
                len(v),
                100 * same / len(v),
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
