"""``predict_folder``: segment every case of a folder with a trained model (what ``monet_predict`` runs).

Per case: read -> preprocess exactly as in training -> slice-batched prediction (fold ensemble, optional
mirror TTA) -> probabilities back to the original grid -> labels in the dataset's values -> optional
largest component -> ``OUT/<case>.nii.gz`` (uint8, the input's exact geometry: its own NIfTI header, see
:mod:`monetpipe.io.nifti`), written atomically.

Robust batch behaviour: a broken case is reported by name and skipped while the others finish; existing
outputs are skipped (so an interrupted run resumes) unless ``overwrite``; the input folder is never
written to. With ``overlap`` the next case is read and preprocessed, and the previous one restored and
written, in two helper threads while the network runs (SimpleITK and PyTorch release the GIL there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from monetpipe.errors import MonetError
from monetpipe.inference.inputs import InputCase, group_input_files, is_utf8, printable
from monetpipe.io.atomic import atomic_path
from monetpipe.io.image import Geometry, read_volume
from monetpipe.preprocessing.plans import Plans

log = logging.getLogger(__name__)

STAGES = ("read", "preprocess", "network", "restore", "postprocess", "write")


@dataclass
class CaseOutcome:
    """One case's fate: ``predicted``, ``skipped`` (output existed) or ``failed`` (with the error)."""

    case_id: str
    status: str
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class PredictionSummary:
    """The result of a folder prediction: per-case outcomes and where the time went."""

    input_dir: Path
    output_dir: Path
    outcomes: list[CaseOutcome]
    seconds: float
    folds: list = field(default_factory=list)

    @property
    def predicted(self) -> list[str]:
        return [o.case_id for o in self.outcomes if o.status == "predicted"]

    @property
    def skipped(self) -> list[str]:
        return [o.case_id for o in self.outcomes if o.status == "skipped"]

    @property
    def failed(self) -> dict[str, str]:
        return {o.case_id: o.error or "" for o in self.outcomes if o.status == "failed"}

    @property
    def ok(self) -> bool:
        return not self.failed

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage summed over the predicted cases (stages overlap in time with ``overlap``)."""
        return {s: sum(o.timings.get(s, 0.0) for o in self.outcomes) for s in STAGES}

    def report(self) -> str:
        """A few lines for the end of a run: counts, time per stage, and every failure by name."""
        lines = [
            f"{len(self.predicted)} predicted, {len(self.skipped)} skipped (output exists), "
            f"{len(self.failed)} failed; {self.seconds:.1f} s -> {self.output_dir}"
        ]
        if self.predicted:
            st = self.stage_seconds()
            lines.append("time per stage (s): " + ", ".join(f"{s} {st[s]:.1f}" for s in STAGES))
        for case_id, error in self.failed.items():
            lines.append(f"FAILED {case_id}: {error}")
        return "\n".join(lines)


@dataclass(frozen=True)
class PredictOptions:
    """What to do with every case of a run: ``monet_predict``'s per-run choices as one value.

    Attributes:
        tta: average over the flips of ``mirror_axes`` (4x the network time for both axes, 2x for one).
        save_probabilities: also write ``<case>.npz`` (float16 probabilities on the original grid).
        largest_component: keep only the largest connected component of each label.
        batch_size: slices per forward pass (``None``: :func:`default_batch_size`).
        overwrite: re-predict cases whose output already exists.
        overlap: read the next and write the previous case in helper threads while the network runs.
        progress: show a progress bar.
        mirror_axes: the in-plane axes ``tta`` flips (0: rows, 1: columns): those the models were trained
            to see flipped (:attr:`~monetpipe.inference.loading.LoadedModels.mirror_axes`).
    """

    # predict_folder and predict_files build it positionally from their keywords: keep this order.
    tta: bool = False
    save_probabilities: bool = False
    largest_component: bool = False
    batch_size: int | None = None
    overwrite: bool = False
    overlap: bool = True
    progress: bool = True
    mirror_axes: tuple[int, ...] = (0, 1)


@dataclass
class _Prepared:
    case: InputCase
    data: np.ndarray
    properties: dict
    geometry: Geometry
    timings: dict[str, float]


def predict_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    model_folder: str | Path,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    tta: bool = False,
    save_probabilities: bool = False,
    largest_component: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    overwrite: bool = False,
    num_threads: int | None = None,
    overlap: bool = True,
    backend: str = "torch",
    workers: int | None = None,
    precision: str = "auto",
) -> PredictionSummary:
    """Segment every case in ``input_dir`` with ``model_folder``'s model into ``output_dir/<case>.nii.gz``.

    Args:
        input_dir: NIfTI images, nnU-Net (``case_0000.nii.gz`` per channel) or MSD (``case.nii.gz``) named.
        output_dir: where label maps go (created; must not be, or lie inside, ``input_dir``).
        model_folder: a results folder ``<model>__<plans>/`` (plans.json + fold_<k>/checkpoint_*.pth).
        folds: folds to ensemble (default: every numbered fold with the checkpoint; ``"all"`` selects
            the model trained on all cases).
        checkpoint: ``final``, ``best`` or ``latest``.
        tta: average over the flips the model was trained with (``--mirror``; both axes: horizontal,
            vertical and both, 4x the network time; ``--mirror-axes 1``: horizontal, 2x); models trained
            without flips are refused (see :func:`~monetpipe.inference.loading.check_tta`).
        save_probabilities: also write ``<case>.npz`` with key ``probabilities``: float16
            ``(K incl. background, Z, Y, X)`` on the original grid.
        largest_component: keep only the largest connected component of each label.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        batch_size: slices per forward pass (default: :func:`default_batch_size`).
        overwrite: re-predict cases whose output already exists.
        num_threads: PyTorch CPU threads (default: :func:`~monetpipe.devices.configure_threads`).
        overlap: read the next and write the previous case in helper threads while the network runs.
        backend: ``torch`` (default), ``torch_compile``, ``onnxruntime`` or ``eager`` (see docs/performance.md).
        workers: slice-parallel workers on CPU, each with ``num_threads // workers`` threads (default:
            :func:`~monetpipe.inference.loading.default_workers`: 2 when there are 2 or more threads).
        precision: ``auto`` (default: fp32 unless a reduced precision was prepared, validated and measured
            faster for every fold, and the CPU has it), ``fp32``, ``bf16`` or ``int8`` (docs/inference.md).

    Returns:
        The summary; ``summary.failed`` maps each failed case to its error (the run itself does not raise).

    Raises:
        MonetError: unusable folders or model (nothing is predicted), e.g. ``output_dir`` in ``input_dir``
            or not writable; checked before the model is loaded.
    """
    from monetpipe.inference.loading import check_tta, load_models

    options = PredictOptions(tta, save_probabilities, largest_component, batch_size, overwrite, overlap)
    check_folders(input_dir, output_dir)
    check_writable(output_dir)
    with cpu_workers(device, num_threads, workers) as workers:
        loaded = load_models(
            model_folder, folds, checkpoint, device, backend=backend, workers=workers, precision=precision
        )
        check_tta(tta, loaded, Path(model_folder))
        if tta:
            log.info("mirror TTA over in-plane axes %s (those the model was trained to flip)", loaded.mirror_axes)
        summary = _predict_input_folder(
            input_dir,
            output_dir,
            loaded.models,
            loaded.plans,
            replace(options, mirror_axes=loaded.mirror_axes),
            loaded.device,
            loaded.channels_last,
            loaded.workers,
        )
    summary.folds = list(loaded.folds)
    return summary


def predict_network(
    cases: Sequence[InputCase],
    output_dir: str | Path,
    network,
    plans: Plans,
    device: str = "auto",
    backend: str = "torch",
    num_threads: int | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> PredictionSummary:
    """:func:`predict_folder` for given cases and one network in memory: training's final validation.

    Everything after loading the checkpoint is ``monet_predict``'s code with its defaults: threads and
    slice-parallel workers (:func:`cpu_workers`), the network form
    (:func:`~monetpipe.inference.loading.inference_form`), reading, preprocessing, batching, restoring
    and writing (:func:`predict_cases`). Existing outputs are overwritten.

    Args:
        cases: the cases (id and image files), e.g. from a task's dataset.json.
        output_dir: where ``<case>.nii.gz`` go.
        network: an eval-mode network on the CPU with the weights to use (what
            :func:`~monetpipe.inference.loading.network_from_checkpoint` returns).
        plans: the plans it was trained with.
        Others: as in :func:`predict_folder`.
    """
    from monetpipe.devices import resolve_device
    from monetpipe.inference.loading import default_channels_last, inference_form

    check_writable(output_dir)
    with cpu_workers(device, num_threads, workers) as workers:
        torch_device = resolve_device(str(device))
        channels_last = default_channels_last(torch_device)
        model = inference_form(network, torch_device, channels_last, backend, workers)
        input_dir = cases[0].files[0].parent if cases and cases[0].files else Path(".")
        options = PredictOptions(batch_size=batch_size, overwrite=True, progress=progress)
        return predict_cases(
            cases, input_dir, output_dir, [model], plans, options, torch_device, channels_last, workers
        )


@contextlib.contextmanager
def cpu_workers(device, num_threads: int | None, workers: int | None) -> Iterator[int]:
    """Set PyTorch's CPU threads the way ``monet_predict`` does and yield the slice-parallel workers.

    On CPU: :func:`~monetpipe.devices.configure_threads` and (unless given)
    :func:`~monetpipe.inference.loading.default_workers`; the thread count is set back afterwards, since
    the workers lower it process-wide while they run. Elsewhere: one worker.
    """
    import torch

    from monetpipe.devices import configure_threads, resolve_device
    from monetpipe.inference.loading import default_workers

    threads = None
    if resolve_device(str(device)).type == "cpu":
        threads = configure_threads(num_threads)
        workers = default_workers("cpu", threads) if workers is None else workers
        log.info(
            "CPU inference with %d thread(s)%s",
            threads,
            f" as {workers} slice-parallel workers" if workers > 1 else "",
        )
    elif workers is None:
        workers = 1
    try:
        yield workers
    finally:
        if threads is not None and workers > 1:
            torch.set_num_threads(threads)


def check_folders(input_dir: str | Path, output_dir: str | Path) -> None:
    """Refuse an output folder equal to or inside the input folder (inputs are never written to)."""
    inp, out = Path(input_dir).resolve(), Path(output_dir).resolve()
    if out == inp or inp in out.parents:
        raise MonetError(
            f"{output_dir}: the output folder is (inside) the input folder {input_dir}; monet_predict "
            f"never writes next to the inputs. Choose another -o."
        )
    if out.exists() and not out.is_dir():
        raise MonetError(f"{output_dir}: exists and is not a folder. Choose another -o.")
    if not inp.is_dir():  # before -o is created or a model loaded
        raise MonetError(f"{input_dir}: input folder not found. Pass the folder holding the images to segment with -i.")
    for name, folder in (("-i", input_dir), ("-o", output_dir)):
        if not is_utf8(str(folder)):
            raise MonetError(
                f"{printable(folder)}: the folder name is not valid UTF-8, and SimpleITK cannot open files "
                f"in it. Rename the folder (or pass another {name})."
            )


def check_writable(output_dir: str | Path) -> None:
    """Create ``output_dir`` if needed and write and remove a probe file in it, before any work starts.

    Raises:
        MonetError: the folder cannot be created or is not writable (named, with the fix).
    """
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MonetError(
            f"{out}: cannot create the output folder ({exc.strerror or exc}). Choose another -o, or create "
            f"it where you have write permission."
        ) from None
    try:
        handle, probe = tempfile.mkstemp(prefix=".monet-write-test-", dir=out)
        try:
            os.write(handle, b"monetpipe")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as exc:
        raise MonetError(
            f"{out}: the output folder is not writable ({exc.strerror or exc}). Choose another -o, or make "
            f"it writable (nothing was predicted)."
        ) from None


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Treat denormal floats (below 1.2e-38) as zero in this thread while the block runs.

    A confident softmax leaves many class probabilities in the denormal range (5 % of them for a CT), and
    x86 CPUs handle those in slow microcode, which made restoring a CT's probabilities to 512 x 512 much
    slower (docs/inference.md). Only values below 1.2e-38 change, so no label and no float16 probability
    does. The flag is per thread; it is switched off again afterwards.
    """
    import torch

    if not enabled or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


#: Pixels per CPU forward pass that keep a batch's activations in the caches (docs/performance.md,
#: "Batch size"): MoNet at 2 threads was fastest at batch 16 for 64 x 64 slices and batch 1 for 256 x 256
#: and 512 x 512 ones.
CPU_PIXELS_PER_BATCH = 64 * 64 * 16


def default_batch_size(plans: Plans, device, workers: int = 1) -> int:
    """Slices per forward pass: the plan's training batch size; on CPU, per slice-parallel worker, as
    many patch-sized slices as fit in :data:`CPU_PIXELS_PER_BATCH` (at least 1, at most the plan's),
    since larger batches run slower there once their activations leave the caches."""
    on_cpu = getattr(device, "type", str(device)) == "cpu"
    if not on_cpu:
        return plans.batch_size
    h, w = plans.patch_size
    return cpu_batch_size(h, w, workers, plans.batch_size)


def cpu_batch_size(h: int, w: int, workers: int = 1, cap: int | None = None) -> int:
    """``workers`` x the slices of ``h`` x ``w`` that fit in :data:`CPU_PIXELS_PER_BATCH` (at least 1, at
    most ``cap``): ``monet_predict``'s CPU batch, also ``monet_benchmark``'s default."""
    per_worker = CPU_PIXELS_PER_BATCH // (h * w)
    return workers * max(1, per_worker if cap is None else min(cap, per_worker))


def predict_files(
    input_dir: str | Path,
    output_dir: str | Path,
    models: Sequence,
    plans: Plans,
    tta: bool = False,
    save_probabilities: bool = False,
    largest_component: bool = False,
    device="cpu",
    batch_size: int | None = None,
    overwrite: bool = False,
    channels_last: bool = False,
    overlap: bool = True,
    workers: int = 1,
) -> PredictionSummary:
    """:func:`predict_folder` with networks already loaded (e.g. in a notebook, or a custom ensemble).

    Args:
        models: eval-mode networks taking the plan's channels and returning its ``num_classes`` logits.
        plans: the plans they were trained with.
        channels_last: the models are in ``torch.channels_last`` format; feed NHWC batches.
        workers: the models' slice-parallel workers (sizes the default batch).
        Others: as in :func:`predict_folder`.
    """
    options = PredictOptions(tta, save_probabilities, largest_component, batch_size, overwrite, overlap)
    check_folders(input_dir, output_dir)
    check_writable(output_dir)
    return _predict_input_folder(input_dir, output_dir, models, plans, options, device, channels_last, workers)


def _predict_input_folder(
    input_dir, output_dir, models: Sequence, plans: Plans, options: PredictOptions, device, channels_last, workers
) -> PredictionSummary:
    """Group ``input_dir``'s files into cases and predict them; the summary's time includes the grouping."""
    start = time.perf_counter()
    cases, _ = group_input_files(input_dir, plans.num_source_channels)
    summary = predict_cases(cases, input_dir, output_dir, models, plans, options, device, channels_last, workers)
    summary.seconds = time.perf_counter() - start
    return summary


def predict_cases(
    cases: Sequence[InputCase],
    input_dir: str | Path,
    output_dir: str | Path,
    models: Sequence,
    plans: Plans,
    options: PredictOptions = PredictOptions(),
    device="cpu",
    channels_last: bool = False,
    workers: int = 1,
) -> PredictionSummary:
    """The per-case loop of :func:`predict_files` for cases already grouped (``input_dir`` is only reported).

    ``output_dir`` must exist and be writable (:func:`check_writable`). ``device``, ``channels_last``
    and ``workers`` describe ``models`` (as in :func:`predict_files`); ``options`` what to do with each case.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    outcomes: dict[str, CaseOutcome] = {}
    todo = []
    for case in cases:
        if case.error is not None:
            outcomes[case.case_id] = _failed(case, case.error)
        elif not options.overwrite and _outputs_exist(output_dir, case.case_id, options.save_probabilities):
            outcomes[case.case_id] = CaseOutcome(case.case_id, "skipped")
        else:
            todo.append(case)
    if len(todo) < len(cases):
        log.info(
            "%d case(s) already have an output (skipped; --overwrite re-predicts them)",
            sum(o.status == "skipped" for o in outcomes.values()),
        )

    batch_size = default_batch_size(plans, device, workers) if options.batch_size is None else options.batch_size

    on_cpu = getattr(device, "type", str(device)) == "cpu"

    def prepare(case: InputCase) -> _Prepared:
        return _prepare(case, plans)

    def network(prepared: _Prepared):
        from monetpipe.inference.predictor import predict_slices

        t = time.perf_counter()
        with flush_denormals(on_cpu):
            probs = predict_slices(
                models,
                prepared.data,
                batch_size=batch_size,
                tta=options.tta,
                mirror_axes=options.mirror_axes,
                device=device,
                channels_last=channels_last,
                context_slices=plans.context_slices,
            )
        prepared.timings["network"] = time.perf_counter() - t
        prepared.data = None  # type: ignore[assignment]  # free the slices before the next case arrives
        return probs

    def finish(prepared: _Prepared, probs) -> None:
        with flush_denormals(on_cpu):
            _finish(prepared, probs, plans, output_dir, options)

    bar = tqdm(total=len(todo), desc="Predict", unit="case", disable=not (todo and options.progress))
    try:
        run = _run_overlapped if options.overlap and len(todo) > 1 else _run_sequential
        for outcome in run(todo, prepare, network, finish):
            outcomes[outcome.case_id] = outcome
            bar.update(1)
    finally:
        bar.close()
    ordered = [outcomes[c.case_id] for c in cases]
    return PredictionSummary(input_dir, output_dir, ordered, time.perf_counter() - start)


def _outputs_exist(output_dir: Path, case_id: str, save_probabilities: bool) -> bool:
    # The label map is written last, so its presence means the case is complete.
    if not (output_dir / f"{case_id}.nii.gz").is_file():
        return False
    return not save_probabilities or (output_dir / f"{case_id}.npz").is_file()


def _failed(case: InputCase, error: str) -> CaseOutcome:
    log.error("case %s failed: %s", case.case_id, error)
    return CaseOutcome(case.case_id, "failed", error)


def _error_text(case: InputCase, exc: BaseException) -> str:
    """What a user reads about a failed case: the image's fault, memory, or a bug (never all three as one)."""
    if isinstance(exc, MonetError):
        return str(exc)
    if is_out_of_memory(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"case {case.case_id}: out of memory ({first}). Use a smaller --batch-size (on CPU also fewer "
            f"--workers) or free memory, then re-run the same command: finished cases are skipped."
        )
    log.error("case %s: internal error", case.case_id, exc_info=exc)
    return (
        f"case {case.case_id}: internal error ({type(exc).__name__}: {exc}). This is a bug in monetpipe, not "
        f"a problem of the image; please report it with the traceback logged above."
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """``MemoryError`` (numpy too), torch's CUDA/MPS out-of-memory error, or PyTorch's CPU allocator failing."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in text for marker in ("out of memory", "can't allocate memory", "Cannot allocate memory")
    )


#: Resampled slices smaller than this (pixels, either axis) cannot be segmented meaningfully.
MIN_RESAMPLED_SIZE = 8
#: A case whose in-plane spacing is this many times finer or coarser than the plan's is refused.
MAX_SPACING_RATIO = 20.0


def check_spacing(case: InputCase, shape_zyx: Sequence[int], geometry: Geometry, plans: Plans) -> None:
    """Refuse a case whose slices would be degenerate after resampling to the plan's in-plane spacing.

    A wrong header (e.g. 0.01 mm pixels) otherwise shrinks every slice to a few pixels, and the network's
    answer, blown back up to the original grid, is one label everywhere.

    Raises:
        MonetError: resampled in-plane size below :data:`MIN_RESAMPLED_SIZE`, or spacing more than
            :data:`MAX_SPACING_RATIO` times finer or coarser than the plan's.
    """
    from monetpipe.preprocessing.resampling import resampled_shape

    axes = list(plans.transpose_forward)[1:]
    spacing = tuple(float(geometry.spacing_zyx[a]) for a in axes)
    size = tuple(int(shape_zyx[a]) for a in axes)
    target = tuple(float(t) for t in plans.target_spacing)
    resampled = resampled_shape(size, spacing, target)
    ratio = max(max(s / t, t / s) for s, t in zip(spacing, target, strict=True)) if min(spacing) > 0 else float("inf")
    if min(resampled) >= MIN_RESAMPLED_SIZE and ratio <= MAX_SPACING_RATIO:
        return
    files = ", ".join(printable(f) for f in case.files)
    raise MonetError(
        f"{files}: in-plane pixel spacing {spacing[0]:g} x {spacing[1]:g} mm is {ratio:.3g}x off the plan's "
        f"{target[0]:g} x {target[1]:g} mm; its {size[0]} x {size[1]} slices would be resampled to "
        f"{resampled[0]} x {resampled[1]} pixels, which cannot be segmented. Check the header's pixel spacing "
        f"(pixdim) and fix it."
    )


def _prepare(case: InputCase, plans: Plans) -> _Prepared:
    from monetpipe.preprocessing.preprocessor import preprocess_image

    t0 = time.perf_counter()
    files = ", ".join(printable(f) for f in case.files)
    try:
        image, geometry = read_volume(case.files)  # also refuses NaN/inf, in NIfTI files too
    except (MonetError, MemoryError):
        raise
    except Exception as exc:  # whatever a reader raises on a bad file is the file's fault
        log.debug("reading case %s", case.case_id, exc_info=exc)
        raise MonetError(
            f"{files}: cannot be read ({type(exc).__name__}: {exc}). Check the image: it may be truncated or "
            f"corrupt; re-export it."
        ) from None
    t1 = time.perf_counter()
    if image.shape[0] != plans.num_source_channels:
        n, names = plans.num_source_channels, ", ".join(plans.dataset_channel_names)
        uses = f"; it uses {', '.join(plans.channel_names)}" if plans.selects_channels else ""
        raise MonetError(
            f"{files}: has {image.shape[0]} channel(s), but the model expects {n} ({names}{uses}). Give one "
            f"{n}-channel file per case, or one 3D file per channel (case_0000.nii.gz ...)."
        )
    check_spacing(case, image.shape[1:], geometry, plans)
    data, properties = preprocess_image(image, geometry, plans)
    return _Prepared(case, data, properties, geometry, {"read": t1 - t0, "preprocess": time.perf_counter() - t1})


def _finish(
    prepared: _Prepared,
    probs,
    plans: Plans,
    output_dir: Path,
    options: PredictOptions,
) -> None:
    from monetpipe.inference.postprocessing import keep_largest_component
    from monetpipe.inference.predictor import with_background
    from monetpipe.io.nifti import write_labels_like
    from monetpipe.preprocessing.preprocessor import restore_to_original_grid

    case_id, timings = prepared.case.case_id, prepared.timings
    t = time.perf_counter()
    labels, restored = restore_to_original_grid(probs, prepared.properties, plans, options.save_probabilities)
    timings["restore"] = time.perf_counter() - t
    if restored is not None:
        t = time.perf_counter()
        try:
            with atomic_path(output_dir / f"{case_id}.npz") as tmp, open(tmp, "wb") as f:
                np.savez_compressed(f, probabilities=with_background(restored).astype(np.float16))
        except OSError as exc:
            raise MonetError(
                f"{output_dir / f'{case_id}.npz'}: cannot be written ({exc.strerror or exc}). Free disk space "
                f"or choose another -o."
            ) from None
        del restored
        timings["write"] = time.perf_counter() - t
    t = time.perf_counter()
    if options.largest_component:
        labels = keep_largest_component(labels, [v for v in plans.output_labels.values() if v != 0])
    timings["postprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    target = output_dir / f"{case_id}.nii.gz"
    try:
        write_labels_like(labels, prepared.case.files[0], prepared.geometry, target)
    except OSError as exc:
        raise MonetError(
            f"{target}: cannot be written ({exc.strerror or exc}). Free disk space or choose another -o; "
            f"re-running the command skips the finished cases."
        ) from None
    timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t


def _done(case: InputCase, timings: dict[str, float]) -> CaseOutcome:
    total = sum(timings.values())
    log.info("case %s: %.1f s (%s)", case.case_id, total, ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return CaseOutcome(case.case_id, "predicted", timings=dict(timings))


def _run_sequential(todo: list[InputCase], prepare: Callable, network: Callable, finish: Callable):
    for case in todo:
        try:
            prepared = prepare(case)
            probs = network(prepared)
            finish(prepared, probs)
        except Exception as exc:  # one broken case must not stop the others
            yield _failed(case, _error_text(case, exc))
            continue
        yield _done(case, prepared.timings)


def _run_overlapped(todo: list[InputCase], prepare: Callable, network: Callable, finish: Callable):
    """Network in this thread; reading the next case and writing the previous one in two helper threads.

    At most one case is read ahead and one is being written, so memory stays at about three cases.
    """
    with (
        ThreadPoolExecutor(1, thread_name_prefix="monet-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="monet-write") as writer,
    ):
        next_read: Future = reader.submit(prepare, todo[0])
        pending: tuple[InputCase, _Prepared, Future] | None = None
        try:
            for i, case in enumerate(todo):
                current = next_read
                if i + 1 < len(todo):
                    next_read = reader.submit(prepare, todo[i + 1])
                try:
                    prepared = current.result()
                    probs = network(prepared)
                except Exception as exc:
                    yield _failed(case, _error_text(case, exc))
                    continue
                if pending is not None:
                    yield _collect(*pending)
                pending = (case, prepared, writer.submit(finish, prepared, probs))
            if pending is not None:
                yield _collect(*pending)
        except BaseException:
            next_read.cancel()
            raise


def _collect(case: InputCase, prepared: _Prepared, written: Future) -> CaseOutcome:
    try:
        written.result()
    except Exception as exc:
        return _failed(case, _error_text(case, exc))
    return _done(case, prepared.timings)
