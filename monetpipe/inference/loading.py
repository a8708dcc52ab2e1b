"""From a results folder to inference-ready networks: folds, checkpoints, plans, device and threads.

A results folder (``<model>__<plans>/``, docs/training.md) is self-contained: ``plans.json`` plus
``fold_<k>/checkpoint_<which>.pth``. Nothing here reads ``MONET_raw`` or ``MONET_preprocessed``, so a
copied results folder is all a prediction machine needs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from monetpipe.devices import resolve_device
from monetpipe.errors import MonetError
from monetpipe.paths import MonetPaths, find_task
from monetpipe.preprocessing.plans import DEFAULT_PLANS, PAPER_PLANS, Plans
from monetpipe.results import CHECKPOINTS, ModelFolder, load_checkpoint, parse_fold

log = logging.getLogger(__name__)


@dataclass
class LoadedModels:
    """Networks ready for :func:`~monetpipe.inference.predictor.predict_slices` and what they came from."""

    models: list  # torch modules in eval mode, on ``device``
    plans: Plans
    folds: list[int | str]
    checkpoint_files: list[Path]
    network: str
    device: object  # torch.device
    channels_last: bool
    workers: int = 1  # slice-parallel workers per model (backends.make_inference_model)
    precision: str = "fp32"  # what the models compute in (inference.precision)
    mirror_axes: tuple[int, ...] = ()  # in-plane axes every fold was flipped along in training: TTA's flips


def trained_mirror_axes(ckpt: dict) -> tuple[int, ...]:
    """The in-plane axes a checkpoint's training flipped (``--mirror``, ``--mirror-axes``; the paper's recipe
    flips none). Runs from before ``--mirror-axes`` flipped both."""
    from monetpipe.training.config import DEFAULT_MIRROR_AXES, mirror_dims

    config = ckpt.get("config") or {}
    return mirror_dims(bool(config.get("mirror", False)), str(config.get("mirror_axes", DEFAULT_MIRROR_AXES)))


def check_tta(tta: bool, loaded: LoadedModels, folder: Path) -> None:
    """Refuse mirror TTA for networks that never saw a flipped slice.

    Flipping a slice moves asymmetric anatomy (Task04: the anterior hippocampus above the posterior one)
    where training never put it; the flipped predictions then disagree with the plain one, and their
    average is worse than either (docs/inference.md, "Test-time augmentation"). nnU-Net mirrors at test
    time only along the axes it mirrored in training, for the same reason; so does ``--tta`` here
    (:attr:`LoadedModels.mirror_axes`).
    """
    if tta and not loaded.mirror_axes:
        raise MonetError(
            f"{folder}: --tta averages over flipped slices, but this model was trained without --mirror, "
            f"so it never saw a flipped slice and the average is worse than no TTA. Drop --tta, or train "
            f"with monet_train ... --mirror to use it."
        )


def default_workers(device, threads: int) -> int:
    """Slice-parallel workers: 2 on a CPU with at least 2 threads, else 1.

    Two one-thread workers beat one two-thread call on the 2-core development machine for every backend
    (docs/performance.md, run A4): MoNet's small convolutions split poorly across threads. More workers
    were not measured; ``--workers`` sets them.
    """
    return 2 if getattr(device, "type", str(device)) == "cpu" and threads >= 2 else 1


def resolve_model_folder(
    task: str, model: str, plans_name: str | None = None, paths: MonetPaths | None = None
) -> ModelFolder:
    """``-t TASK -m MODEL [-p PLANS]`` -> ``MONET_results/<Task>/<model>__<plans>/``.

    Raises:
        MonetError: the task or the model folder does not exist (the message lists what does).
    """
    from monetpipe.networks import list_networks

    paths = paths or MonetPaths.from_env()
    if model.lower() not in list_networks():
        raise MonetError(f"unknown network {model!r} (-m); choose one of {', '.join(list_networks())}.")
    model = model.lower()
    task_name, _ = find_task(task, [paths.results, paths.preprocessed, paths.raw])
    folder = ModelFolder.for_run(paths.results, task_name, model, plans_name or DEFAULT_PLANS)
    plans_flag = f" -p {plans_name}" if plans_name and plans_name != DEFAULT_PLANS else ""
    if not folder.root.is_dir():
        task_dir = paths.results / task_name
        have = sorted(p.name for p in task_dir.iterdir() if p.is_dir() and "__" in p.name) if task_dir.is_dir() else []
        raise MonetError(
            f"{folder.root}: no trained model there. Trained models of {task_name}: "
            f"{', '.join(have) or 'none'}. "
            f"Train it first (monet_train -t {task} -m {model}{plans_flag}), pass -p with the plans of one listed "
            f"(<model>__<plans>; models trained before 2.5D became the default are on {PAPER_PLANS}), or pass "
            "--model-folder."
        )
    return folder


def choose_folds(folder: ModelFolder, folds: Sequence[int | str] | None, checkpoint: str) -> list[int | str]:
    """The folds to ensemble: ``folds`` as given, or every numbered fold with the checkpoint (else ``all``).

    Raises:
        MonetError: an unknown checkpoint name, no fold has the checkpoint, or a requested fold lacks it.
    """
    if checkpoint not in CHECKPOINTS:
        raise MonetError(f"checkpoint {checkpoint!r} unknown; choose one of {', '.join(CHECKPOINTS)}")
    available = folder.folds_with(checkpoint)
    if folds:
        chosen = list(dict.fromkeys(parse_fold(f) for f in folds))
        missing = [f for f in chosen if f not in available]
        if missing:
            names = ", ".join(str(folder.checkpoint(f, checkpoint)) for f in missing)
            raise MonetError(
                f"{names}: checkpoint not found. Folds with checkpoint_{checkpoint}.pth: "
                f"{', '.join(map(str, available)) or 'none'}. Train the fold or choose other folds (-f)."
            )
        return chosen
    if not available:
        raise MonetError(
            f"{folder.root}: no fold has checkpoint_{checkpoint}.pth. Train the model first, or point "
            f"--model-folder at a folder holding fold_<k>/checkpoint_{checkpoint}.pth."
        )
    numbered = [f for f in available if f != "all"]
    return numbered or available


def load_plans(folder: ModelFolder, first_checkpoint: dict | None = None) -> Plans:
    """The folder's ``plans.json``; if it is missing, the plans stored in a checkpoint (with a warning)."""
    if folder.plans_file.is_file():
        return Plans.load(folder.plans_file)
    if first_checkpoint is not None and isinstance(first_checkpoint.get("plans"), dict):
        log.warning("%s missing; using the plans stored in the checkpoint", folder.plans_file)
        return Plans.from_dict(first_checkpoint["plans"])
    raise MonetError(f"{folder.plans_file}: plans not found. Copy the whole results folder, plans.json included.")


def network_from_checkpoint(ckpt: dict, path: Path):
    """Build the checkpoint's network and load its weights (eval mode, not fused)."""
    from monetpipe.networks import build_network

    try:
        spec = ckpt["network"]
        model = build_network(spec["name"], int(spec["in_channels"]), int(spec["num_classes"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MonetError(
            f"{path}: checkpoint does not describe its network ({exc}). Is it a monetpipe checkpoint?"
        ) from None
    try:
        model.load_state_dict(ckpt["model_state"])
    except (KeyError, RuntimeError) as exc:
        raise MonetError(
            f"{path}: weights do not fit network {spec['name']!r} ({str(exc).splitlines()[0]}). "
            f"The checkpoint may come from another monetpipe version; re-train or re-export it."
        ) from None
    return model.eval()


def prepare_for_inference(model, device, channels_last: bool = False):
    """BatchNorm folded (where exact), Dropout removed, activations in place, eval mode, on ``device``,
    optionally channels_last: the ``torch`` backend's network (:func:`backends.prepared_module`).
    Inference only: the returned model must not be trained."""
    import torch

    from monetpipe.inference.backends import prepared_module

    return prepared_module(model, torch.device(device), channels_last)


def inference_form(
    network,
    device,
    channels_last: bool,
    backend: str = "torch",
    workers: int = 1,
    precision: str = "fp32",
    int8_model: Path | None = None,
):
    """The form ``monet_predict`` runs ``network`` in (an eval-mode CPU network, as from a checkpoint).

    ``torch`` with one worker in fp32: :func:`prepare_for_inference`; otherwise
    :func:`~monetpipe.inference.backends.make_inference_model` (``int8_model``: the fold's quantized
    model, :mod:`monetpipe.inference.precision`). Training's final validation calls this too, so both
    run the same network form.
    """
    if backend == "torch" and workers == 1 and precision == "fp32":
        return prepare_for_inference(network, device, channels_last)
    from monetpipe.inference.backends import make_inference_model

    if precision == "int8":
        channels_last = False  # ONNX Runtime takes NCHW
    return make_inference_model(
        network,
        backend,
        device=device,
        channels_last=channels_last,
        workers=workers,
        precision=precision,
        int8_model=int8_model,
    )


def default_channels_last(device) -> bool:
    """channels_last on CPU, where oneDNN runs convolutions natively in NHWC (faster; docs/inference.md)."""
    return getattr(device, "type", str(device)) == "cpu"


def load_models(
    folder: ModelFolder | str | Path,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    device: str = "auto",
    channels_last: bool | None = None,
    backend: str = "torch",
    workers: int = 1,
    precision: str = "fp32",
) -> LoadedModels:
    """Load every requested fold's checkpoint of a results folder as an inference-ready ensemble.

    Args:
        folder: the ``<model>__<plans>`` results folder.
        folds: folds to ensemble (default: every numbered fold with the checkpoint; ``all`` if only it).
        checkpoint: ``final``, ``best`` or ``latest``.
        device: ``auto``, ``cpu``, ``cuda`` (``cuda:1``) or ``mps``.
        backend: ``torch`` (BN folded, in-place activations; default), ``torch_compile`` (Inductor,
            needs a C++ compiler, compiles on first use), ``onnxruntime`` (optional extra) or ``eager``;
            see :mod:`monetpipe.inference.backends` and docs/performance.md.
        channels_last: NHWC memory format (default: on CPU only).
        workers: slice-parallel workers per model (CPU; :func:`default_workers` is what
            ``monet_predict`` uses); PyTorch's thread count becomes ``threads // workers``.
        precision: ``fp32`` (default), ``bf16``, ``int8`` (the folds' prepared int8 models) or ``auto``
            (the fastest precision this CPU has and every fold validated; see
            :mod:`monetpipe.inference.precision`). A precision whose backend differs (int8 runs in ONNX
            Runtime) overrides ``backend``.

    Returns:
        The models, the plans and the folds/files they came from.

    Raises:
        MonetError: a missing or unloadable checkpoint, plans, or checkpoints that disagree with each
            other; int8 without a prepared model, or a reduced precision that failed its check.
    """
    from monetpipe.inference.precision import PrecisionFiles, check_validated, predict_backend, resolve_precision

    folder = folder if isinstance(folder, ModelFolder) else ModelFolder(Path(folder))
    if not folder.root.is_dir():
        raise MonetError(f"{folder.root}: model folder not found. Pass a results folder <model>__<plans>/.")
    chosen = choose_folds(folder, folds, checkpoint)
    torch_device = resolve_device(device)
    if channels_last is None:
        channels_last = default_channels_last(torch_device)
    fold_dirs = [folder.fold_dir(f) for f in chosen]
    precision = resolve_precision(precision, fold_dirs, checkpoint, torch_device)
    check_validated(precision, fold_dirs, checkpoint)
    if precision != "fp32":
        backend = predict_backend(precision, backend)
    files = [folder.checkpoint(f, checkpoint) for f in chosen]
    checkpoints = [load_checkpoint(p) for p in files]
    plans = load_plans(folder, checkpoints[0])
    models, names = [], set()
    for path, ckpt, fold_dir in zip(files, checkpoints, fold_dirs, strict=True):
        _check_compatible(ckpt, plans, path)
        names.add(ckpt["network"]["name"])
        network = network_from_checkpoint(ckpt, path)
        int8_model = PrecisionFiles(fold_dir, checkpoint).int8_model
        models.append(inference_form(network, torch_device, channels_last, backend, workers, precision, int8_model))
    channels_last = bool(getattr(models[0], "channels_last", channels_last))
    log.info(
        "loaded %s fold(s) %s (checkpoint_%s) on %s, %s%s%s",
        "/".join(sorted(names)),
        ", ".join(map(str, chosen)),
        checkpoint,
        torch_device,
        precision,
        ", channels_last" if channels_last else "",
        f", {workers} slice-parallel workers" if workers > 1 else "",
    )
    mirror_axes = tuple(sorted(set.intersection(*(set(trained_mirror_axes(c)) for c in checkpoints))))
    return LoadedModels(
        models,
        plans,
        chosen,
        files,
        "/".join(sorted(names)),
        torch_device,
        channels_last,
        workers,
        precision,
        mirror_axes,
    )


def _check_compatible(ckpt: dict, plans: Plans, path: Path) -> None:
    _check_same_input(ckpt, plans, path)
    spec = ckpt.get("network") or {}
    if (
        int(spec.get("in_channels", plans.num_input_channels)) != plans.num_input_channels
        or int(spec.get("num_classes", plans.num_classes)) != plans.num_classes
    ):
        raise MonetError(
            f"{path}: network has {spec.get('in_channels')} input channel(s) and {spec.get('num_classes')} "
            f"output(s), the plans {plans.num_input_channels} and {plans.num_classes}. The checkpoint "
            f"belongs to other plans; use the results folder it was trained in."
        )
    stored = ckpt.get("plans")
    if isinstance(stored, dict):
        try:
            same = Plans.from_dict(stored).preprocessing_hash() == plans.preprocessing_hash()
        except (KeyError, TypeError, ValueError):
            same = True  # an unreadable copy in the checkpoint is not worth refusing a run over
        if not same:
            raise MonetError(
                f"{path}: was trained with different preprocessing than {plans.plans_name} in plans.json "
                f"(spacing, normalization or labels differ). Copy the plans.json that belongs to it."
            )


def _check_same_input(ckpt: dict, plans: Plans, path: Path) -> None:
    """Refuse a checkpoint whose stored plans feed the network other channels or context slices than ``plans``."""
    try:
        trained = Plans.from_dict(ckpt["plans"])
    except (KeyError, TypeError, ValueError, MonetError):
        return  # no readable copy: the channel-count check below still applies
    if trained.input_signature() == plans.input_signature():
        return
    raise MonetError(
        f"{path}: was trained on plans {trained.plans_name} (input {trained.describe_input()}; planned by "
        f"monet_plan_and_preprocess -t {trained.task}{trained.input_flags()}), but {path.parents[1] / 'plans.json'} "
        f"holds {plans.plans_name} (input {plans.describe_input()}). Use the model folder it was trained in, with "
        f"its own plans.json (monet_predict -p {trained.plans_name}), or train a model on {plans.plans_name}."
    )
