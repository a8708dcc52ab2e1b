"""Which files of an input folder make up which case (docs/inference.md, "Input naming").

Two namings are accepted, decided once per folder:

- **nnU-Net**: one 3D file per channel, ``case_0000.nii.gz`` .. ``case_000{C-1}.nii.gz``.
- **MSD**: one file per case, ``case.nii.gz`` (3D, or 4D with the channels last).

A name ending in ``_XXXX`` is a channel file only when the folder reads as nnU-Net naming: every file
ends in a channel index below C and at least one case has all C of them. C is every channel of the
dataset (``Plans.num_source_channels``): a plan made with ``--channels`` still reads them all and keeps
its own. Then a case missing a channel is an error for that case alone. Otherwise every file is a whole
case, so MSD names that happen to end in four digits (``lung_0001.nii.gz``, ``lung_0002.nii.gz``) are
never mistaken for channels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from monetpipe.errors import MonetError
from monetpipe.io.dataset import CHANNEL_SUFFIX, list_nifti
from monetpipe.io.image import strip_nifti

log = logging.getLogger(__name__)

NNUNET, MSD = "nnunet", "msd"


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its id (the output file's name), its image file(s), or why it cannot be read."""

    case_id: str
    files: tuple[Path, ...]
    error: str | None = None


def is_utf8(name: str) -> bool:
    """Whether a file name (as Python decodes it) is valid UTF-8; SimpleITK aborts the process on others."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come back as lone surrogates
        return False
    return True


def printable(path: str | os.PathLike) -> str:
    """A file name safe to print and log: undecodable bytes shown as ``\\xff``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def detect_naming(files: list[Path], num_channels: int) -> str:
    """``"nnunet"`` when ``files`` read as per-channel files of ``num_channels`` channels, else ``"msd"``."""
    groups: dict[str, set[int]] = {}
    for f in files:
        m = CHANNEL_SUFFIX.match(strip_nifti(f.name))
        if m is None or int(m.group(2)) >= num_channels:
            return MSD
        groups.setdefault(m.group(1), set()).add(int(m.group(2)))
    complete = [g for g in groups.values() if len(g) == num_channels]
    return NNUNET if complete else MSD


def group_input_files(folder: str | Path, num_channels: int) -> tuple[list[InputCase], str]:
    """Group the NIfTI files of ``folder`` into cases of ``num_channels`` channels each.

    Hidden and macOS ``._*`` files and non-NIfTI files are ignored.

    Args:
        folder: the input folder.
        num_channels: the channels C of one input case: ``plans.num_source_channels``, every channel of
            the dataset (not the network's input channels, which ``--channels`` and
            ``--context-slices`` change).

    Returns:
        The cases sorted by id (a case with ``error`` set is reported and skipped, not predicted) and the
        naming that was detected (``"nnunet"`` or ``"msd"``).

    Raises:
        MonetError: the folder does not exist or holds no NIfTI file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MonetError(f"{folder}: input folder not found. Pass the folder holding the images to segment with -i.")
    files = list_nifti(folder)
    if not files:
        raise MonetError(f"{folder}: no NIfTI images (.nii.gz / .nii) found. Put the images to segment there.")
    naming = detect_naming(files, num_channels)
    by_case: dict[str, list[Path]] = {}
    for f in files:
        stem = strip_nifti(f.name)
        case_id = CHANNEL_SUFFIX.match(stem).group(1) if naming == NNUNET else stem  # type: ignore[union-attr]
        by_case.setdefault(case_id, []).append(f)

    cases = []
    for case_id, paths in sorted(by_case.items()):
        odd = [p for p in paths if not is_utf8(p.name)]
        if odd:
            cases.append(
                InputCase(
                    printable(case_id),
                    tuple(paths),
                    f"{printable(odd[0])}: the file name is not valid UTF-8, and SimpleITK cannot open such a "
                    f"file. Rename it (e.g. to ASCII letters, digits and '_'); the other cases are predicted.",
                )
            )
            continue
        cases.append(_nnunet_case(case_id, paths, num_channels) if naming == NNUNET else _msd_case(case_id, paths))
    log.info(
        "%s: %d case(s), %s naming%s",
        folder,
        len(cases),
        "nnU-Net (one file per channel)" if naming == NNUNET else "MSD (one file per case)",
        "" if num_channels == 1 else f", {num_channels} channels",
    )
    return cases, naming


def _nnunet_case(case_id: str, paths: list[Path], num_channels: int) -> InputCase:
    by_channel: dict[int, list[Path]] = {}
    for p in paths:
        by_channel.setdefault(int(CHANNEL_SUFFIX.match(strip_nifti(p.name)).group(2)), []).append(p)  # type: ignore[union-attr]
    doubles = [ps for ps in by_channel.values() if len(ps) > 1]
    if doubles:
        names = " and ".join(p.name for p in doubles[0])
        return InputCase(
            case_id,
            tuple(paths),
            f"{names}: the same channel of case {case_id} appears twice. Keep one of the files.",
        )
    missing = [c for c in range(num_channels) if c not in by_channel]
    if missing:
        ending = paths[0].name[len(strip_nifti(paths[0].name)) :]
        want = ", ".join(f"{case_id}_{c:04d}{ending}" for c in missing)
        return InputCase(
            case_id,
            tuple(sorted(paths)),
            f"case {case_id}: channel file(s) {want} missing (the model "
            f"needs {num_channels} channels, _0000 .. _{num_channels - 1:04d}). "
            f"Add the missing file(s).",
        )
    return InputCase(case_id, tuple(by_channel[c][0] for c in range(num_channels)))


def _msd_case(case_id: str, paths: list[Path]) -> InputCase:
    if len(paths) > 1:
        names = " and ".join(p.name for p in paths)
        return InputCase(case_id, tuple(paths), f"{names}: two files for case {case_id}. Keep one of them.")
    return InputCase(case_id, (paths[0],))
