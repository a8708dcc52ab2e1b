"""Images as numpy arrays plus the geometry needed to write them back exactly.

Arrays use SimpleITK's numpy order: a 3D image of size (x, y, z) is the array ``[z, y, x]``; a
multi-channel image is ``[c, z, y, x]``. A 4D NIfTI (MSD stores channels as the 4th dimension) is read
as ``[c, z, y, x]`` with the 3D sub-geometry (first three axes of spacing, origin, direction).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monetpipe.errors import DatasetError
from monetpipe.io.atomic import atomic_path
from monetpipe.io.verify import read_layout, verify_nifti

NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Geometry:
    """Size (x, y, z), spacing (mm, x y z), origin and 3x3 direction (row-major) of a 3D image."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        dim = image.GetDimension()
        if dim == 3:
            return cls(
                tuple(int(s) for s in image.GetSize()),
                tuple(float(s) for s in image.GetSpacing()),
                tuple(float(s) for s in image.GetOrigin()),
                tuple(float(d) for d in image.GetDirection()),
            )
        if dim == 4:
            d4 = np.asarray(image.GetDirection(), dtype=float).reshape(4, 4)
            return cls(
                tuple(int(s) for s in image.GetSize()[:3]),
                tuple(float(s) for s in image.GetSpacing()[:3]),
                tuple(float(s) for s in image.GetOrigin()[:3]),
                tuple(float(d) for d in d4[:3, :3].ravel()),
            )
        raise ValueError(f"expected a 3D or 4D image, got {dim}D")

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def mismatch(self, other: Geometry, rtol: float = 1e-4, atol: float = 1e-3) -> str | None:
        """A human-readable description of how ``other`` differs, or ``None`` if they agree."""
        if self.size != other.size:
            return f"size {self.size} vs {other.size}"
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, rtol=rtol, atol=atol):
                return f"{name} {tuple(np.round(a, 4).tolist())} vs {tuple(np.round(b, 4).tolist())}"
        return None

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(
            tuple(int(v) for v in d["size"]),
            tuple(float(v) for v in d["spacing"]),
            tuple(float(v) for v in d["origin"]),
            tuple(float(v) for v in d["direction"]),
        )


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_ENDINGS)


def strip_nifti(name: str) -> str:
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def read_sitk(path: str | os.PathLike) -> sitk.Image:
    """Read one image file, turning any failure into an error that names the file.

    A NIfTI file is first checked to hold every byte its header promises, with an intact gzip stream
    (:func:`monetpipe.io.verify.verify_nifti`): SimpleITK itself reads a cut file as zeros.
    """
    return _read_checked(Path(path))[0]


def _read_checked(path: Path) -> tuple[sitk.Image, bool]:
    """The image, and whether the NIfTI file stores NaN/inf voxels (which ITK's reader turns into 0)."""
    if not path.is_file():
        if path.is_symlink():
            raise DatasetError(
                f"{path}: is a symbolic link to {os.readlink(path)}, which does not exist. "
                f"Fix the link or copy the file in."
            )
        raise DatasetError(f"{path}: file not found. Check the file name and the task's dataset.json.")
    nonfinite = is_nifti(path) and verify_nifti(path)
    try:
        return sitk.ReadImage(str(path)), nonfinite
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        layout = read_layout(path) if is_nifti(path) else None
        if layout is not None and layout.version == 2:
            raise DatasetError(
                f"{path}: is a NIfTI-2 file, which SimpleITK (ITK's NIfTI-1 library) cannot read. "
                f"Save it as NIfTI-1 (e.g. nibabel.Nifti1Image) and try again."
            ) from None
        raise DatasetError(
            f"{path}: cannot be read as an image ({first}). The file may be truncated or corrupt; "
            f"re-export or re-download it."
        ) from None


def _as_channels(image: sitk.Image, path: Path) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:  # vector image: (z, y, x, c)
        array = np.moveaxis(array, -1, 0)
    elif image.GetDimension() == 3:
        array = array[None]
    elif image.GetDimension() != 4:
        raise DatasetError(
            f"{path}: is {image.GetDimension()}D; monetpipe needs 3D volumes (or 4D with channels last)."
        )
    return array


def read_volume(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, Geometry]:
    """Read a case's image: one 3D/4D file, or one 3D file per channel.

    Returns:
        ``float32`` array ``(C, Z, Y, X)`` and the 3D geometry.

    Raises:
        DatasetError: a file is missing or unreadable, channel files disagree in geometry, or the image
            holds NaN/inf values. The message names the file.
    """
    channels, geometry = [], None
    for p in paths:
        p = Path(p)
        image, nonfinite = _read_checked(p)
        array = _as_channels(image, p).astype(np.float32, copy=False)
        g = Geometry.of(image)
        if geometry is None:
            geometry = g
        elif (diff := geometry.mismatch(g)) is not None:
            raise DatasetError(
                f"{p}: channel geometry differs from {Path(paths[0]).name} ({diff}). All channels of a case "
                f"must share one grid; resample them onto the first channel."
            )
        if nonfinite or not np.isfinite(array).all():
            raise DatasetError(
                f"{p}: contains NaN or infinite intensities. Replace them (e.g. with the image minimum) "
                f"before running monetpipe."
            )
        channels.append(array)
    if geometry is None:
        raise DatasetError("no image files given for a case")
    return np.concatenate(channels, axis=0), geometry


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a label map as an integer array ``(Z, Y, X)``; float label files must hold whole numbers."""
    path = Path(path)
    image, nonfinite = _read_checked(path)
    if nonfinite:
        raise DatasetError(f"{path}: label map holds NaN or infinite values; labels must be whole numbers.")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"{path}: a label map must be a single 3D volume.")
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.all(np.mod(array, 1) == 0):
            raise DatasetError(f"{path}: label map holds non-integer values; labels must be whole numbers.")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DatasetError(f"{path}: label values must lie in 0..255, found {array.min()}..{array.max()}.")
    return array.astype(np.uint8), Geometry.of(image)


def write_label(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write a ``(Z, Y, X)`` label array as uint8 NIfTI with ``geometry``, atomically."""
    if tuple(array.shape) != geometry.shape_zyx:
        raise ValueError(f"label shape {array.shape} does not match geometry {geometry.shape_zyx}")
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.uint8)))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write a ``(Z, Y, X)`` intensity array with ``geometry``, atomically (dtype kept)."""
    image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
