"""The benchmark's outputs: CSV columns, the paper's numbers to print beside ours, the text table."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from monetpipe.io.atomic import atomic_path

# The table's columns (paper Tables 2 and 3 and the FLOP floor, docs/performance.md), in this order; the extra
# columns describe the run.
COLUMNS = (
    "model",
    "params_trainable",
    "params_keras",
    "size_mib_fp32",
    "size_mib_fp16",
    "gflop_per_slice",
    "cpu_s_mean",
    "cpu_s_std",
    "achieved_gflops",
    "matmul_gflops",
    "floor_ratio",
    "gpu_s_per_batch32",
)
RUN_COLUMNS = (
    "device",
    "backend",
    "precision",
    "vs_fp32",
    "fp32_floor_ratio",
    "precision_matmul_gflops",
    "precision_mib",
    "dice_diff",
    "channels_last",
    "batch_size",
    "workers",
    "threads",
    "size",
    "slices_timed",
    "repeats",
    "cpu_s_median",
    "floor_s",
    "setup_s",
    "gpu_s_150",
    "cpu_times",
    "load_avg",
    "cpu_model",
    "gpu_model",
    "torch_version",
)

# Paper (Knolle et al. 2021) Table 2: CPU seconds per 150 slices at 256x256 on an 8-core Intel i9
# (TensorFlow, mean +- sd of 5 runs) and GPU seconds per training batch of 32; Table 3: size in MB.
PAPER = {
    "monet": {"cpu_s": (14.88, 0.32), "size_mb": 1.8},
    "unet16": {"cpu_s": (7.03, 0.21), "size_mb": 7.6},
    "unet64": {"cpu_s": (45.34, 1.77), "size_mb": 118.6},
    "attention_unet": {"cpu_s": (53.30, 0.53), "size_mb": 121.3},
}


def _fmt(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _text(value: object) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _cpu_time(r: Mapping) -> str:
    if _fmt(r.get("cpu_s_mean"), ".2f") == "-":
        return "-"
    return f"{r['cpu_s_mean']:.2f} +- {_fmt(r.get('cpu_s_std'), '.2f')}"


def _paper_time(r: Mapping) -> str:
    paper = PAPER.get(str(r["model"]), {})
    return f"{paper['cpu_s'][0]:.2f}+-{paper['cpu_s'][1]:.2f}" if "cpu_s" in paper else "-"


# (header, width, cell) of each printed column; ``|`` separates ours from the paper's
_TABLE = (
    ("model", -15, lambda r: str(r["model"])),
    ("backend", -13, lambda r: str(r.get("backend", "-"))),
    ("prec", -4, lambda r: _text(r.get("precision"))),
    ("batch", 5, lambda r: _fmt(r.get("batch_size"), "")),
    ("wk", 2, lambda r: _fmt(r.get("workers"), "")),
    ("params", 11, lambda r: _fmt(r["params_trainable"], ",")),
    ("keras", 11, lambda r: _fmt(r["params_keras"], ",")),
    ("MiB32", 7, lambda r: _fmt(r["size_mib_fp32"], ".2f")),
    ("MiB16", 7, lambda r: _fmt(r["size_mib_fp16"], ".2f")),
    ("GFLOP", 6, lambda r: _fmt(r["gflop_per_slice"], ".2f")),
    ("cpu s/150", 15, _cpu_time),
    ("GFLOP/s", 7, lambda r: _fmt(r.get("achieved_gflops"), ".1f")),
    ("mm GF/s", 7, lambda r: _fmt(r.get("matmul_gflops"), ".1f")),
    ("floor x", 7, lambda r: _fmt(r.get("floor_ratio"), ".2f")),
    ("vs fp32", 7, lambda r: _fmt(r.get("vs_fp32"), ".2f")),
    ("MiB", 6, lambda r: _fmt(r.get("precision_mib"), ".2f")),
    ("dDice", 7, lambda r: _fmt(r.get("dice_diff"), ".4f")),
    ("gpu s/b32", 9, lambda r: _fmt(r.get("gpu_s_per_batch32"), ".4f")),
    ("|", 1, lambda r: "|"),
    ("paper s/150", 13, _paper_time),
    ("paper MB", 8, lambda r: _fmt(PAPER.get(str(r["model"]), {}).get("size_mb"), ".1f")),
)


def format_table(rows: Iterable[Mapping]) -> str:
    """The benchmark as a text table, with the paper's CPU time and size beside each model."""

    def line(cells: Iterable[str]) -> str:
        return " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w, _) in zip(cells, _TABLE, strict=True))

    header = line(name for name, _, _ in _TABLE)
    body = [line(cell(r) for _, _, cell in _TABLE) for r in rows]
    return "\n".join([header, "-" * len(header), *body])


def to_frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Rows as a DataFrame with :data:`COLUMNS` first, then :data:`RUN_COLUMNS`, then anything else."""
    frame = pd.DataFrame(list(rows))
    for col in (*COLUMNS, *RUN_COLUMNS):
        if col not in frame.columns:
            frame[col] = math.nan
    rest = [c for c in frame.columns if c not in COLUMNS and c not in RUN_COLUMNS]
    return frame[[*COLUMNS, *RUN_COLUMNS, *rest]]


def write_csv(rows: Iterable[Mapping], path: str | os.PathLike) -> Path:
    """Write the rows as CSV (atomically) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        to_frame(rows).to_csv(tmp, index=False)
    return path


def leaderboard_times(rows: Iterable[Mapping]) -> pd.DataFrame:
    """One CPU row per model: its fastest measured configuration (what the leaderboard's ``cpu_s_150`` shows).

    Rows without a CPU time (GPU-only runs) are dropped.
    """
    frame = to_frame(rows)
    frame = frame[frame["cpu_s_mean"].notna()]
    if frame.empty:
        return frame
    best = frame.sort_values("cpu_s_mean").groupby("model", sort=False).head(1)
    best = best.assign(device="cpu")
    return best.sort_values("model").reset_index(drop=True)
