"""Which slices go into which batch, and reading them from the memory-mapped slice cache.

An epoch's batches are fixed by ``(seed, epoch)`` alone (:func:`epoch_schedule`): a permutation of
every training slice fills the uniformly drawn places of each batch, and ``foreground_fraction`` of
the places hold slices drawn to contain a foreground class (case, then class, then slice, each
uniformly). Batch ``b`` of the whole run is therefore the same whichever worker builds it, however
many workers there are, and after a ``--continue``. Each rank of a distributed run takes its own
columns of every global batch.

Slices are read one at a time from ``np.load(..., mmap_mode="r")`` arrays; the dataset is never
loaded into memory. Slices differ in size (resampled, not padded): each is zero-padded or cropped to
the patch size, the crop kept over the drawn class when the slice was drawn for foreground.
"""

from __future__ import annotations

import ctypes
import logging
import math
import signal
import sys
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase

from monetpipe.errors import MonetError
from monetpipe.io.atomic import read_json
from monetpipe.preprocessing.context import context_indices
from monetpipe.preprocessing.plans import Plans
from monetpipe.preprocessing.slice_cache import CacheLayout
from monetpipe.preprocessing.splits import unsafe_case_id

log = logging.getLogger(__name__)
NO_CLASS = -1


def derive_seed(*values: int) -> int:
    """A 32-bit seed from several integers (run seed, epoch, batch, rank ...), well mixed."""
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0])


def carve_inner_validation(
    case_ids: list[str], fraction: float = 0.1, seed: int = 12345
) -> tuple[list[str], list[str]]:
    """Split a fold's training cases into (train, inner validation): ``max(1, round(fraction * N))``
    cases drawn with ``seed`` from the sorted ids.

    Raises:
        MonetError: fewer than 2 cases (nothing would be left to train on).
    """
    ids = sorted(case_ids)
    if len(ids) < 2:
        raise MonetError(f"Training needs at least 2 cases (one is carved out for inner validation); got {len(ids)}.")
    n_inner = min(len(ids) - 1, max(1, int(round(fraction * len(ids)))))
    order = np.random.RandomState(seed).permutation(len(ids))
    inner = sorted(ids[i] for i in order[:n_inner])
    return [c for c in ids if c not in set(inner)], inner


@dataclass(frozen=True)
class CaseSlices:
    """One cached case: how many slices, and which slices hold each foreground class."""

    case_id: str
    num_slices: int
    class_slices: dict[int, np.ndarray]


class SliceIndex:
    """Every slice of a set of cached cases, addressable by one flat index."""

    def __init__(self, layout: CacheLayout, cases: list[CaseSlices], context_slices: int = 0) -> None:
        self.layout = layout
        self.cases = cases
        self.context_slices = context_slices  # the plans' K: batches hold slices z-K .. z+K as channels
        self.offsets = np.cumsum([0] + [c.num_slices for c in cases])
        self.foreground_cases = [i for i, c in enumerate(cases) if any(len(s) for s in c.class_slices.values())]

    @classmethod
    def build(cls, layout: CacheLayout, case_ids: list[str], plans: Plans) -> SliceIndex:
        """Read each case's cache entry (JSON only; arrays stay on disk).

        Raises:
            MonetError: a case is missing from the cache or was cached with other plans.
        """
        expected = plans.preprocessing_hash()
        cases = []
        for case_id in case_ids:
            problem = unsafe_case_id(case_id)
            if problem:
                raise MonetError(f"case id {case_id!r} {problem}; case ids are file names in {layout.slices}.")
            props_file = layout.properties_file(case_id)
            if not props_file.is_file() or not layout.data_file(case_id).is_file():
                raise MonetError(
                    f"{props_file}: case {case_id} is not in the slice cache. "
                    f"Run monet_plan_and_preprocess -t {plans.task} first."
                )
            props = read_json(props_file)
            if props.get("plans_hash") != expected:
                raise MonetError(
                    f"{props_file}: cached with other plans than {layout.plans_file}. "
                    f"Re-run monet_plan_and_preprocess -t {plans.task} to rebuild the cache."
                )
            class_slices = {int(k): np.asarray(v, dtype=np.int64) for k, v in props["class_slices"].items()}
            cases.append(CaseSlices(case_id, int(props["shape_after_resampling"][0]), class_slices))
        return cls(layout, cases, plans.context_slices)

    @property
    def num_slices(self) -> int:
        return int(self.offsets[-1])

    def locate(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat slice indices -> (case index, slice index within the case)."""
        case = np.searchsorted(self.offsets, flat, side="right") - 1
        return case, flat - self.offsets[case]


def iterations_per_epoch(num_slices: int, global_batch_size: int, cap: int) -> int:
    """One pass over the training slices, at most ``cap`` iterations."""
    return max(1, min(cap, math.ceil(num_slices / global_batch_size)))


def foreground_places(batch_size: int, fraction: float) -> np.ndarray:
    """Boolean mask of the batch places reserved for foreground slices: ``round(fraction * B)`` of
    them, spread evenly so every rank's share of the batch gets its part."""
    j = np.arange(batch_size)
    return np.floor((j + 1) * fraction + 0.5) > np.floor(j * fraction + 0.5)


def epoch_schedule(
    index: SliceIndex, epoch: int, iterations: int, batch_size: int, foreground_fraction: float, seed: int
) -> np.ndarray:
    """The batches of one epoch: ``(iterations, batch_size, 3)`` int64 of (case, slice, forced class or
    -1)."""
    rng = np.random.default_rng(derive_seed(seed, epoch, 0x5C4ED))
    fg_mask = (
        foreground_places(batch_size, foreground_fraction)
        if index.foreground_cases
        else np.zeros(batch_size, dtype=bool)
    )
    n_fg, n_uniform = int(fg_mask.sum()), int((~fg_mask).sum())
    out = np.empty((iterations, batch_size, 3), dtype=np.int64)

    need = iterations * n_uniform
    perm = (
        np.concatenate([rng.permutation(index.num_slices) for _ in range(math.ceil(need / index.num_slices))])
        if need
        else np.empty(0, dtype=np.int64)
    )
    case, sl = index.locate(perm[:need])
    out[:, ~fg_mask, 0] = case.reshape(iterations, n_uniform)
    out[:, ~fg_mask, 1] = sl.reshape(iterations, n_uniform)
    out[:, ~fg_mask, 2] = NO_CLASS

    if n_fg:
        fg_cases = np.asarray(index.foreground_cases)[rng.integers(0, len(index.foreground_cases), iterations * n_fg)]
        picks = np.empty((iterations * n_fg, 3), dtype=np.int64)
        for k, c in enumerate(fg_cases):
            present = [cls for cls, s in index.cases[c].class_slices.items() if len(s)]
            cls = present[rng.integers(len(present))]
            slices = index.cases[c].class_slices[cls]
            picks[k] = (c, slices[rng.integers(len(slices))], cls)
        out[:, fg_mask] = picks.reshape(iterations, n_fg, 3)
    return out


def rank_columns(batch_size: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous share of a global batch (the remainder goes to the first ranks)."""
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def _window(size: int, patch: int, rng: np.random.Generator, keep: int | None) -> tuple[int, int, int]:
    """(source start, source stop, destination start) along one axis for pad (centred) or crop (random,
    covering index ``keep`` when given)."""
    if size <= patch:
        return 0, size, (patch - size) // 2
    lo, hi = 0, size - patch
    if keep is not None:
        lo, hi = max(lo, keep - patch + 1), min(hi, keep)
    start = int(rng.integers(lo, hi + 1))
    return start, start + patch, 0


def read_patch(
    data: np.ndarray,
    seg: np.ndarray,
    slice_index: int,
    patch_size: tuple[int, int],
    forced_class: int,
    rng: np.random.Generator,
    out_data: np.ndarray,
    out_seg: np.ndarray,
    context_slices: int = 0,
) -> None:
    """Copy one slice, zero-padded or cropped to ``patch_size``, into ``out_data`` / ``out_seg``.

    ``out_*`` must be zero-filled. A crop of a slice drawn for ``forced_class`` keeps a random pixel of
    that class inside. With ``context_slices`` K, ``out_data`` gets the same window of slices
    ``slice_index - K .. slice_index + K`` (:func:`~monetpipe.preprocessing.context.stack_context`).
    """
    seg_slice = seg[slice_index]
    keep = (None, None)
    h, w = seg_slice.shape
    if forced_class != NO_CLASS and (h > patch_size[0] or w > patch_size[1]):
        ys, xs = np.nonzero(seg_slice == forced_class)
        if len(ys):
            k = rng.integers(len(ys))
            keep = (int(ys[k]), int(xs[k]))
    (y0, y1, dy), (x0, x1, dx) = (_window(s, p, rng, k) for s, p, k in zip((h, w), patch_size, keep, strict=True))
    if context_slices:
        idx = context_indices(np.array([slice_index]), data.shape[1], context_slices)[0]
        stack = np.asarray(data[:, idx, y0:y1, x0:x1])  # (C, 2K+1, h, w): slice-major below, as the predictor
        out_data[:, dy : dy + y1 - y0, dx : dx + x1 - x0] = stack.transpose(1, 0, 2, 3).reshape(-1, *stack.shape[2:])
    else:
        out_data[:, dy : dy + y1 - y0, dx : dx + x1 - x0] = data[:, slice_index, y0:y1, x0:x1]
    out_seg[dy : dy + y1 - y0, dx : dx + x1 - x0] = seg_slice[y0:y1, x0:x1]


class _CaseCache:
    """A few open memory maps per worker, least recently used first out (bounded open files)."""

    def __init__(self, layout: CacheLayout, size: int = 64) -> None:
        self.layout, self.size, self._open = layout, size, OrderedDict()

    def get(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        if case_id in self._open:
            self._open.move_to_end(case_id)
        else:
            self._open[case_id] = (
                np.load(self.layout.data_file(case_id), mmap_mode="r"),
                np.load(self.layout.seg_file(case_id), mmap_mode="r"),
            )
            if len(self._open) > self.size:
                self._open.popitem(last=False)
        return self._open[case_id]


def _die_with_parent() -> None:
    """In a background worker: get SIGTERM when the training process dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:  # pragma: no cover - unusual libc
            pass


class SliceBatchLoader(SlimDataLoaderBase):
    """An endless stream of training batches, from global batch ``start_batch`` on.

    Worker ``k`` of ``n`` builds batches ``start + k``, ``start + k + n``, ...; batchgenerators'
    MultiThreadedAugmenter returns them round-robin, i.e. in order. Before building batch ``b`` the
    global NumPy RNG is seeded from ``(seed, b, rank)``, so the augmentation that follows in the same
    worker is fixed by the batch number too.

    Yields dicts ``{"data": (B, C, H, W) float32, "seg": (B, 1, H, W) float32, "batch": b}``.
    """

    def __init__(
        self,
        index: SliceIndex,
        patch_size: tuple[int, int],
        num_channels: int,
        global_batch_size: int,
        iterations: int,
        foreground_fraction: float,
        seed: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 1,
    ) -> None:
        columns = rank_columns(global_batch_size, rank, world_size)
        super().__init__(None, columns.stop - columns.start, num_workers)
        self.index, self.patch_size, self.num_channels = index, tuple(patch_size), num_channels
        self.global_batch_size, self.iterations = global_batch_size, iterations
        self.foreground_fraction, self.seed = foreground_fraction, seed
        self.start_batch, self.rank, self.columns = start_batch, rank, columns
        self._count = 0
        self._schedule: tuple[int, np.ndarray] | None = None
        self._cases = _CaseCache(index.layout)

    def set_thread_id(self, thread_id: int) -> None:
        # Called in each background worker as it starts (and never in the training process itself
        # when num_workers == 0, where thread_id stays 0).
        super().set_thread_id(thread_id)
        _die_with_parent()

    def schedule_for(self, epoch: int) -> np.ndarray:
        if self._schedule is None or self._schedule[0] != epoch:
            self._schedule = (
                epoch,
                epoch_schedule(
                    self.index,
                    epoch,
                    self.iterations,
                    self.global_batch_size,
                    self.foreground_fraction,
                    self.seed,
                ),
            )
        return self._schedule[1]

    def batch(self, b: int) -> dict:
        """Build global batch ``b`` (this rank's columns of it)."""
        epoch, it = divmod(b, self.iterations)
        entries = self.schedule_for(epoch)[it, self.columns]
        seed = derive_seed(self.seed, b, self.rank)
        np.random.seed(seed)  # batchgenerators' transforms draw from the global NumPy RNG
        rng = np.random.default_rng(seed)
        data = np.zeros((len(entries), self.num_channels, *self.patch_size), dtype=np.float32)
        seg = np.zeros((len(entries), 1, *self.patch_size), dtype=np.float32)
        for i, (case, sl, cls) in enumerate(entries):
            case_data, case_seg = self._cases.get(self.index.cases[case].case_id)
            read_patch(
                case_data,
                case_seg,
                int(sl),
                self.patch_size,
                int(cls),
                rng,
                data[i],
                seg[i, 0],
                self.index.context_slices,
            )
        return {"data": data, "seg": seg, "batch": b}

    def generate_train_batch(self) -> dict:
        workers = self.number_of_threads_in_multithreaded or 1
        b = self.start_batch + self.thread_id + self._count * workers
        self._count += 1
        return self.batch(b)
