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
from monetpipe.io.verify import check_nifti, read_layout, verify_nifti

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
    (:func:`monetpipe.io.verify.check_nifti`): SimpleITK itself reads a cut file as zeros.
    """
    path = Path(path)
    _require_file(path)
    return _read_checked(path, is_nifti(path) and verify_nifti(path))[0]


def _require_file(path: Path) -> None:
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:  # SimpleITK aborts the whole process on such a path: refuse it first
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise DatasetError(
            f"{shown}: the path is not valid UTF-8, and SimpleITK cannot open such a file. Rename it (e.g. to "
            f"ASCII letters, digits and '_')."
        ) from None
    if path.is_file():
        return
    if path.is_symlink():
        raise DatasetError(
            f"{path}: is a symbolic link to {os.readlink(path)}, which does not exist. "
            f"Fix the link or copy the file in."
        )
    raise DatasetError(f"{path}: file not found. Check the file name and the task's dataset.json.")


def _read_checked(path: Path, nonfinite: bool) -> tuple[sitk.Image, bool]:
    """SimpleITK's read of an already checked file, with errors that name it."""
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


@dataclass(frozen=True)
class _Pixels:
    """One file's voxels in SimpleITK's numpy order ``(z, y, x)``, ``(t, z, y, x)`` or ``(z, y, x, c)``."""

    array: np.ndarray
    geometry: Geometry
    dimension: int
    components: int
    nonfinite: bool  # the file stores NaN/inf (ITK's NIfTI reader would have turned them into 0)


_SITK_PIXEL = {
    ("u", 1): sitk.sitkUInt8, ("i", 1): sitk.sitkInt8, ("u", 2): sitk.sitkUInt16, ("i", 2): sitk.sitkInt16,
    ("u", 4): sitk.sitkUInt32, ("i", 4): sitk.sitkInt32, ("u", 8): sitk.sitkUInt64, ("i", 8): sitk.sitkInt64,
    ("f", 4): sitk.sitkFloat32, ("f", 8): sitk.sitkFloat64,
}  # fmt: skip


def _read_pixels(path: Path) -> _Pixels:
    """Voxels and geometry of one file, checked. A plain NIfTI's voxels come from the checking pass itself
    (SimpleITK reads only its header), so the check costs no second decompression; anything else
    (intensity scaling, vector pixels, other formats) is read by SimpleITK."""
    _require_file(path)
    nonfinite = False
    if is_nifti(path):
        check = check_nifti(path, keep_voxels=True)
        if check.voxels is not None and (pixels := _from_voxels(path, check.voxels, check.nonfinite)) is not None:
            return pixels
        nonfinite, check = check.nonfinite, None  # release the voxels before SimpleITK reads its own
    image, nonfinite = _read_checked(path, nonfinite)
    return _Pixels(
        sitk.GetArrayFromImage(image),
        Geometry.of(image) if image.GetDimension() in (3, 4) else None,
        image.GetDimension(),
        image.GetNumberOfComponentsPerPixel(),
        nonfinite,
    )


def _from_voxels(path: Path, voxels: np.ndarray, nonfinite: bool) -> _Pixels | None:
    """The checked voxels shaped as SimpleITK would return them, or None where SimpleITK would differ."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # the full read reports it
    size, dim = reader.GetSize(), reader.GetDimension()
    if (
        dim not in (3, 4)
        or reader.GetNumberOfComponents() != 1
        or reader.GetPixelID() != _SITK_PIXEL.get((voxels.dtype.kind, voxels.dtype.itemsize))
        or int(np.prod(size)) != voxels.size
    ):
        return None
    array = voxels.reshape(size[::-1])
    if not voxels.dtype.isnative:
        array = array.astype(voxels.dtype.newbyteorder("="))
    return _Pixels(array, Geometry.of(reader), dim, 1, nonfinite)


def _as_channels(pixels: _Pixels, path: Path) -> np.ndarray:
    if pixels.components > 1:  # vector image: (z, y, x, c)
        return np.moveaxis(pixels.array, -1, 0)
    if pixels.dimension == 3:
        return pixels.array[None]
    if pixels.dimension != 4:
        raise DatasetError(f"{path}: is {pixels.dimension}D; monetpipe needs 3D volumes (or 4D with channels last).")
    return pixels.array


def read_volume(paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, Geometry]:
    """Read a case's image: one 3D/4D file, or one 3D file per channel.

    Returns:
        ``float32`` array ``(C, Z, Y, X)`` and the 3D geometry.

    Raises:
        DatasetError: a file is missing, truncated, corrupt or unreadable, channel files disagree in
            geometry, or the image holds NaN/inf values. The message names the file.
    """
    channels, geometry = [], None
    for p in paths:
        p = Path(p)
        pixels = _read_pixels(p)
        array = _as_channels(pixels, p).astype(np.float32, copy=False)
        g = pixels.geometry
        if geometry is None:
            geometry = g
        elif (diff := geometry.mismatch(g)) is not None:
            raise DatasetError(
                f"{p}: channel geometry differs from {Path(paths[0]).name} ({diff}). All channels of a case "
                f"must share one grid; resample them onto the first channel."
            )
        if pixels.nonfinite or not np.isfinite(array).all():
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
    pixels = _read_pixels(path)
    if pixels.nonfinite:
        raise DatasetError(f"{path}: label map holds NaN or infinite values; labels must be whole numbers.")
    if pixels.dimension != 3 or pixels.components != 1:
        raise DatasetError(f"{path}: a label map must be a single 3D volume.")
    array = pixels.array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.all(np.mod(array, 1) == 0):
            raise DatasetError(f"{path}: label map holds non-integer values; labels must be whole numbers.")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DatasetError(f"{path}: label values must lie in 0..255, found {array.min()}..{array.max()}.")
    return array.astype(np.uint8), pixels.geometry


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
