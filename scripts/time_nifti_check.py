"""What the truncation/corruption check costs when reading NIfTI files (docs/preprocessing.md).

For each file, the best of ``--repeats`` runs of:

- ``sitk read + array``: ``sitk.GetArrayFromImage(sitk.ReadImage(f))``, SimpleITK's read without any check
  (what monetpipe's reader did for integer files before the check existed);
- ``check only``: ``check_nifti(f)``, the truncation/CRC/NaN check alone (one streaming decompression);
- ``read_*``: monetpipe's reader as used everywhere (``read_volume`` for images, ``read_label`` for labels):
  the check's pass also yields the voxels, SimpleITK reads only the header, then the conversion to
  float32 / uint8 and the NaN test.

    python scripts/time_nifti_check.py FILE_OR_FOLDER ... [--repeats 3] [--labels-dir-name labelsTr]

A folder contributes every ``*.nii.gz``/``*.nii`` under it; files under a folder named ``labelsTr`` are
read with ``read_label``. Prints each total in seconds and the ratio of monetpipe's read to the unchecked one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--labels-dir-name", default="labelsTr")
    args = p.parse_args()

    import SimpleITK as sitk

    from monetpipe.io.image import read_label, read_volume
    from monetpipe.io.verify import check_nifti

    files = []
    for path in args.paths:
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.name.endswith((".nii.gz", ".nii")))
        else:
            files.append(path)
    totals = {"sitk read + array": 0.0, "check only": 0.0, "read_*": 0.0}
    for f in files:
        is_label = f.parent.name == args.labels_dir_name
        reader = (lambda f=f: read_label(f)) if is_label else (lambda f=f: read_volume([f]))
        totals["sitk read + array"] += _best(lambda f=f: sitk.GetArrayFromImage(sitk.ReadImage(str(f))), args.repeats)
        totals["check only"] += _best(lambda f=f: check_nifti(f), args.repeats)
        totals["read_*"] += _best(reader, args.repeats)
    size = sum(f.stat().st_size for f in files) / 2**20
    print(f"{len(files)} file(s), {size:.1f} MiB on disk, best of {args.repeats}:")
    for name, seconds in totals.items():
        print(f"  {name:<18} {seconds:8.3f} s")
    print(f"  read_* / sitk read + array: {totals['read_*'] / totals['sitk read + array']:.2f}")


if __name__ == "__main__":
    main()
