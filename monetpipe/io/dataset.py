"""dataset.json in its three dialects, read into one typed description of a task.

- **MSD original**: ``modality``/``labels`` keyed by index strings, ``training`` lists image/label paths;
  each image file is a whole case (3D, or 4D with channels last).
- **nnU-Net v1 converted**: the same dataset.json, but ``imagesTr`` holds one file per channel
  (``case_0000.nii.gz``, ``case_0001.nii.gz``).
- **nnU-Net v2**: ``channel_names``, ``labels`` as name -> int, ``file_ending``; cases are found on disk.

The dialect is detected, never converted by hand. Hidden files and macOS ``._*`` files are ignored.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from monetpipe.errors import DatasetError
from monetpipe.io.image import NIFTI_ENDINGS, strip_nifti

#: ``case_0003`` (a file name without its NIfTI ending) -> case ``case``, channel 3: nnU-Net's per-channel naming.
CHANNEL_SUFFIX = re.compile(r"^(.+)_(\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case: its id, its image file(s) and (for training cases) its label file."""

    case_id: str
    image_files: tuple[Path, ...]
    label_file: Path | None = None


@dataclass(frozen=True)
class TaskDataset:
    """A task folder as monetpipe understands it, whatever dialect its dataset.json speaks."""

    folder: Path
    name: str
    dialect: str  # "msd", "nnunet_v1" or "nnunet_v2"
    channel_names: tuple[str, ...]
    labels: dict[int, str]
    training: tuple[Case, ...]
    test: tuple[Case, ...] = ()
    raw_json: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def is_ct(self) -> bool:
        return [c.upper() for c in self.channel_names] == ["CT"]

    def case(self, case_id: str) -> Case:
        for c in self.training:
            if c.case_id == case_id:
                return c
        raise KeyError(case_id)


def is_hidden(name: str) -> bool:
    """Hidden files, macOS ``._*`` resource forks included, and our own ``.tmp-*`` partial writes."""
    return name.startswith(".")


def list_nifti(folder: Path) -> list[Path]:
    """NIfTI files in ``folder``, sorted, skipping hidden and macOS ``._*`` files."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not is_hidden(p.name) and p.name.endswith(NIFTI_ENDINGS)
    )


def _inside(folder: Path, rel: str, json_path: Path) -> Path:
    """``folder / rel`` when it names a place inside ``folder``; symbolic links in it are allowed.

    The test is on the path as written (``..`` and absolute paths leave the folder), not on where links
    point: linking raw data into a task folder is common and the user's choice.
    """
    path = Path(os.path.normpath(folder / rel))
    if os.path.commonpath([path, folder]) != str(folder):
        raise DatasetError(
            f"{json_path}: path {rel!r} leaves the task folder. Paths in dataset.json must stay inside "
            f"{folder} (symbolic links inside it are fine); move or link the file into the task folder "
            f"and fix the entry."
        )
    return path


def _dangling(path: Path) -> str:
    """``" (a symbolic link to X, which does not exist)"`` for a broken link, else ``""``."""
    return f" (it is a symbolic link to {os.readlink(path)}, which does not exist)" if path.is_symlink() else ""


def _channel_files(base: Path, n_channels: int) -> tuple[Path, ...] | None:
    """For an MSD-style path ``imagesTr/case.nii.gz``, the v1 per-channel files if they all exist."""
    stem, ending = strip_nifti(base.name), base.name[len(strip_nifti(base.name)) :] or ".nii.gz"
    files = tuple(base.with_name(f"{stem}_{i:04d}{ending}") for i in range(n_channels))
    return files if all(f.is_file() for f in files) else None


def _load_json(json_path: Path) -> dict:
    if not json_path.is_file():
        raise DatasetError(
            f"{json_path}: missing. A task folder needs a dataset.json (MSD or nnU-Net format) next to "
            f"imagesTr/ and labelsTr/."
        )
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_path}: not valid JSON ({exc}). Fix the file.") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{json_path}: must hold a JSON object.")
    return data


def load_task(folder: str | os.PathLike) -> TaskDataset:
    """Read a task folder's dataset.json and locate every case's files.

    Raises:
        DatasetError: missing or invalid dataset.json, unsupported nnU-Net v2 features, paths leaving
            the folder, or missing image/label files; the message names the file and the fix.
    """
    folder = Path(folder).resolve()
    json_path = folder / "dataset.json"
    data = _load_json(json_path)
    if "channel_names" in data or "file_ending" in data:
        return _load_v2(folder, json_path, data)
    return _load_msd(folder, json_path, data)


def _msd_labels(data: dict, json_path: Path) -> dict[int, str]:
    try:
        labels = {int(k): str(v) for k, v in data["labels"].items()}
    except (KeyError, AttributeError, ValueError):
        raise DatasetError(
            f'{json_path}: \'labels\' must map label values to names, e.g. {{"0": "background", "1": "organ"}}.'
        ) from None
    if 0 not in labels:
        raise DatasetError(f"{json_path}: 'labels' must include 0 (background).")
    return dict(sorted(labels.items()))


def _load_msd(folder: Path, json_path: Path, data: dict) -> TaskDataset:
    try:
        modality = data["modality"]
        channel_names = tuple(str(modality[k]) for k in sorted(modality, key=int))
    except (KeyError, AttributeError, ValueError):
        raise DatasetError(
            f'{json_path}: \'modality\' must map channel indices to names, e.g. {{"0": "CT"}}.'
        ) from None
    labels = _msd_labels(data, json_path)
    entries = data.get("training")
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{json_path}: 'training' must list the training cases (image and label paths).")

    dialect = None
    training = []
    for entry in entries:
        try:
            img_rel, lab_rel = entry["image"], entry["label"]
        except (TypeError, KeyError):
            raise DatasetError(
                f"{json_path}: every 'training' entry needs 'image' and 'label'; got {entry!r}."
            ) from None
        img = _inside(folder, img_rel, json_path)
        lab = _inside(folder, lab_rel, json_path)
        if img.is_file():
            files, kind = (img,), "msd"
        elif (per_channel := _channel_files(img, len(channel_names))) is not None:
            files, kind = per_channel, "nnunet_v1"
        else:
            raise DatasetError(
                f"{img}: image listed in {json_path.name} not found{_dangling(img)} (neither as one file nor as "
                f"per-channel files {strip_nifti(img.name)}_0000.nii.gz ...). Add the file or remove the entry."
            )
        if not lab.is_file():
            raise DatasetError(
                f"{lab}: label listed in {json_path.name} not found{_dangling(lab)}. Add the file or remove the entry."
            )
        dialect = dialect or kind
        training.append(Case(strip_nifti(img.name), files, lab))

    test = []
    for rel in data.get("test", []) or []:
        rel = rel["image"] if isinstance(rel, dict) else rel
        img = _inside(folder, rel, json_path)
        files = (img,) if img.is_file() else _channel_files(img, len(channel_names))
        if files:  # a missing test image is not needed for training; the predictor reports it if asked
            test.append(Case(strip_nifti(img.name), files))
    _check_unique(training, json_path)
    return TaskDataset(
        folder,
        str(data.get("name", folder.name)),
        dialect or "msd",
        channel_names,
        labels,
        tuple(training),
        tuple(test),
        data,
    )


def _load_v2(folder: Path, json_path: Path, data: dict) -> TaskDataset:
    ending = data.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        raise DatasetError(
            f"{json_path}: file_ending {ending!r} is not supported; monetpipe reads NIfTI (.nii.gz, .nii). "
            f"Convert the images to NIfTI first."
        )
    if "regions_class_order" in data or any(isinstance(v, (list, tuple)) for v in data.get("labels", {}).values()):
        raise DatasetError(
            f"{json_path}: region-based labels (nnU-Net v2 'regions_class_order') are not supported by "
            f"monetpipe. Use plain integer labels."
        )
    try:
        labels = {int(v): str(k) for k, v in data["labels"].items()}
        channels = data["channel_names"]
        channel_names = tuple(str(channels[k]) for k in sorted(channels, key=int))
    except (KeyError, AttributeError, ValueError, TypeError):
        raise DatasetError(
            f"{json_path}: nnU-Net v2 dataset.json needs 'channel_names' {{\"0\": \"CT\"}} and 'labels' "
            f'{{"background": 0, ...}}.'
        ) from None
    if any(name.lower() == "ignore" for name in labels.values()):
        raise DatasetError(
            f"{json_path}: the nnU-Net v2 'ignore' label is not supported by monetpipe. Remove it and "
            f"relabel those voxels."
        )
    if 0 not in labels:
        raise DatasetError(f"{json_path}: 'labels' must include background = 0.")
    labels = dict(sorted(labels.items()))
    n = len(channel_names)

    def cases(images_dir: Path, labels_dir: Path | None) -> list[Case]:
        groups: dict[str, dict[int, Path]] = {}
        for f in list_nifti(images_dir):
            if not f.name.endswith(ending):
                continue
            m = CHANNEL_SUFFIX.match(f.name[: -len(ending)])
            if not m:
                raise DatasetError(f"{f}: nnU-Net v2 images must be named CASE_XXXX{ending} (XXXX = channel index).")
            groups.setdefault(m.group(1), {})[int(m.group(2))] = f
        out = []
        for case_id, chans in sorted(groups.items()):
            if sorted(chans) != list(range(n)):
                raise DatasetError(
                    f"{images_dir}: case {case_id} has channels {sorted(chans)}, expected 0..{n - 1} "
                    f"as in channel_names. Add the missing files."
                )
            label = None
            if labels_dir is not None:
                label = labels_dir / f"{case_id}{ending}"
                if not label.is_file():
                    raise DatasetError(
                        f"{label}: label for case {case_id} not found. Add it or remove the case's images."
                    )
            out.append(Case(case_id, tuple(chans[i] for i in range(n)), label))
        return out

    training = cases(folder / "imagesTr", folder / "labelsTr")
    if not training:
        raise DatasetError(f"{folder / 'imagesTr'}: no training images found (expected CASE_0000{ending}).")
    test = cases(folder / "imagesTs", None) if (folder / "imagesTs").is_dir() else []
    return TaskDataset(
        folder,
        str(data.get("name", folder.name)),
        "nnunet_v2",
        channel_names,
        labels,
        tuple(training),
        tuple(test),
        data,
    )


def _check_unique(cases: list[Case], json_path: Path) -> None:
    seen: set[str] = set()
    for c in cases:
        if c.case_id in seen:
            raise DatasetError(f"{json_path}: case {c.case_id!r} is listed twice in 'training'. Remove the duplicate.")
        seen.add(c.case_id)
