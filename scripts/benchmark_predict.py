"""End-to-end CPU timing of ``monet_predict`` on CT-sized volumes: seconds per case and where they go.

Writes ``--cases`` CT-like volumes (default 150 slices of 512 x 512, int16 HU, 0.8 x 0.8 x 2.5 mm) and a
MoNet results folder (random weights: timing does not depend on them; plans resample 512 -> 256 in-plane
as the paper does, 3 classes), then runs :func:`monetpipe.inference.api.predict_folder` exactly as the
command does (read -> preprocess -> network -> restore -> write) and prints a table of seconds per stage
and the share spent outside the network.

    python scripts/benchmark_predict.py                      # 1 case, sequential stages
    python scripts/benchmark_predict.py --cases 3 --overlap  # read/write overlapped with the network
    python scripts/benchmark_predict.py --formats            # network only: contiguous vs channels_last
    python scripts/benchmark_predict.py --variants torch torch_compile onnxruntime/int8 --rounds 2
                                      # end to end per backend/precision, alternating, compile time included

``--variants`` runs the whole folder once per variant per round, the variants taking turns; the first
round of ``torch_compile`` includes its compilation (from Inductor's on-disk cache if it holds the
shape: ``monetpipe.inference.backends.compile_cache_dir``; point ``TORCHINDUCTOR_CACHE_DIR`` at an empty
folder to time a cold compile). ``/int8`` variants use an int8 model calibrated on noise slices (random
weights: timing only).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from monetpipe.preprocessing.plans import ChannelNormalization, Plans


def ct_volume(slices: int, size: int, seed: int) -> np.ndarray:
    """A CT-like int16 volume: air, a body with fat and soft tissue, a bright spine, an organ, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2
    plane = np.full((size, size), -1000.0, np.float32)
    plane[body < 1] = -90
    plane[body < 0.8] = 40
    plane[(x - 0.02) ** 2 + (y - 0.45) ** 2 < 0.01] = 400
    vol = np.repeat(plane[None], slices, axis=0)
    z = np.linspace(-1, 1, slices)[:, None, None]
    organ = ((x + 0.25) / 0.3) ** 2 + ((y + 0.1) / 0.25) ** 2 + (z / 0.6) ** 2 < 1
    vol[organ] = 110
    vol += rng.normal(0, 12, vol.shape).astype(np.float32)
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16)


def benchmark_plans(size: int, spacing: float) -> Plans:
    target = spacing * max(1.0, size / 256)
    return Plans(
        plans_name="monetPlans",
        task="Task999_Benchmark",
        slice_axis=0,
        transpose_forward=(0, 1, 2),
        transpose_backward=(0, 1, 2),
        target_spacing=(target, target),
        patch_size=(256, 256),
        median_shape=(150, 256, 256),
        crop_to_nonzero=True,
        normalization=(ChannelNormalization("ct", (-1000.0, 1500.0), 60.0, 200.0),),
        channel_names=("CT",),
        dataset_labels={0: "background", 1: "organ", 2: "lesion"},
        label_mapping={0: 0, 1: 1, 2: 2},
        output_labels={0: 0, 1: 1, 2: 2},
        class_names=("background", "organ", "lesion"),
        num_classes=3,
        batch_size=16,
        max_size=256,
    )


def write_model_folder(folder: Path, plans: Plans, network: str) -> None:
    import torch

    from monetpipe.networks import build_network

    torch.manual_seed(0)
    net = build_network(network, plans.num_input_channels, plans.num_classes)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    plans.save(folder / "plans.json")
    torch.save(
        {
            "network": {"name": network, "in_channels": 1, "num_classes": plans.num_classes},
            "model_state": net.state_dict(),
            "plans": plans.to_dict(),
            "epoch": 0,
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )


def compare_formats(folder: Path, slices: int, batch_sizes: list[int], repeats: int) -> None:
    """Network time alone for ``slices`` 256 x 256 slices: contiguous vs channels_last and batch sizes.

    The variants take turns within each repeat, so a change in machine load hits them alike; the best
    of ``repeats`` is reported.
    """
    import torch

    from monetpipe.inference.loading import load_models
    from monetpipe.inference.predictor import predict_slices
    from monetpipe.networks import flops_per_slice

    data = np.random.default_rng(0).normal(size=(1, slices, 256, 256)).astype(np.float32)
    models = {cl: load_models(folder, device="cpu", channels_last=cl).models for cl in (False, True)}
    variants = [(False, batch_sizes[0])] + [(True, b) for b in batch_sizes]
    times: dict = {v: [] for v in variants}
    for cl, b in variants:  # warm up
        predict_slices(models[cl], data[:, :b], b, channels_last=cl)
    for _ in range(repeats):
        for cl, b in variants:
            t = time.perf_counter()
            predict_slices(models[cl], data, b, channels_last=cl)
            times[(cl, b)].append(time.perf_counter() - t)
    gflop = flops_per_slice(models[False][0], 256, 256) / 1e9
    print(
        f"\nnetwork only (BN folded), {slices} slices of 256x256, {torch.get_num_threads()} threads, best of {repeats}"
    )
    print(f"{'format':<16}{'batch':>6}{'s':>9}{'s/slice':>10}{'GFLOP/s':>9}")
    for (cl, b), ts in times.items():
        best = min(ts)
        name = "channels_last" if cl else "contiguous"
        print(f"{name:<16}{b:>6}{best:>9.2f}{best / slices:>10.3f}{gflop * slices / best:>9.1f}")


def write_int8_model(folder: Path) -> None:
    """fold_0's int8 model, calibrated on noise (the network has random weights; for timing only)."""
    import json

    import torch

    from monetpipe.inference.loading import load_checkpoint, network_from_checkpoint
    from monetpipe.inference.precision import PrecisionFiles, file_sha1, quantize_onnx_int8

    files = PrecisionFiles(folder / "fold_0")
    if files.int8_current():
        return
    network = network_from_checkpoint(load_checkpoint(files.checkpoint_file), files.checkpoint_file)
    quantize_onnx_int8(
        network, torch.randn(16, 1, 256, 256, generator=torch.Generator().manual_seed(0)), files.int8_model
    )
    files.int8_record.write_text(json.dumps({"checkpoint_sha1": file_sha1(files.checkpoint_file), "slices": 16}))


def compare_variants(inp: Path, work: Path, folder: Path, args, threads: int) -> None:
    """End-to-end seconds per case for each ``backend[/precision]``, the variants taking turns per round."""
    from monetpipe.inference.api import predict_folder

    variants = [v.split("/") + ["fp32"] if "/" not in v else v.split("/") for v in args.variants]
    if any(p == "int8" for _, p in variants):
        write_int8_model(folder)
    walls: dict = {tuple(v): [] for v in variants}
    networks: dict = {tuple(v): [] for v in variants}
    for r in range(args.rounds):
        for backend, precision in variants:
            summary = predict_folder(
                inp,
                work / "out",
                folder,
                device="cpu",
                overwrite=True,
                num_threads=threads,
                overlap=args.overlap,
                workers=args.workers,
                backend=backend,
                precision=precision,
            )
            if not summary.ok:
                raise SystemExit(summary.report())
            walls[(backend, precision)].append(summary.seconds / len(summary.predicted))
            networks[(backend, precision)].append(summary.stage_seconds()["network"] / len(summary.predicted))
            print(f"round {r + 1}: {backend}/{precision} {walls[(backend, precision)][-1]:.2f} s/case", flush=True)
    base = walls[tuple(variants[0])]
    print(f"\n{'variant':<22}{'round 1 s/case':>15}{'later rounds':>14}{'network':>9}{'vs first':>9}")
    for key, ts in walls.items():
        later = min(ts[1:]) if len(ts) > 1 else float("nan")
        ratio = later / min(base[1:]) if len(ts) > 1 else ts[0] / base[0]
        print(f"{'/'.join(key):<22}{ts[0]:>15.2f}{later:>14.2f}{min(networks[key]):>9.2f}{ratio:>9.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=1)
    p.add_argument("--slices", type=int, default=150)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--network", default="monet")
    p.add_argument("--batch-size", type=int, default=None, help="default: monet_predict's")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="slice-parallel workers (default: monet_predict's)")
    p.add_argument("--backend", default="torch", help="torch (default), torch_compile, onnxruntime, eager")
    p.add_argument(
        "--overlap",
        action="store_true",
        help="overlap reading/writing with the network (default: off, so the stages are timed without competing)",
    )
    p.add_argument(
        "--formats", action="store_true", help="network only: contiguous vs channels_last, and the --batch-sizes"
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16, 32], help="for --formats")
    p.add_argument("--repeats", type=int, default=3, help="repeats for --formats")
    p.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here (default: a temp dir)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="BACKEND[/PRECISION]",
        help="compare these end to end, alternating (e.g. torch torch_compile onnxruntime/int8 torch/bf16)",
    )
    p.add_argument("--rounds", type=int, default=2, help="rounds for --variants (default 2)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from monetpipe.devices import configure_threads
    from monetpipe.inference.api import STAGES, predict_folder
    from monetpipe.inference.backends import compile_cache_dir

    threads = configure_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="monet_bench_"))
    plans = benchmark_plans(args.size, 0.8)
    folder = work / "model" / f"{args.network}__monetPlans"
    write_model_folder(folder, plans, args.network)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch "
        f"{torch.__version__}, {threads} threads, load average {os.getloadavg()[0]:.1f}"
    )
    if args.formats:
        compare_formats(folder, args.slices, args.batch_sizes, args.repeats)
        return
    if args.variants:
        print(f"compile cache: {compile_cache_dir()}")

    inp = work / "in"
    inp.mkdir(parents=True, exist_ok=True)
    for i in range(args.cases):
        path = inp / f"ct_{i:03d}.nii.gz"
        if not path.is_file():
            image = sitk.GetImageFromArray(ct_volume(args.slices, args.size, i))
            image.SetSpacing((0.8, 0.8, 2.5))
            image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
            sitk.WriteImage(image, str(path), True)
    if args.variants:
        compare_variants(inp, work, folder, args, threads)
        return
    summary = predict_folder(
        inp,
        work / "out",
        folder,
        device="cpu",
        batch_size=args.batch_size,
        overwrite=True,
        num_threads=threads,
        overlap=args.overlap,
        workers=args.workers,
        backend=args.backend,
    )
    if not summary.ok:
        raise SystemExit(summary.report())

    n = len(summary.predicted)
    st = summary.stage_seconds()
    staged = sum(st.values())
    mode = "overlapped" if args.overlap else "sequential"
    side = round(args.size * 0.8 / plans.target_spacing[0])
    print(
        f"\n{args.network}: {n} case(s) of {args.slices} x {args.size} x {args.size} int16 -> "
        f"{args.slices} x {side} x {side}, batch {args.batch_size or 'default'}, "
        f"workers {args.workers or 'default'}, backend {args.backend}, {mode}"
    )
    print(f"{'stage':<14}{'s/case':>10}{'share':>9}")
    for s in STAGES:
        print(f"{s:<14}{st[s] / n:>10.2f}{st[s] / staged:>9.1%}")
    print(f"{'sum of stages':<14}{staged / n:>10.2f}")
    print(f"{'wall':<14}{summary.seconds / n:>10.2f}   (end to end, read -> write, per case)")
    outside = staged - st["network"]
    print(
        f"outside the network: {outside / n:.2f} s/case = {outside / staged:.1%} of the stage time; "
        f"network {st['network'] / n / args.slices * 1000:.0f} ms/slice"
    )


if __name__ == "__main__":
    main()
