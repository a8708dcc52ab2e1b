"""A small, seeded MSD-format task generator: the embedded default task for the demo and the tests.

Two kinds, each written as an MSD original task folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``,
``imagesTs/``) that :func:`monetpipe.io.dataset.load_task` reads:

- ``ct`` -> ``Task901_SyntheticCT``: int16 Hounsfield units, 0.8 x 0.8 x 2.5 mm, direction
  diag(-1, -1, 1); air outside a body ellipse, fat, soft tissue, a bright "spine", an enhanced organ-like
  blob (label 1) holding a hypodense lesion (label 2).
- ``mr`` -> ``Task902_SyntheticMR``: 4D float32 with the channels last (x, y, z, c), as MSD ships
  Task01; T1 and T2 with opposite contrasts, an arbitrary per-case scale and bias field, exactly zero
  outside the head; 1 x 1 x 1.2 mm, a small oblique rotation; labels 0/1/2.

Every case is drawn from its own random stream, seeded by ``(seed, kind, case number)``, so a case's
content depends only on those three values (not on how many cases were asked for). Case sizes, origins,
organ and lesion placement vary per case. See docs/synthetic.md for what each property exercises.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from monetpipe.errors import DatasetError
from monetpipe.io.atomic import atomic_path, read_json, write_json
from monetpipe.io.image import Geometry, write_image, write_label

logger = logging.getLogger(__name__)

#: Bumped whenever the generated content changes, so an old folder is never mistaken for a current one.
GENERATOR_VERSION = 1
LABELS = {"0": "background", "1": "organ", "2": "lesion"}


@dataclass(frozen=True)
class _Kind:
    code: int  # part of every case's seed, so the two kinds never share random streams
    task_id: int
    name: str
    prefix: str
    channels: tuple[str, ...]
    size: tuple[int, int, int]  # default (x, y, z) of a case, before per-case variation
    spacing: tuple[float, float, float]  # (x, y, z) mm
    min_size: tuple[int, int, int]  # the smallest (x, y, z) that always holds an organ with a lesion inside
    description: str


KINDS: dict[str, _Kind] = {
    "ct": _Kind(
        1,
        901,
        "SyntheticCT",
        "synct",
        ("CT",),
        (96, 80, 24),
        (0.8, 0.8, 2.5),
        (32, 32, 8),
        "Synthetic CT-like task from monetpipe: int16 HU, anisotropic 0.8x0.8x2.5 mm, an enhanced "
        "organ-like blob (label 1) with a hypodense lesion inside (label 2).",
    ),
    "mr": _Kind(
        2,
        902,
        "SyntheticMR",
        "synmr",
        ("T1", "T2"),
        (72, 88, 36),
        (1.0, 1.0, 1.2),
        (32, 32, 16),
        "Synthetic two-sequence MR-like task from monetpipe: 4D (x, y, z, channel) float32, arbitrary "
        "scale, zero outside the head, an organ-like region (label 1) with a lesion inside (label 2).",
    ),
}


def task_folder_name(kind: str, task_id: int | None = None) -> str:
    """``Task901_SyntheticCT`` for ``"ct"``, ``Task902_SyntheticMR`` for ``"mr"`` (or with ``task_id``)."""
    spec = _kind(kind)
    return f"Task{spec.task_id if task_id is None else task_id:03d}_{spec.name}"


def make_synthetic_task(
    output_dir: str | os.PathLike,
    kind: str = "ct",
    num_cases: int = 12,
    num_test: int = 2,
    seed: int = 0,
    task_id: int | None = None,
    shape: tuple[int, int, int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic MSD task folder ``<output_dir>/Task901_SyntheticCT`` (or ``Task902_SyntheticMR``).

    The folder is built under a hidden temporary name and moved into place when complete, so a reader
    never sees half a task. If the folder already exists and was written by this generator with the
    same arguments and version, it is left untouched and returned (a re-run is a no-op); any other
    existing folder is only replaced with ``overwrite=True``.

    Args:
        output_dir: the raw-data root (e.g. ``MONET_raw``); created if needed.
        kind: ``"ct"`` (3D int16 HU) or ``"mr"`` (4D float32, channels T1, T2).
        num_cases: training cases (``imagesTr`` + ``labelsTr``), numbered from 001.
        num_test: test cases (``imagesTs`` only, no labels, as MSD ships them), numbered after training.
        seed: non-negative seed; the same seed gives identical arrays.
        task_id: the task number in the folder name (default 901 for ct, 902 for mr).
        shape: the typical case size ``(x, y, z)`` in voxels, as SimpleITK's ``GetSize()`` orders it
            (default ``(96, 80, 24)`` for ct, ``(72, 88, 36)`` for mr); each case varies around it by
            a few voxels. At least ``(32, 32, 8)`` for ct, ``(32, 32, 16)`` for mr.
        overwrite: replace an existing folder that differs from what would be written.

    Returns:
        The task folder.

    Raises:
        ValueError: an unknown kind or out-of-range argument.
        DatasetError: the folder exists, differs, and ``overwrite`` is false.
    """
    spec = _kind(kind)
    size = tuple(int(s) for s in (spec.size if shape is None else shape))
    if len(size) != 3 or any(s < m for s, m in zip(size, spec.min_size, strict=True)):
        raise ValueError(f"shape must be (x, y, z) of at least {spec.min_size} for kind {kind!r}, got {shape}")
    if num_cases < 1 or num_test < 0:
        raise ValueError(f"need num_cases >= 1 and num_test >= 0, got {num_cases} and {num_test}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")

    output_dir = Path(output_dir).expanduser().resolve()
    target = output_dir / task_folder_name(kind, task_id)
    stamp = {
        "generator": "monetpipe.synthetic",
        "version": GENERATOR_VERSION,
        "kind": kind,
        "num_cases": num_cases,
        "num_test": num_test,
        "seed": seed,
        "shape": list(size),
    }
    if target.exists() and not overwrite:
        if _is_same_task(target, stamp):
            logger.info("%s is already up to date; nothing written", target)
            return target
        raise DatasetError(
            f"{target}: already exists and is not a complete task written by this generator with these "
            f"arguments. Pass overwrite=True (--overwrite) to replace it, or choose another output folder."
        )

    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".tmp-{uuid.uuid4().hex[:8]}-{target.name}"
    try:
        _write_task(tmp, spec, target.name, size, num_cases, num_test, seed, stamp)
        _swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote %s (%d training, %d test cases)", target, num_cases, num_test)
    return target


def make_case(
    kind: str, case_number: int, seed: int = 0, shape: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Generate one case in memory, exactly as :func:`make_synthetic_task` writes it.

    Args:
        kind: ``"ct"`` or ``"mr"``.
        case_number: the case's number (its file is ``<prefix>_<number:03d>``).
        seed: the task seed.
        shape: typical size ``(x, y, z)``, as in :func:`make_synthetic_task`.

    Returns:
        ``image`` (ct: int16 ``(Z, Y, X)``; mr: float32 ``(C, Z, Y, X)``), ``label`` uint8 ``(Z, Y, X)``
        and the case's geometry.
    """
    spec = _kind(kind)
    rng = np.random.default_rng(np.random.SeedSequence([seed, spec.code, case_number]))
    size = _case_size(rng, spec.size if shape is None else shape, spec.min_size)
    geometry = _case_geometry(rng, kind, size, spec.spacing)
    make = _ct_case if kind == "ct" else _mr_case
    image, label = make(rng, geometry)
    return image, label, geometry


# --- folder writing -------------------------------------------------------------------------------------


def _kind(kind: str) -> _Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic task kind {kind!r}; choose one of {sorted(KINDS)}")
    return KINDS[kind]


def _is_same_task(folder: Path, stamp: dict) -> bool:
    json_path = folder / "dataset.json"
    try:
        data = read_json(json_path)
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("synthetic") != stamp:
        return False
    files = [e[k] for e in data.get("training", []) for k in ("image", "label")] + data.get("test", [])
    return all((folder / f).is_file() for f in files)


def _write_task(
    folder: Path,
    spec: _Kind,
    name: str,
    size: tuple[int, int, int],
    num_cases: int,
    num_test: int,
    seed: int,
    stamp: dict,
) -> None:
    kind = stamp["kind"]
    training, test = [], []
    for number in range(1, num_cases + num_test + 1):
        case_id = f"{spec.prefix}_{number:03d}"
        image, label, geometry = make_case(kind, number, seed, size)
        sub = "imagesTr" if number <= num_cases else "imagesTs"
        _write_case_image(image, geometry, folder / sub / f"{case_id}.nii.gz")
        if number <= num_cases:
            write_label(label, geometry, folder / "labelsTr" / f"{case_id}.nii.gz")
            training.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
        else:
            test.append(f"./imagesTs/{case_id}.nii.gz")
    (folder / "imagesTs").mkdir(parents=True, exist_ok=True)
    write_json(
        {
            "name": name.split("_", 1)[1],
            "description": spec.description,
            "reference": "generated by monetpipe.synthetic (monet_synthetic_task)",
            "licence": "CC0",
            "release": f"monetpipe synthetic generator v{GENERATOR_VERSION}",
            "tensorImageSize": "3D" if len(spec.channels) == 1 else "4D",
            "modality": {str(i): c for i, c in enumerate(spec.channels)},
            "labels": dict(LABELS),
            "numTraining": num_cases,
            "numTest": num_test,
            "training": training,
            "test": test,
            "synthetic": stamp,
        },
        folder / "dataset.json",
    )


def _write_case_image(image: np.ndarray, geometry: Geometry, path: Path) -> None:
    if image.ndim == 3:
        write_image(image, geometry, path)
        return
    # MSD stores multi-channel cases as one 4D NIfTI (x, y, z, c): join the channel volumes as a series.
    channels = [geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(c))) for c in image]
    with atomic_path(path) as tmp:
        sitk.WriteImage(sitk.JoinSeries(channels), str(tmp), True)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` folder to ``target``; an old ``target`` is moved aside, then deleted."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".old-{uuid.uuid4().hex[:8]}-{target.name}")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- one case: size and geometry ------------------------------------------------------------------------


def _case_size(
    rng: np.random.Generator, base: tuple[int, int, int], min_size: tuple[int, int, int]
) -> tuple[int, int, int]:
    """The typical size give or take a few voxels (5 % in-plane, 2 slices), never below ``min_size``."""
    out = []
    for s, low in zip(base, min_size, strict=True):
        delta = max(1, round(0.05 * s)) if len(out) < 2 else min(2, max(1, s // 8))
        out.append(max(low, int(s) + int(rng.integers(-delta, delta + 1))))
    return tuple(out)  # type: ignore[return-value]


def _case_geometry(
    rng: np.random.Generator, kind: str, size: tuple[int, int, int], spacing: tuple[float, float, float]
) -> Geometry:
    extent = np.asarray(size) * np.asarray(spacing)
    if kind == "ct":  # scanner-like: LPS flips of x and y, a table position in z
        direction = np.diag([-1.0, -1.0, 1.0])
        origin = (extent[0] / 2 + rng.uniform(-15, 15), extent[1] / 2 + rng.uniform(-15, 15), -rng.uniform(200, 600))
    else:  # an oblique MR acquisition: a few degrees about z and x
        a, b = np.deg2rad(rng.uniform(-6, 6, size=2))
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        direction = rz @ rx
        origin = tuple(-extent / 2 + rng.uniform(-10, 10, size=3))
    return Geometry(
        tuple(int(s) for s in size),
        tuple(float(s) for s in spacing),
        tuple(round(float(o), 2) for o in origin),
        tuple(float(d) for d in direction.ravel()),
    )


# --- one case: shapes -----------------------------------------------------------------------------------


def _grid(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in mm from the volume centre, as broadcastable (z, y, x) arrays."""
    nz, ny, nx = geometry.shape_zyx
    sz, sy, sx = geometry.spacing_zyx
    z = ((np.arange(nz) - (nz - 1) / 2) * sz)[:, None, None]
    y = ((np.arange(ny) - (ny - 1) / 2) * sy)[None, :, None]
    x = ((np.arange(nx) - (nx - 1) / 2) * sx)[None, None, :]
    return z, y, x


def _smooth_field(
    rng: np.random.Generator, grid: tuple[np.ndarray, ...], wavelength: tuple[float, float], terms: int = 4
) -> np.ndarray:
    """A smooth random field in about [-1, 1]: a few plane waves of random direction and phase."""
    z, y, x = grid
    field = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape))
    for _ in range(terms):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        kz, ky, kx = 2 * np.pi / rng.uniform(*wavelength) * direction
        # cos(k.r + phi) as the real part of a product of three 1D complex waves: one full-size product.
        wave = np.exp(1j * (kz * z + rng.uniform(0, 2 * np.pi))) * np.exp(1j * ky * y) * np.exp(1j * kx * x)
        field += wave.real
    return field / np.sqrt(terms / 2)


def _blob(
    rng: np.random.Generator,
    grid: tuple[np.ndarray, ...],
    centre: np.ndarray,
    semi_axes: np.ndarray,
    angle: float,
    wobble: float,
) -> np.ndarray:
    """A deformed ellipsoid (rotated by ``angle`` in-plane): its normalized radius is modulated smoothly."""
    z, y, x = (g - c for g, c in zip(grid, centre, strict=True))
    u = np.cos(angle) * x + np.sin(angle) * y
    v = -np.sin(angle) * x + np.cos(angle) * y
    radius = np.sqrt((u / semi_axes[2]) ** 2 + (v / semi_axes[1]) ** 2 + (z / semi_axes[0]) ** 2)
    field = _smooth_field(rng, grid, (2.0 * semi_axes.min(), 4.0 * semi_axes.max()), terms=3)
    return radius <= 1.0 + wobble * np.clip(field, -1.5, 1.5)


def _depth(mask: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) from each voxel of ``mask`` to the nearest voxel outside it or outside the image."""
    depth = np.zeros(mask.shape)
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    if not boxes:
        return depth
    # Only the mask's bounding box, padded with background: faster, and the image border counts as outside.
    box = boxes[0]
    inner = ndimage.distance_transform_edt(np.pad(mask[box], 1), sampling=spacing_zyx)
    depth[box] = inner[1:-1, 1:-1, 1:-1]
    return depth


def _organ_and_lesion(
    rng: np.random.Generator,
    grid: tuple[np.ndarray, ...],
    draw_organ: Callable[[], np.ndarray],
    spacing_zyx: tuple[float, float, float],
    tries: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw an organ until one is thick enough to hold a lesion, then place the lesion strictly inside it.

    "Strictly": every lesion voxel has organ (not background) as its neighbour along every axis, so the
    lesion is at least one voxel (the largest spacing) deep inside the organ.
    """
    margin = max(spacing_zyx) + 0.1
    min_radius = 1.2 * min(spacing_zyx)
    for _ in range(tries):
        organ = draw_organ()
        depth = _depth(organ, spacing_zyx)
        if depth.max() - margin >= min_radius:
            break
    else:
        raise ValueError("case too small to hold an organ with a lesion inside; use a larger shape")
    radius = max(min_radius, min(rng.uniform(0.4, 0.65) * depth.max(), depth.max() - margin))
    candidates = np.flatnonzero(depth >= radius + margin)
    centre_index = np.unravel_index(candidates[rng.integers(len(candidates))], organ.shape)
    centre = np.array([g.ravel()[i] for g, i in zip(grid, centre_index, strict=True)])
    semi_axes = radius * rng.uniform(0.7, 1.0, size=3)
    lesion = _blob(rng, grid, centre, semi_axes, rng.uniform(0, np.pi), wobble=0.12)
    # The wobble may push the blob past ``radius``; the ball keeps it where the organ surely is.
    ball = sum(((g - c) / radius) ** 2 for g, c in zip(grid, centre, strict=True)) <= 1.0
    return organ, lesion & ball & organ


def _ct_case(rng: np.random.Generator, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    grid = _grid(geometry)
    z, y, x = grid
    extent = np.array(geometry.spacing_zyx) * np.array(geometry.shape_zyx)

    # Body: an elliptic cylinder whose width breathes a little along z; fat under the skin.
    a, b = extent[2] / 2 * rng.uniform(0.82, 0.92), extent[1] / 2 * rng.uniform(0.78, 0.9)
    taper = 1 + 0.04 * np.sin(z / extent[0] * np.pi + rng.uniform(0, np.pi))
    body_r = (x / (a * taper)) ** 2 + ((y - rng.uniform(-2, 2)) / (b * taper)) ** 2
    body, inner = body_r <= 1.0, body_r <= rng.uniform(0.72, 0.8)
    spine_y, spine_x = 0.62 * b, rng.uniform(-3, 3)
    spine = np.broadcast_to((y - spine_y) ** 2 + (x - spine_x) ** 2 <= (0.16 * b) ** 2, body.shape)

    # Organ: an enhanced deformed ellipsoid in the anterior half, clear of the spine.
    in_a, in_b = 0.87 * a, 0.87 * b
    centre = np.array(
        [rng.uniform(-0.1, 0.1) * extent[0], rng.uniform(-0.3, 0.0) * in_b, rng.uniform(-0.25, 0.25) * in_a]
    )
    keep_out = ~inner | ndimage.binary_dilation(spine, iterations=2)

    def draw_organ() -> np.ndarray:
        semi = np.array(
            [rng.uniform(0.25, 0.35) * extent[0], rng.uniform(0.5, 0.62) * in_b, rng.uniform(0.5, 0.7) * in_b]
        )
        return _blob(rng, grid, centre, semi, rng.uniform(-np.pi / 4, np.pi / 4), wobble=0.12) & ~keep_out

    organ, lesion = _organ_and_lesion(rng, grid, draw_organ, geometry.spacing_zyx)
    # An unlabelled, less enhanced blob beside the organ: brightness alone must not define "organ".
    side = 1.0 if centre[2] < 0 else -1.0
    decoy_centre = np.array([rng.uniform(-0.15, 0.15) * extent[0], 0.25 * in_b, side * 0.6 * in_a])
    decoy = _blob(
        rng,
        grid,
        decoy_centre,
        np.array([0.22 * extent[0], 0.22 * in_b, 0.16 * in_a]),
        rng.uniform(-0.5, 0.5),
        wobble=0.1,
    )
    decoy &= inner & ~spine & ~ndimage.binary_dilation(organ, iterations=2)

    tissue = 40.0 + rng.uniform(-5, 5)
    organ_hu = tissue + rng.uniform(65, 85)
    hu = np.full(geometry.shape_zyx, -1000.0)
    hu[body] = -90.0 + rng.uniform(-10, 10)
    hu[inner] = tissue
    hu[spine & inner] = rng.uniform(350, 450)
    hu[decoy] = tissue + rng.uniform(25, 35)
    hu[organ] = organ_hu
    hu[lesion] = organ_hu - rng.uniform(50, 70)
    texture = ndimage.gaussian_filter(rng.standard_normal(hu.shape), sigma=(0.6, 2.0, 2.0))
    hu += 6.0 * texture / (texture.std() + 1e-6) * (hu > -500)
    hu = ndimage.gaussian_filter(hu, sigma=(0.3, 0.7, 0.7))  # partial volume at every edge
    hu += rng.normal(0.0, 12.0, size=hu.shape)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    label = np.zeros(geometry.shape_zyx, np.uint8)
    label[organ] = 1
    label[lesion] = 2
    return image, label


def _mr_case(rng: np.random.Generator, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    grid = _grid(geometry)
    z, y, x = grid
    extent = np.array(geometry.spacing_zyx) * np.array(geometry.shape_zyx)

    # Head (skull-stripped, as MSD's brain tasks): zero outside; white matter, grey rim, two ventricles.
    head_semi = extent / 2 * np.array([rng.uniform(0.78, 0.86), rng.uniform(0.74, 0.84), rng.uniform(0.72, 0.82)])
    head_centre = rng.uniform(-2, 2, size=3)
    head = _blob(rng, grid, head_centre, head_semi, rng.uniform(-0.1, 0.1), wobble=0.04)
    white = _blob(rng, grid, head_centre, head_semi * 0.72, 0.0, wobble=0.08) & head
    ventricles = np.zeros_like(head)
    for side in (-1, 1):
        c = head_centre + np.array([0.0, -0.05 * head_semi[1], side * 0.16 * head_semi[2]])
        ventricles |= _blob(rng, grid, c, head_semi * np.array([0.3, 0.28, 0.09]), 0.0, wobble=0.1)

    # Organ: a deformed, roughly isotropic blob off-centre, well inside the head.
    deep_head = _blob(rng, grid, head_centre, head_semi * 0.88, 0.0, wobble=0.0)

    def draw_organ() -> np.ndarray:
        semi = np.minimum(
            rng.uniform(0.34, 0.44) * np.median(head_semi) * rng.uniform(0.85, 1.15, size=3), 0.6 * head_semi
        )
        centre = head_centre + rng.uniform(-0.4, 0.4, size=3) * (head_semi - semi)
        return _blob(rng, grid, centre, semi, rng.uniform(0, np.pi), wobble=0.12) & deep_head

    organ, lesion = _organ_and_lesion(rng, grid, draw_organ, geometry.spacing_zyx)

    #            grey  white  csf   organ  lesion   (relative signal; the two sequences disagree)
    contrast = {"T1": (0.75, 1.00, 0.30, 0.55, 1.35), "T2": (0.90, 0.70, 1.80, 1.50, 0.80)}
    channels = []
    bias = np.exp(0.15 * _smooth_field(rng, grid, (1.5 * extent.max(), 3.0 * extent.max()), terms=2))
    for grey, whit, csf, org, les in contrast.values():
        signal = np.zeros(geometry.shape_zyx)
        signal[head] = grey
        signal[white] = whit
        signal[ventricles & head] = csf
        signal[organ] = org
        signal[lesion] = les
        signal = ndimage.gaussian_filter(signal, sigma=(0.5, 0.6, 0.6))
        gain = rng.uniform(200.0, 2000.0)  # MR intensities have no unit: each case and sequence its own
        noisy = np.abs(signal * bias + rng.normal(0.0, 0.04, size=signal.shape))
        channels.append(np.where(head, noisy * gain, 0.0).astype(np.float32))

    label = np.zeros(geometry.shape_zyx, np.uint8)
    label[organ] = 1
    label[lesion] = 2
    return np.stack(channels), label
