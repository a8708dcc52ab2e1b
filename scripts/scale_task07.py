#!/usr/bin/env python
"""The pipeline at the size of the paper's own task: a Task07-sized synthetic CT task, measured.

MSD Task07_Pancreas has 281 training CTs of 512 x 512 x ~100 slices (int16, two foreground labels).
This script builds a task of that size from the synthetic CT generator and measures, at 20 / 70 / 140 /
281 cases:

- ``monet_plan_and_preprocess`` wall time, peak memory (the summed RSS of the command and its worker
  processes, sampled every 0.1 s from /proc) and the size of the slice cache;
- a rerun with nothing changed (must take seconds) and a rerun after one case changed (must redo only
  that case: the script counts the cache files rewritten);
- a ``monet_train`` epoch on the largest cache (``--iters-per-epoch`` steps; the epoch time from
  ``training_log.csv``);
- ``monet_predict`` seconds per case on test cases.

The cases are made once and kept under ``--root`` (``source/``); later runs reuse them. To keep the
generation affordable, ``--bases`` distinct synthetic CTs (512 x 512 x 120) are drawn with the
project's generator and every case is a seeded variation of one: its own slab of 80-120 slices, flips,
in-plane spacing 0.7-0.9 mm, and its own noise, so every file differs (and hashes differently) while
the intensity statistics stay CT-like.

    python scripts/scale_task07.py --root /data/scale                     # everything, 20/70/140/281
    python scripts/scale_task07.py --root /tmp/scale --steps 10 20 --cases 20 --no-train --no-predict
    python scripts/scale_task07.py --root /data/scale --steps 281 --one-changed-only   # incremental rerun only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monetpipe.preprocessing.plans import DEFAULT_PLANS  # noqa: E402  (the plans the default planning writes)

TASK = "Task907_ScaleCT"
PREFIX = "scale"
LABELS = {"0": "background", "1": "pancreas", "2": "tumour"}
IN_PLANE = 512

log = logging.getLogger("scale_task07")


# --- making the cases ---------------------------------------------------------------------------------


def _base(root: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One 512 x 512 x 120 synthetic CT and its labels, cached as .npy."""
    from monetpipe.synthetic import make_case

    image_file, label_file = root / f"base_{index}_image.npy", root / f"base_{index}_label.npy"
    if not (image_file.is_file() and label_file.is_file()):
        image, label, _ = make_case("ct", 500 + index, seed=7, shape=(IN_PLANE, IN_PLANE, 120))
        image, label = _fit_in_plane(image, -1000), _fit_in_plane(label, 0)
        root.mkdir(parents=True, exist_ok=True)
        np.save(root / f".tmp-{image_file.name}", image)
        np.save(root / f".tmp-{label_file.name}", label)
        os.replace(root / f".tmp-{image_file.name}", image_file)
        os.replace(root / f".tmp-{label_file.name}", label_file)
    return np.load(image_file, mmap_mode="r"), np.load(label_file, mmap_mode="r")


def _fit_in_plane(volume: np.ndarray, fill: int) -> np.ndarray:
    """Crop or pad (Z, Y, X) to exactly 512 x 512 in plane."""
    out = np.full((volume.shape[0], IN_PLANE, IN_PLANE), fill, dtype=volume.dtype)
    y, x = min(volume.shape[1], IN_PLANE), min(volume.shape[2], IN_PLANE)
    out[:, :y, :x] = volume[:, :y, :x]
    return out


def _case_file(folder: Path, number: int, kind: str) -> Path:
    return folder / ("imagesTr" if kind == "image" else "labelsTr") / f"{PREFIX}_{number:03d}.nii.gz"


def write_case(args: tuple[Path, int, int, int]) -> None:
    """Case ``number`` (a variation of base ``number % bases``) into ``source/``; kept if present."""
    from monetpipe.io.image import Geometry, write_image, write_label

    source, number, bases, noise_seed = args
    image_out, label_out = _case_file(source, number, "image"), _case_file(source, number, "label")
    if image_out.is_file() and label_out.is_file() and noise_seed == 0:
        return
    rng = np.random.default_rng(number)  # the case's geometry and slab; ``noise_seed`` only changes the noise
    base_image, base_label = _base(source / "bases", number % bases)
    depth = min(int(rng.integers(80, 121)), base_image.shape[0])  # a base has about 120 slices
    start = int(rng.integers(0, base_image.shape[0] - depth + 1))
    image = np.array(base_image[start : start + depth])
    label = np.array(base_label[start : start + depth])
    for axis in (1, 2):
        if rng.random() < 0.5:
            image, label = np.flip(image, axis), np.flip(label, axis)
    spacing = float(rng.uniform(0.7, 0.9))
    noise = np.random.default_rng([number, noise_seed]).normal(0.0, 12.0, size=image.shape).astype(np.float32)
    image = np.clip(image + noise, -1024, 3071).astype(np.int16)
    geometry = Geometry(
        (IN_PLANE, IN_PLANE, depth), (spacing, spacing, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    write_image(image, geometry, image_out)
    write_label(np.ascontiguousarray(label, dtype=np.uint8), geometry, label_out)


def make_source(source: Path, cases: int, tests: int, bases: int, processes: int) -> None:
    for sub in ("imagesTr", "labelsTr"):
        (source / sub).mkdir(parents=True, exist_ok=True)
    for b in range(bases):  # serial: each base is large and the workers then share it through mmap
        _base(source / "bases", b)
    todo = [(source, n, bases, 0) for n in range(1, cases + tests + 1)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        for i, _ in enumerate(pool.map(write_case, todo), 1):
            if i % 20 == 0 or i == len(todo):
                log.info("cases %d/%d written (%.0f s)", i, len(todo), time.perf_counter() - t0)


def task_folder(root: Path, source: Path, n: int, tests: int, total: int) -> Path:
    """``raw_<n>/Task907_ScaleCT``: symbolic links to the first ``n`` cases (+ test cases) and a dataset.json."""
    folder = root / f"raw_{n}" / TASK
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for number in range(1, n + 1):
        for kind in ("image", "label"):
            link = _case_file(folder, number, kind)
            if not link.exists():
                link.symlink_to(_case_file(source, number, kind))
        training.append(
            {"image": f"./imagesTr/{PREFIX}_{number:03d}.nii.gz", "label": f"./labelsTr/{PREFIX}_{number:03d}.nii.gz"}
        )
    test = []
    for number in range(total + 1, total + tests + 1):
        link = folder / "imagesTs" / f"{PREFIX}_{number:03d}.nii.gz"
        if not link.exists():
            link.symlink_to(_case_file(source, number, "image"))
        test.append(f"./imagesTs/{PREFIX}_{number:03d}.nii.gz")
    dataset = {
        "name": "ScaleCT",
        "description": "Task07-sized synthetic CT (monetpipe scripts/scale_task07.py)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "numTraining": n,
        "numTest": tests,
        "training": training,
        "test": test,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder


# --- measuring ----------------------------------------------------------------------------------------


def _tree_usage(pid: int) -> tuple[int, dict[int, float]]:
    """Summed resident memory (bytes) of ``pid`` and all its descendants, and each one's CPU seconds so far
    (user + system, from /proc/<pid>/stat)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    cpu: dict[int, float] = {}
    page, tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * page
            cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    total, tree, frontier = 0, {}, {pid}
    while frontier:
        total += sum(rss.get(p, 0) for p in frontier)
        tree.update({p: cpu[p] for p in frontier if p in cpu})
        frontier = {child for child, parent in parents.items() if parent in frontier}
    return total, tree


def run_measured(cmd: list[str], env: dict, log_file: Path) -> tuple[float, int, float]:
    """Run ``cmd``; return wall seconds, the peak summed RSS of its process tree and the tree's CPU seconds
    (user + system of every process, sampled every 0.1 s from /proc: worker pools are not always reaped in
    a way getrusage would count). CPU seconds barely change with the machine's load; wall seconds do.
    Raises on failure."""
    peak = 0
    cpu: dict[int, float] = {}
    t0 = time.perf_counter()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                rss, seconds = _tree_usage(proc.pid)
                peak = max(peak, rss)
                for p, c in seconds.items():
                    cpu[p] = max(cpu.get(p, 0.0), c)
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}); see {log_file}")
    return seconds, peak, sum(cpu.values())


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*_data.npy")}


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def measure_preprocessing(root: Path, source: Path, args: argparse.Namespace) -> list[dict]:
    rows = []
    for n in args.steps:
        raw = task_folder(root, source, n, args.tests, args.cases)
        pre = root / f"preprocessed_{n}"
        env = {**os.environ, "MONET_raw": str(raw.parent), "MONET_preprocessed": str(pre)}
        env["MONET_results"] = str(root / f"results_{n}")
        cmd = [_bin("monet_plan_and_preprocess"), "-t", str(raw), "-np", str(args.processes)]
        load = os.getloadavg()[0]
        first, peak, first_cpu = run_measured(cmd, env, root / f"preprocess_{n}.log")
        again, _, again_cpu = run_measured(cmd, env, root / f"preprocess_{n}_rerun.log")
        row = {
            "cases": n,
            "first_s": round(first, 1),
            "first_cpu_s": round(first_cpu, 1),
            "load_1min_at_start": round(load, 1),
            "peak_rss_mib": round(peak / 2**20),
            "cache_gib": round(_du(pre / TASK) / 2**30, 2),
            "rerun_s": round(again, 2),
            "rerun_cpu_s": round(again_cpu, 2),
        }
        if n == max(args.steps):
            row.update(measure_one_changed(raw, pre, cmd, env, args.bases, root / f"preprocess_{n}_one_changed.log"))
        rows.append(row)
        log.info("%s", row)
    return rows


def measure_one_changed(raw: Path, pre: Path, cmd: list[str], env: dict, bases: int, log_file: Path) -> dict:
    """Replace case 1's image by a copy with new noise (the source stays) and rerun: the command's time and
    the cases whose cache files were rewritten. The noise seed is new on every call, so the file changes
    even where an earlier run already replaced it."""
    before = _mtimes(pre / TASK)
    changed = _case_file(raw, 1, "image")
    changed.unlink()
    write_case((raw, 1, bases, time.time_ns() % 2**32 or 1))
    one, _, one_cpu = run_measured(cmd, env, log_file)
    after = _mtimes(pre / TASK)
    rewritten = {Path(k).stem.split(".")[0] for k in after if after[k] != before.get(k)}
    return {"one_changed_s": round(one, 1), "one_changed_cpu_s": round(one_cpu, 1), "rewritten_cases": len(rewritten)}


def measure_one_changed_only(root: Path, n: int, args: argparse.Namespace) -> dict:
    """``--one-changed-only``: a run to bring ``preprocessed_<n>`` up to date (the whole preprocessing where
    there is none yet, or e.g. after a fingerprint format change; timed too), then one changed case."""
    raw = task_folder(root, root / "source" / TASK, n, args.tests, args.cases)  # kept links, or made anew
    pre = root / f"preprocessed_{n}"
    env = {**os.environ, "MONET_raw": str(raw.parent), "MONET_preprocessed": str(pre)}
    cmd = [_bin("monet_plan_and_preprocess"), "-t", str(raw), "-np", str(args.processes)]
    settle, settle_peak, settle_cpu = run_measured(cmd, env, root / f"preprocess_{n}_settle.log")
    row = {"cases": n, "settle_s": round(settle, 1), "settle_cpu_s": round(settle_cpu, 1)}
    row["settle_peak_rss_mib"] = round(settle_peak / 2**20)
    row["load_1min_at_start"] = round(os.getloadavg()[0], 1)
    row.update(measure_one_changed(raw, pre, cmd, env, args.bases, root / f"preprocess_{n}_one_changed.log"))
    row["load_1min_at_end"] = round(os.getloadavg()[0], 1)
    log.info("%s", row)
    return row


def measure_training(root: Path, n: int, args: argparse.Namespace) -> dict:
    """One epoch of ``monet_train`` on the n-case cache, with a 2-case val split so the final validation
    (which reads the raw CTs, as monet_predict does) stays short."""
    pre = root / f"preprocessed_{n}" / TASK
    splits = json.loads((pre / "splits_final.json").read_text())
    cases = sorted(splits[0]["train"] + splits[0]["val"])
    (pre / "splits_final.json").write_text(json.dumps([{"train": cases[2:], "val": cases[:2]}], indent=1))
    env = {
        **os.environ,
        "MONET_raw": str(root / f"raw_{n}"),
        "MONET_preprocessed": str(root / f"preprocessed_{n}"),
        "MONET_results": str(root / f"results_{n}"),
    }
    cmd = [_bin("monet_train"), "-t", TASK, "-m", "monet", "--epochs", "1"]
    cmd += ["--iters-per-epoch", str(args.train_iters)]
    seconds, peak, cpu = run_measured(cmd, env, root / f"train_{n}.log")
    log_csv = root / f"results_{n}" / TASK / f"monet__{DEFAULT_PLANS}" / "fold_0" / "training_log.csv"
    import csv

    with open(log_csv) as f:
        epoch = list(csv.DictReader(f))[0]
    return {
        "cases": n,
        "iters": args.train_iters,
        "command_s": round(seconds, 1),
        "command_cpu_s": round(cpu, 1),
        "peak_rss_mib": round(peak / 2**20),
        "epoch_row": epoch,
    }


def measure_prediction(root: Path, n: int) -> dict:
    env = {**os.environ, "MONET_raw": str(root / f"raw_{n}"), "MONET_preprocessed": str(root / f"preprocessed_{n}")}
    env["MONET_results"] = str(root / f"results_{n}")
    out = root / f"predictions_{n}"
    images = root / f"raw_{n}" / TASK / "imagesTs"
    cmd = [_bin("monet_predict"), "-i", str(images), "-o", str(out), "-t", TASK, "-m", "monet", "--overwrite"]
    seconds, peak, cpu = run_measured(cmd, env, root / f"predict_{n}.log")
    cases = len(list(images.glob("*.nii.gz")))
    return {
        "cases": cases,
        "command_s": round(seconds, 1),
        "s_per_case": round(seconds / cases, 1),
        "cpu_s_per_case": round(cpu / cases, 1),
        "peak_rss_mib": round(peak / 2**20),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="working folder (cases are generated once here)")
    p.add_argument("--cases", type=int, default=281, help="training cases to generate (Task07: 281)")
    p.add_argument("--tests", type=int, default=3, help="test cases for monet_predict")
    p.add_argument("--steps", type=int, nargs="+", default=[20, 70, 140, 281], help="case counts to measure")
    p.add_argument("--bases", type=int, default=6, help="distinct synthetic CTs the cases vary")
    p.add_argument("-np", "--processes", type=int, default=2, help="worker processes (generation, preprocessing)")
    p.add_argument("--train-iters", type=int, default=20, help="training steps in the measured epoch")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-predict", action="store_true")
    p.add_argument("--only-generate", action="store_true")
    p.add_argument(
        "--one-changed-only",
        action="store_true",
        help="only measure a rerun after one changed case, on the existing cache of the largest --steps",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    root = args.root.resolve()
    source = root / "source" / TASK
    make_source(source, args.cases, args.tests, args.bases, args.processes)
    if args.only_generate:
        return
    if args.one_changed_only:
        row = measure_one_changed_only(root, max(args.steps), args)
        (root / "one_changed.json").write_text(json.dumps(row, indent=1))
        print(json.dumps(row, indent=1))
        return
    results: dict = {"preprocessing": measure_preprocessing(root, source, args)}
    if not args.no_train:
        results["training"] = measure_training(root, max(args.steps), args)
        if not args.no_predict:
            results["prediction"] = measure_prediction(root, max(args.steps))
    (root / "scale_results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
