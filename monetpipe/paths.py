"""The three data roots and task-name resolution.

Roots come from ``MONET_raw``, ``MONET_preprocessed`` and ``MONET_results``, read when a command runs
(never at import), defaulting to ``./monet_data/{raw,preprocessed,results}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from monetpipe.errors import TaskNotFoundError

_TASK_DIR = re.compile(r"^(Task|Dataset)(\d+)_(.+)$")
_TASK_SPEC = re.compile(r"^(?:(?:Task|Dataset)?(\d+))(?:_(.+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class MonetPaths:
    """Where raw tasks, preprocessed caches and training results live."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, base: Path | None = None) -> MonetPaths:
        env = os.environ if environ is None else environ
        base = Path.cwd() / "monet_data" if base is None else base

        def root(var: str, default: str) -> Path:
            value = env.get(var)
            return Path(value).expanduser().resolve() if value else (base / default).resolve()

        return cls(
            raw=root("MONET_raw", "raw"),
            preprocessed=root("MONET_preprocessed", "preprocessed"),
            results=root("MONET_results", "results"),
        )


def parse_task_dir_name(name: str) -> tuple[int, str] | None:
    """``Task04_Hippocampus`` -> ``(4, "Hippocampus")``; ``None`` for names that are not task folders."""
    match = _TASK_DIR.match(name)
    return (int(match.group(2)), match.group(3)) if match else None


def _task_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and parse_task_dir_name(p.name))


def find_task(spec: str | os.PathLike, roots: Iterable[Path]) -> tuple[str, Path | None]:
    """Resolve a ``-t`` argument to ``(task_name, folder)``.

    ``spec`` may be ``Task04``, ``4``, ``004``, ``Task004``, ``Task04_Hippocampus``,
    ``Dataset004_Hippocampus`` or a path to a task folder. Numbers match numerically, so an MSD folder
    ``Task04_*`` and an nnU-Net folder ``Task004_*`` both answer to ``4``. Roots are searched in order;
    the first root holding a match wins (so a raw task and its preprocessed copy agree).

    A path means one thing everywhere: the task its folder is named after. Each command then looks for
    that name in its own root(s), so ``-t $MONET_raw/Task04_Hippocampus`` trains on
    ``$MONET_preprocessed/Task04_Hippocampus``; the folder the path points to is not read itself.

    Returns:
        The task folder's name and the folder that matched (``None`` never happens: an unmatched spec raises).

    Raises:
        TaskNotFoundError: nothing matches, or one root holds several matches; the message lists what exists
            (for a path: where the command looked for its name).
    """
    roots = [Path(r) for r in roots]
    spec_str = os.fspath(spec)
    if looks_like_path(spec_str):
        return _task_from_path(Path(spec_str).expanduser(), roots)

    match = _TASK_SPEC.match(spec_str.strip())
    if not match:
        raise TaskNotFoundError(
            f"Cannot read task {spec_str!r}: use a number (4), Task04, Task04_Hippocampus, "
            f"Dataset004_Hippocampus or a path to a task folder."
        )
    number, suffix = int(match.group(1)), match.group(2)
    seen: list[str] = []
    for root in roots:
        candidates = []
        for folder in _task_dirs(root):
            seen.append(f"{folder.name} (in {root})")
            num, name = parse_task_dir_name(folder.name)  # type: ignore[misc]
            if num == number and (suffix is None or name.lower() == suffix.lower()):
                candidates.append(folder)
        if len(candidates) == 1:
            return candidates[0].name, candidates[0]
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            raise TaskNotFoundError(f"Task {spec_str!r} is ambiguous in {root}: {names}. Give the full folder name.")
    listing = "\n  ".join(seen) if seen else "(no task folders found)"
    searched = ", ".join(str(r) for r in roots)
    raise TaskNotFoundError(
        f"No task matches {spec_str!r} in {searched}. Tasks found:\n  {listing}\n"
        f"Set MONET_raw / MONET_preprocessed / MONET_results or pass a path to the task folder."
    )


def looks_like_path(spec: str) -> bool:
    """Whether a ``-t`` value is a path (it holds a separator, or is ``.``/``..``) rather than a task name."""
    return os.sep in spec or "/" in spec or (os.altsep is not None and os.altsep in spec) or spec in (".", "..")


def _task_from_path(path: Path, roots: list[Path]) -> tuple[str, Path]:
    """``-t PATH``: the task named like the folder, looked up in ``roots`` (where the command reads)."""
    name = path.resolve().name
    if parse_task_dir_name(name) is None:
        raise TaskNotFoundError(
            f"-t {path}: {name!r} is not a task folder name (TaskXX_Name or DatasetXXX_Name). A path given to "
            f"-t names the task by its folder name; pass the task folder, or its name or number."
        )
    for root in roots:
        if (root / name).is_dir():
            return name, (root / name).resolve()
    env = MonetPaths.from_env()
    labels = {env.raw: "MONET_raw", env.preprocessed: "MONET_preprocessed", env.results: "MONET_results"}
    own = [f"{labels[r.resolve()]} ({r})" if r.resolve() in labels else str(r) for r in roots] or ["(no root)"]
    message = f"-t {path} names task {name}; this command looks for it in {' and '.join(own)}, and it is not there."
    parent = path.resolve().parent
    if parent in labels and all(parent != r.resolve() for r in roots):
        message += f" {path} is the task's folder in {labels[parent]}, which this command does not read."
    elif parent not in labels:
        message += (
            f" {parent} is none of the data roots: to use the task there, set the variable of the root this "
            f"command reads (MONET_raw, MONET_preprocessed or MONET_results) to {parent}."
        )
    wanted = {labels.get(r.resolve()) for r in roots}
    if "MONET_preprocessed" in wanted:
        message += f" A task is found there once preprocessed: monet_plan_and_preprocess -t {name}."
    elif "MONET_results" in wanted:
        message += f" A task is found there once trained: monet_train -t {name} -m MODEL."
    raise TaskNotFoundError(message)
