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
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monetpipe.errors import MonetError
from monetpipe.inference.inputs import InputCase, group_input_files
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
) -> PredictionSummary:
    """Segment every case in ``input_dir`` with ``model_folder``'s model into ``output_dir/<case>.nii.gz``.

    Args:
        input_dir: NIfTI images, nnU-Net (``case_0000.nii.gz`` per channel) or MSD (``case.nii.gz``) named.
        output_dir: where label maps go (created; must not be, or lie inside, ``input_dir``).
        model_folder: a results folder ``<model>__<plans>/`` (plans.json + fold_<k>/checkpoint_*.pth).
        folds: folds to ensemble (default: every numbered fold with the checkpoint; ``"all"`` selects
            the model trained on all cases).
        checkpoint: ``final``, ``best`` or ``latest``.
        tta: average over horizontal, vertical and both flips (4x the network time).
        save_probabilities: also write ``<case>.npz`` with key ``probabilities``: float16
            ``(K incl. background, Z, Y, X)`` on the original grid.
        largest_component: keep only the largest connected component of each label.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        batch_size: slices per forward pass (default: :func:`default_batch_size`).
        overwrite: re-predict cases whose output already exists.
        num_threads: PyTorch CPU threads (default: :func:`~monetpipe.inference.loading.configure_threads`).
        overlap: read the next and write the previous case in helper threads while the network runs.
        backend: ``torch`` (default), ``torch_compile``, ``onnxruntime`` or ``eager`` (see docs/performance.md).
        workers: slice-parallel workers on CPU, each with ``num_threads // workers`` threads (default:
            :func:`~monetpipe.inference.loading.default_workers`: 2 when there are 2 or more threads).

    Returns:
        The summary; ``summary.failed`` maps each failed case to its error (the run itself does not raise).

    Raises:
        MonetError: unusable folders or model (nothing is predicted), e.g. ``output_dir`` in ``input_dir``.
    """
    import torch

    from monetpipe.inference.loading import configure_threads, default_workers, load_models, resolve_device

    check_folders(input_dir, output_dir)
    threads = None
    if resolve_device(device).type == "cpu":
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
        loaded = load_models(model_folder, folds, checkpoint, device, backend=backend, workers=workers)
        summary = predict_files(
            input_dir,
            output_dir,
            loaded.models,
            loaded.plans,
            tta=tta,
            save_probabilities=save_probabilities,
            largest_component=largest_component,
            device=loaded.device,
            batch_size=batch_size,
            overwrite=overwrite,
            channels_last=loaded.channels_last,
            overlap=overlap,
            workers=loaded.workers,
        )
    finally:
        if threads is not None and workers > 1:
            torch.set_num_threads(threads)  # the workers lowered it process-wide while they ran
    summary.folds = list(loaded.folds)
    return summary


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


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Treat denormal floats (below 1.2e-38) as zero in this thread while the block runs.

    A confident softmax leaves many class probabilities in the denormal range (5 % of them for a CT), and
    x86 CPUs handle those in slow microcode: restoring a CT's probabilities to 512 x 512 took 3x longer
    with them. Only values below 1.2e-38 change, so no label and no float16 probability does. The flag is
    per thread; it is switched off again afterwards.
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
    return workers * max(1, min(plans.batch_size, CPU_PIXELS_PER_BATCH // (h * w)))


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
    from tqdm import tqdm

    check_folders(input_dir, output_dir)
    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    cases, _ = group_input_files(input_dir, plans.num_input_channels)
    output_dir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, CaseOutcome] = {}
    todo = []
    for case in cases:
        if case.error is not None:
            outcomes[case.case_id] = _failed(case, case.error)
        elif not overwrite and _outputs_exist(output_dir, case.case_id, save_probabilities):
            outcomes[case.case_id] = CaseOutcome(case.case_id, "skipped")
        else:
            todo.append(case)
    if len(todo) < len(cases):
        log.info(
            "%d case(s) already have an output (skipped; --overwrite re-predicts them)",
            sum(o.status == "skipped" for o in outcomes.values()),
        )

    if batch_size is None:
        batch_size = default_batch_size(plans, device, workers)

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
                tta=tta,
                device=device,
                channels_last=channels_last,
            )
        prepared.timings["network"] = time.perf_counter() - t
        prepared.data = None  # type: ignore[assignment]  # free the slices before the next case arrives
        return probs

    def finish(prepared: _Prepared, probs) -> None:
        with flush_denormals(on_cpu):
            _finish(prepared, probs, plans, output_dir, save_probabilities, largest_component)

    progress = tqdm(total=len(todo), desc="Predict", unit="case", disable=not todo)
    try:
        run = _run_overlapped if overlap and len(todo) > 1 else _run_sequential
        for outcome in run(todo, prepare, network, finish):
            outcomes[outcome.case_id] = outcome
            progress.update(1)
    finally:
        progress.close()
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
    if isinstance(exc, MonetError):
        return str(exc)
    log.debug("case %s", case.case_id, exc_info=exc)
    files = ", ".join(str(f) for f in case.files)
    return f"{files}: unexpected {type(exc).__name__}: {exc}. Check the image; run with -v for the traceback."


def _prepare(case: InputCase, plans: Plans) -> _Prepared:
    from monetpipe.preprocessing.preprocessor import preprocess_image

    t0 = time.perf_counter()
    image, geometry = read_volume(case.files)  # also refuses NaN/inf, in NIfTI files too
    t1 = time.perf_counter()
    if image.shape[0] != plans.num_input_channels:
        names = ", ".join(plans.channel_names)
        files = ", ".join(str(f) for f in case.files)
        raise MonetError(
            f"{files}: has {image.shape[0]} channel(s), but the model expects {plans.num_input_channels} "
            f"({names}). Give one {plans.num_input_channels}-channel file per case, or one 3D file per "
            f"channel (case_0000.nii.gz ...)."
        )
    data, properties = preprocess_image(image, geometry, plans)
    return _Prepared(
        case, data, properties, geometry, {"read": t1 - t0, "preprocess": time.perf_counter() - t1}
    )


def _finish(
    prepared: _Prepared,
    probs,
    plans: Plans,
    output_dir: Path,
    save_probabilities: bool,
    largest_component: bool,
) -> None:
    from monetpipe.inference.fast import labels_on_original_grid
    from monetpipe.inference.postprocessing import keep_largest_component
    from monetpipe.inference.predictor import with_background
    from monetpipe.io.nifti import write_labels_like
    from monetpipe.preprocessing.preprocessor import probabilities_to_labels, restore_probabilities

    case_id, timings = prepared.case.case_id, prepared.timings
    t = time.perf_counter()
    if save_probabilities:
        restored = restore_probabilities(probs, prepared.properties, plans)
        labels = probabilities_to_labels(restored, plans)
        timings["restore"] = time.perf_counter() - t
        t = time.perf_counter()
        with atomic_path(output_dir / f"{case_id}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=with_background(restored).astype(np.float16))
        del restored
        timings["write"] = time.perf_counter() - t
    else:
        labels = labels_on_original_grid(probs, prepared.properties, plans)
        timings["restore"] = time.perf_counter() - t
    t = time.perf_counter()
    if largest_component:
        labels = keep_largest_component(labels, [v for v in plans.output_labels.values() if v != 0])
    timings["postprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    write_labels_like(labels, prepared.case.files[0], prepared.geometry, output_dir / f"{case_id}.nii.gz")
    timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t


def _done(case: InputCase, timings: dict[str, float]) -> CaseOutcome:
    total = sum(timings.values())
    log.info(
        "case %s: %.1f s (%s)", case.case_id, total, ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )
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
