"""Refuse truncated or corrupt NIfTI files, in the one streaming pass that also reads their voxels.

SimpleITK reads a cut ``.nii.gz`` of integer pixels without an error (the missing voxels become 0) and
turns stored NaN/inf voxels into 0. :func:`check_nifti` therefore reads the file itself, once, in
pieces, and checks:

- the file holds every byte its header promises: ``vox_offset + prod(dim) * bytes per voxel``
  (NIfTI-1 and NIfTI-2, any data type, ``.nii`` and ``.nii.gz``);
- a gzip stream is complete and intact: zlib checks each member's CRC-32 and length trailer;
- for float data, whether any stored voxel is NaN or infinite (the same pass, so no extra read).

With ``keep_voxels`` it also returns the voxel data (plain numeric types, no intensity scaling), so
:mod:`monetpipe.io.image` takes them from here and asks SimpleITK only for the geometry: the check then
costs no second decompression. Without, an uncompressed file whose data need no NaN scan costs one
``stat``. Compression is recognised by the gzip magic bytes, not the file name (zlib, like ITK, reads
an uncompressed file named ``.nii.gz``). A file whose header is not a single-file NIfTI is left to
SimpleITK to judge.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monetpipe.errors import DatasetError

_GZIP_MAGIC = b"\x1f\x8b"
_IN_CHUNK = 1 << 20  # compressed bytes read at a time
_OUT_CHUNK = 1 << 24  # most decompressed bytes held at a time
_NIFTI2_MAGIC = b"n+2\x00\r\n\x1a\n"
_HEAD_BYTES = 544  # a NIfTI-2 header plus its 4-byte extension flag; a NIfTI-1 one needs 352
_MAX_DEFLATE_RATIO = 1100  # deflate expands at most ~1032x
# NIfTI data type code -> bytes per voxel (nifti1.h); complex and RGB types included.
_ITEMSIZE = {
    2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4,
    1024: 8, 1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4,
}  # fmt: skip
_FLOAT_CODES = {16: "f4", 64: "f8", 1536: "f16"}  # float32, float64, float128 (numpy's longdouble)
# Plain numeric types whose stored bytes are the voxel values (no complex, RGB or float128).
_PLAIN_CODES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}


@dataclass(frozen=True)
class NiftiLayout:
    """Where a single-file NIfTI's voxel data lie, read from its header."""

    version: int
    endian: str
    datatype: int
    num_voxels: int
    data_offset: int
    simple: bool = True  # no scl_slope/scl_inter scaling, data at a standard offset: voxels are as stored

    @property
    def data_bytes(self) -> int:
        return self.num_voxels * _ITEMSIZE[self.datatype]

    @property
    def expected_bytes(self) -> int:
        """Header, extensions and voxel data: the least a complete file holds (decompressed)."""
        return self.data_offset + self.data_bytes

    @property
    def float_dtype(self) -> np.dtype | None:
        code = _FLOAT_CODES.get(self.datatype)
        if code is None or (code == "f16" and np.dtype(np.longdouble).itemsize != 16):
            return None
        return np.dtype(np.longdouble).newbyteorder(self.endian) if code == "f16" else np.dtype(self.endian + code)

    @property
    def plain_dtype(self) -> np.dtype | None:
        """The numpy type of the stored voxels when they are the values read, else None."""
        code = _PLAIN_CODES.get(self.datatype)
        return None if code is None or not self.simple else np.dtype(self.endian + code)


def parse_layout(head: bytes) -> NiftiLayout | None:
    """The data layout described by the first bytes of a ``.nii`` file; None if it is not one."""
    if len(head) >= 348 and head[344:348] == b"n+1\x00":
        for endian in "<>":
            if struct.unpack_from(endian + "i", head, 0)[0] == 348:
                dims = struct.unpack_from(endian + "8h", head, 40)
                datatype = struct.unpack_from(endian + "h", head, 70)[0]
                offset, slope, inter = struct.unpack_from(endian + "3f", head, 108)
                return _layout(1, endian, dims, datatype, offset, 348, slope, inter)
    if len(head) >= 540 and head[4:12] == _NIFTI2_MAGIC:
        for endian in "<>":
            if struct.unpack_from(endian + "i", head, 0)[0] == 540:
                dims = struct.unpack_from(endian + "8q", head, 16)
                datatype = struct.unpack_from(endian + "h", head, 12)[0]
                offset, slope, inter = struct.unpack_from(endian + "q2d", head, 168)
                return _layout(2, endian, dims, datatype, offset, 540, slope, inter)
    return None


def read_layout(path: str | os.PathLike) -> NiftiLayout | None:
    """The layout in the header of a ``.nii`` or ``.nii.gz`` file, or None when it has none readable."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            if not gz:
                return parse_layout(f.read(_HEAD_BYTES))
            head = b""
            for piece in _inflate(f):
                head += piece[: _HEAD_BYTES - len(head)]
                if len(head) == _HEAD_BYTES:
                    break
            return parse_layout(head)
    except (OSError, _StreamError):
        return None


def _layout(version, endian, dims, datatype, offset, header_size, slope, inter) -> NiftiLayout | None:
    if not 1 <= dims[0] <= 7 or datatype not in _ITEMSIZE or not np.isfinite(offset):
        return None  # not a header the NIfTI library reads either: SimpleITK reports it
    num_voxels = 1
    for d in dims[1 : dims[0] + 1]:
        num_voxels *= max(int(d), 1)
    # The NIfTI library reads the data at int(vox_offset), but never inside the header itself.
    data_offset = max(int(offset), header_size)
    standard = offset == int(offset) and offset >= header_size + 4
    unscaled = slope in (0.0, 1.0) and inter == 0.0  # NaN counts as scaled: left to SimpleITK
    return NiftiLayout(version, endian, datatype, num_voxels, data_offset, standard and unscaled)


@dataclass
class NiftiCheck:
    """What :func:`check_nifti` found in a complete, intact file."""

    layout: NiftiLayout | None  # None: not a single-file NIfTI header (SimpleITK decides)
    nonfinite: bool  # float voxels hold NaN or inf
    voxels: np.ndarray | None = None  # 1-D, stored type and byte order; only with keep_voxels and plain_dtype


def verify_nifti(path: str | os.PathLike, scan_nonfinite: bool = True) -> bool:
    """Check that a ``.nii``/``.nii.gz`` file is complete and intact; report stored NaN/inf voxels.

    Returns:
        True when the file's float voxel data hold a NaN or infinite value (always False for other types).

    Raises:
        DatasetError: see :func:`check_nifti`.
    """
    return check_nifti(path, scan_nonfinite).nonfinite


def check_nifti(path: str | os.PathLike, scan_nonfinite: bool = True, keep_voxels: bool = False) -> NiftiCheck:
    """Read a ``.nii``/``.nii.gz`` file once: refuse it if truncated or corrupt, scan it for NaN/inf.

    Args:
        path: the file.
        scan_nonfinite: look for NaN/inf in float voxel data.
        keep_voxels: also return the voxel data when their stored bytes are the values (plain numeric
            type, no ``scl_slope``/``scl_inter`` scaling).

    Raises:
        DatasetError: the file is truncated (fewer bytes than its header promises, or a gzip stream cut
            short) or corrupt (gzip CRC/length check or invalid compressed data). The message names the
            file, the expected and found sizes, and the fix.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(2) == _GZIP_MAGIC:
                f.seek(0)
                # deflate expands at most ~1032x: a header promising more is cut or corrupt, and must not
                # make us allocate its promise before the stream proves it wrong
                most = _MAX_DEFLATE_RATIO * os.fstat(f.fileno()).st_size
                return _check_stream(path, _inflate(f), scan_nonfinite, keep_voxels, most_bytes=most)
            f.seek(0)
            layout = parse_layout(f.read(_HEAD_BYTES))
            if layout is None:
                return NiftiCheck(None, False)
            size = os.fstat(f.fileno()).st_size
            if size < layout.expected_bytes:
                raise _truncated(path, layout.expected_bytes, size, "")
            if not keep_voxels and (not scan_nonfinite or layout.float_dtype is None):
                return NiftiCheck(layout, False)
            f.seek(layout.data_offset)
            return _check_stream(path, _chunks(f, layout.data_bytes), scan_nonfinite, keep_voxels, layout)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc}). Check the file's permissions.") from None


def _check_stream(
    path: Path,
    pieces: Iterator[bytes],
    scan_nonfinite: bool,
    keep_voxels: bool,
    layout: NiftiLayout | None = None,
    most_bytes: int | None = None,
) -> NiftiCheck:
    """Consume ``pieces``: the whole decompressed file, or (with ``layout``) its voxel data only."""
    total = 0 if layout is None else layout.data_offset  # decompressed bytes seen
    head, held = b"", []  # the pieces read before the header was complete
    sink = None if layout is None else _VoxelSink(layout, scan_nonfinite, keep_voxels, layout.data_offset)
    try:
        for piece in pieces:
            total += len(piece)
            if sink is not None:
                sink.feed(piece)
                continue
            head += piece[: _HEAD_BYTES - len(head)]
            held.append(piece)
            if len(head) == _HEAD_BYTES:
                layout = parse_layout(head)
                keep = keep_voxels and (most_bytes is None or layout is None or layout.expected_bytes <= most_bytes)
                sink = _VoxelSink(layout, scan_nonfinite, keep)
                for p in held:
                    sink.feed(p)
                held = []
    except _StreamError as exc:
        found = parse_layout(head) if layout is None else layout
        raise exc.error(path, found.expected_bytes if found else None, total) from None
    if sink is None:  # the whole file is shorter than a NIfTI-2 header
        layout = parse_layout(head)
        sink = _VoxelSink(layout, scan_nonfinite, keep_voxels)
        for p in held:
            sink.feed(p)
    if layout is not None and total < layout.expected_bytes:
        raise _truncated(path, layout.expected_bytes, total, " after decompression")
    return sink.result()


class _VoxelSink:
    """Takes the decompressed file piece by piece: copies out the voxel bytes and/or scans them for NaN/inf."""

    def __init__(self, layout: NiftiLayout | None, scan: bool, keep: bool, position: int = 0):
        self.layout = layout
        self.lo = layout.data_offset if layout is not None else 0
        self.hi = layout.expected_bytes if layout is not None else 0
        self.scan_dtype = layout.float_dtype if layout is not None and scan else None
        plain = layout.plain_dtype if layout is not None and keep else None
        self.voxels = np.empty(layout.num_voxels, plain) if plain is not None else None
        self.raw = self.voxels.view(np.uint8) if self.voxels is not None else None
        self.position = position  # offset of the next piece in the decompressed file
        self.found, self.rest = False, b""

    def feed(self, piece: bytes) -> None:
        start, self.position = self.position, self.position + len(piece)
        lo, hi = max(self.lo - start, 0), min(self.hi - start, len(piece))
        if lo >= hi:
            return
        if self.raw is not None:  # scanned whole in result()
            self.raw[start + lo - self.lo : start + hi - self.lo] = np.frombuffer(piece, np.uint8, hi - lo, lo)
            return
        if self.scan_dtype is None or self.found:
            return
        data = memoryview(piece)[lo:hi]
        if self.rest:
            data = memoryview(self.rest + data)
        usable = len(data) - len(data) % self.scan_dtype.itemsize
        values = np.frombuffer(data, dtype=self.scan_dtype, count=usable // self.scan_dtype.itemsize)
        self.found = not np.isfinite(values).all()
        self.rest = bytes(data[usable:])

    def result(self) -> NiftiCheck:
        if self.voxels is not None and self.scan_dtype is not None:
            self.found = not np.isfinite(self.voxels).all()
        return NiftiCheck(self.layout, self.found, self.voxels)


def _chunks(f, count: int) -> Iterator[bytes]:
    while count > 0 and (piece := f.read(min(count, _OUT_CHUNK))):
        count -= len(piece)
        yield piece


class _StreamError(Exception):
    def __init__(self, kind: str, detail: str = ""):
        super().__init__(kind)
        self.kind, self.detail = kind, detail

    def error(self, path: Path, expected: int | None, found: int) -> DatasetError:
        if self.kind == "corrupt":
            return DatasetError(f"{path}: corrupt NIfTI file ({self.detail}). Re-copy or re-download it.")
        if expected is not None and found < expected:
            return _truncated(path, expected, found, " after decompression", "; the gzip stream is cut")
        return _truncated(path, expected, found, "", f"the gzip stream ends without its end marker after {found} bytes")


def _truncated(path: Path, expected: int | None, found: int, unit: str, detail: str = "") -> DatasetError:
    if expected is not None and found < expected:
        detail = f"expected {expected} bytes{unit}, found {found}{detail}"
    return DatasetError(f"{path}: truncated NIfTI file ({detail}). Re-copy or re-download it.")


def _inflate(f) -> Iterator[bytes]:
    """The decompressed content of the gzip file ``f`` in pieces of at most 16 MiB; all members, CRC checked.

    Bytes after the last member that do not start another one are ignored, as zlib's own reader does.
    """
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data, total = f.read(_IN_CHUNK), 0
    while True:
        try:
            if not data:
                tail = d.flush()  # at most a few pending bytes: all input was consumed
                if tail:
                    yield tail
                if not d.eof:
                    raise _StreamError("truncated")
                return
            out = d.decompress(data, _OUT_CHUNK)
        except zlib.error as exc:
            raise _StreamError("corrupt", _zlib_reason(exc, total)) from None
        if out:
            total += len(out)
            yield out
        if d.eof:
            data = d.unused_data
            if len(data) < 2:
                data += f.read(_IN_CHUNK)
            if data[:2] != _GZIP_MAGIC:
                return
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            continue
        data = d.unconsumed_tail or f.read(_IN_CHUNK)


def _zlib_reason(exc: zlib.error, position: int) -> str:
    text = str(exc)
    if "incorrect data check" in text:
        return "gzip CRC check failed: the data are damaged"
    if "incorrect length check" in text:
        return "gzip length check failed: the data are damaged"
    return f"invalid compressed data after {position} decompressed bytes: {text.split(': ', 1)[-1]}"
