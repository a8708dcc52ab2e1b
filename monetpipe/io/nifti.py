"""Raw NIfTI-1 access where SimpleITK alone is not enough: exact output geometry, NaN detection.

**Output geometry.** A predicted label map is written with the input file's own NIfTI header, so its
geometry is identical.

Writing a direction through ITK is not exactly reversible: ITK turns the 3x3 direction into a float32
quaternion and sform and, on reading, back into doubles, so an oblique direction read from the input
comes back different in the 9th digit. Copying the input's NIfTI-1 header (qform, sform, pixdim: the
bytes that define size, spacing, origin and direction) and changing only the data type and dimension
count makes every reader see exactly the input's geometry (for a 4D input, its 3D part).

Anything that is not a plain NIfTI-1 file falls back to :func:`monetpipe.io.image.write_label`
(geometry within float rounding).

**NaN inputs.** ITK's NIfTI reader silently turns NaN and inf voxels into 0, so a NaN check on the array
SimpleITK returns never fires. :func:`find_nonfinite` scans the raw float data of the file instead (the
scan lives in :mod:`monetpipe.io.verify`, in the same pass that checks the file is complete).
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monetpipe.io.atomic import atomic_path
from monetpipe.io.image import Geometry, write_label
from monetpipe.io.verify import verify_nifti

log = logging.getLogger(__name__)

_HEADER_SIZE = 348
_DATA_OFFSET = 352  # header + the 4-byte extension flag (no extensions)
_UINT8, _BITS = 2, 8
COMPRESS_LEVEL = 4  # label maps are mostly zeros: level 4 is ~as small as 9 and several times faster


def nifti1_header(path: str | Path) -> tuple[bytes, str] | None:
    """The raw 348-byte NIfTI-1 header of ``path`` (.nii or .nii.gz) and its byte order, or None."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(_HEADER_SIZE)
    except (OSError, EOFError):
        return None
    if len(raw) != _HEADER_SIZE or raw[344:348] not in (b"n+1\x00", b"ni1\x00"):
        return None
    for endian in "<>":
        if struct.unpack_from(endian + "i", raw, 0)[0] == _HEADER_SIZE:
            return raw, endian
    return None


def find_nonfinite(path: str | Path) -> bool:
    """True when the NIfTI file ``path`` stores NaN or inf voxels (only float files can).

    The scan is part of :func:`monetpipe.io.verify.verify_nifti`, which also refuses a truncated or
    corrupt file; :func:`monetpipe.io.image.read_volume` uses it on every NIfTI input.
    """
    return verify_nifti(path)


def label_header(raw: bytes, endian: str, size_xyz: tuple[int, int, int]) -> bytes | None:
    """The input header turned into one for a 3D uint8 label map of ``size_xyz``; None if sizes disagree."""
    h = bytearray(raw)
    dims = struct.unpack_from(endian + "8h", h, 40)
    if dims[0] < 3 or tuple(dims[1:4]) != tuple(size_xyz):
        return None
    struct.pack_into(endian + "8h", h, 40, 3, *size_xyz, 1, 1, 1, 1)
    struct.pack_into(endian + "3f", h, 56, 0.0, 0.0, 0.0)  # intent parameters
    struct.pack_into(endian + "3h", h, 68, 0, _UINT8, _BITS)  # intent_code, datatype, bitpix
    struct.pack_into(endian + "3f", h, 108, float(_DATA_OFFSET), 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    struct.pack_into(endian + "2f", h, 124, 0.0, 0.0)  # cal_max, cal_min
    struct.pack_into(endian + "2i", h, 140, 0, 0)  # glmax, glmin
    h[148:228] = b"monetpipe prediction".ljust(80, b"\x00")
    h[228:252] = bytes(24)  # aux_file
    h[328:344] = bytes(16)  # intent_name
    h[344:348] = b"n+1\x00"
    return bytes(h) + bytes(4)


def write_labels_like(
    labels: np.ndarray,
    reference: str | Path,
    geometry: Geometry,
    path: str | Path,
    compresslevel: int = COMPRESS_LEVEL,
) -> None:
    """Write ``labels`` ``(Z, Y, X)`` as uint8 ``path`` (.nii.gz), atomically, with ``reference``'s header.

    Args:
        labels: the label map on the input's grid.
        reference: the input image file (its first channel file for per-channel inputs).
        geometry: the input's geometry as read (used to check the result, and for the fallback writer).
        path: the output file.
        compresslevel: gzip level.
    """
    if tuple(labels.shape) != geometry.shape_zyx:
        raise ValueError(f"label shape {labels.shape} does not match geometry {geometry.shape_zyx}")
    found = nifti1_header(reference)
    header = label_header(*found, geometry.size) if found else None
    if header is not None:
        try:
            with atomic_path(path) as tmp:
                with (
                    open(tmp, "wb") as raw,
                    gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0) as f,
                ):
                    f.write(header)
                    f.write(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
                if _geometry_of(tmp).mismatch(geometry) is not None:
                    raise _HeaderMismatch  # leaves nothing behind: atomic_path removes the temporary file
            return
        except _HeaderMismatch:
            log.warning(
                "%s: its header does not reproduce the geometry read from it; writing through SimpleITK instead",
                reference,
            )
    write_label(labels, geometry, path)


class _HeaderMismatch(Exception):
    pass


def _geometry_of(path: Path) -> Geometry:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return Geometry(
        tuple(int(v) for v in reader.GetSize()),
        tuple(float(v) for v in reader.GetSpacing()),
        tuple(float(v) for v in reader.GetOrigin()),
        tuple(float(v) for v in reader.GetDirection()),
    )
