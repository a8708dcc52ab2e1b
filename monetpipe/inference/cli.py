"""``monet_predict``: segment a folder of NIfTI volumes with a trained model (see docs/inference.md)."""

from __future__ import annotations

import argparse
import sys

from monetpipe.cli_common import command_parser, run_cli, setup_logging
from monetpipe.preprocessing.plans import DEFAULT_PLANS, PAPER_PLANS

EXAMPLES = """examples:
  monet_predict -i scans/ -o seg/ -t 4 -m monet                  # every trained fold of monet, ensembled
  monet_predict -i scans/ -o seg/ -t 7 -m monet -p monetPlans_binary_ctx1 -f 0 --checkpoint best
  monet_predict -i scans/ -o seg/ --model-folder received/monet__monetPlans_ctx1 --tta   # a copied model
  monet_predict --prepare-precision int8 -t 4 -m monet -f 0      # calibrate int8, check it against fp32
  monet_predict -i scans/ -o seg/ -t 4 -m monet -f 0 --precision int8
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "monet_predict",
        "Segment every case in IN with a trained model and write OUT/<case>.nii.gz (uint8, the "
        "input's exact geometry). Cases whose output exists are skipped, so an interrupted run resumes.",
        EXAMPLES,
    )
    p.add_argument("-i", "--input", help="folder of images: case_0000.nii.gz per channel, or case.nii.gz")
    p.add_argument("-o", "--output", help="output folder (not inside the input folder)")
    p.add_argument("-t", "--task", help="task of the model: Task04, 4, Task04_Hippocampus, ... (with -m)")
    p.add_argument("-m", "--model", help="network the model was trained as: monet, unet16, unet64, attention_unet")
    p.add_argument(
        "-p", "--plans", default=None, help=f"plans name (default {DEFAULT_PLANS}; e.g. {PAPER_PLANS} for 2D plans)"
    )
    p.add_argument("--model-folder", help="a results folder <model>__<plans>/ instead of -t/-m (needs nothing else)")
    p.add_argument(
        "-f",
        "--folds",
        "--fold",
        dest="folds",
        nargs="+",
        default=None,
        metavar="FOLD",
        help="trained fold(s) to ensemble, e.g. 0 1 2; 'all' is the model monet_train -f all trained on every "
        "case, as in monet_train (default: every fold with the checkpoint)",
    )
    p.add_argument(
        "--checkpoint",
        choices=("final", "best", "latest"),
        default="final",
        help="which checkpoint of each fold (default final)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="mirror test-time augmentation over the axes the model was trained to flip (--mirror, "
        "--mirror-axes): 4x slower for both axes, 2x for one; models trained without --mirror are refused",
    )
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <case>.npz (key 'probabilities', float16, (K incl. background, Z, Y, X))",
    )
    p.add_argument(
        "--largest-component", action="store_true", help="keep only the largest connected component per label"
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per forward pass (default: the plan's; on CPU fewer for large slices, see docs/inference.md)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: available cores)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="CPU slice-parallel workers, each with threads/workers threads (default: 2 with 2+ threads)",
    )
    p.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "torch_compile", "onnxruntime", "eager"),
        help="network backend: torch (BN folded, default), torch_compile (fastest on CPU, compiles first), "
        "onnxruntime (needs the onnx extra), eager",
    )
    _add_precision(p)
    p.add_argument("--overwrite", action="store_true", help="re-predict cases whose output already exists")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _add_precision(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reduced precision (CPU; docs/inference.md)")
    g.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "int8"),
        help="auto (default): the fastest precision this CPU has and every fold passed --prepare-precision "
        "with, else fp32; fp32; bf16; int8 (needs --prepare-precision int8 first)",
    )
    g.add_argument(
        "--prepare-precision",
        choices=("bf16", "int8"),
        help="instead of predicting (no -i/-o): build the folds' PRECISION model (int8: calibrated on their "
        "training slices, stored in fold_<k>/precision/), predict their validation cases in fp32 and in it, "
        "write the Dice difference there, and refuse it above --tolerance",
    )
    g.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="largest accepted drop in mean foreground Dice against fp32 (default 0.005)",
    )
    g.add_argument(
        "--calibration-slices", type=int, default=256, help="training slices int8 is calibrated on (default 256)"
    )


def _prepare(args: argparse.Namespace, folder) -> int:
    from monetpipe.inference.precision_check import prepare_precision

    results = prepare_precision(
        folder,
        args.prepare_precision,
        folds=args.folds,
        checkpoint=args.checkpoint,
        tolerance=args.tolerance,
        calibration_count=args.calibration_slices,
        num_threads=args.threads,
        workers=args.workers,
    )
    for fold, e in results.items():
        print(
            f"fold {fold}: {args.prepare_precision} mean foreground Dice {e['dice']:.4f} vs fp32 "
            f"{e['dice_fp32']:.4f} (difference {e['difference']:+.4f}, tolerance {e['tolerance']}): passed; "
            f"network {e['network_s']:.1f} s vs {e['network_s_fp32']:.1f} s in fp32"
            + ("" if e["faster"] else " (not faster, so --precision auto keeps fp32)")
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model_folder and (args.task or args.model):
        parser.error("give either --model-folder or -t/-m, not both")
    if not args.model_folder and not (args.task and args.model):
        parser.error("say which model to use: -t TASK -m MODEL [-p PLANS], or --model-folder DIR")
    if not args.prepare_precision and not (args.input and args.output):
        parser.error("give the images to segment and where to write them: -i IN -o OUT")
    if args.calibration_slices < 1:
        parser.error("--calibration-slices must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    setup_logging(args.verbose)

    def body() -> int:
        from monetpipe.inference.api import predict_folder
        from monetpipe.inference.loading import resolve_model_folder

        folder = args.model_folder or resolve_model_folder(args.task, args.model, args.plans).root
        if args.prepare_precision:
            return _prepare(args, folder)
        summary = predict_folder(
            args.input,
            args.output,
            folder,
            folds=args.folds,
            checkpoint=args.checkpoint,
            tta=args.tta,
            save_probabilities=args.save_probabilities,
            largest_component=args.largest_component,
            device=args.device,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            num_threads=args.threads,
            backend=args.backend,
            workers=args.workers,
            precision=args.precision,
        )
        print(summary.report(), file=sys.stderr if summary.failed else sys.stdout)
        return 1 if summary.failed else 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
