"""``monet_train``: train MoNet or a baseline on a preprocessed task (also ``python -m monetpipe.training``,
which is what ``torchrun --nproc_per_node N -m monetpipe.training ...`` starts)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from monetpipe.cli_common import run_cli, setup_logging

NETWORKS = ("monet", "unet16", "unet64", "attention_unet")  # for --help only; the registry decides


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: X)`` only where there is a value to show (not for None / off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from monetpipe.training.config import DEVICES, LOSSES, TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="monet_train",
        description="Train a network on MONET_preprocessed/<Task>/ into "
        "MONET_results/<Task>/<model>__<plans>/fold_<k>/. Defaults are the MoNet paper's recipe; "
        "every setting is recorded in fold_<k>/config.json. Multi-GPU / multi-node: "
        "torchrun --nproc_per_node N -m monetpipe.training ...",
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument(
        "-t", "--task", required=True, help="Task04, 4, Task04_Hippocampus, Dataset004_Hippocampus or a path"
    )
    p.add_argument(
        "-m",
        "--model",
        nargs="+",
        required=True,
        metavar="MODEL",
        help=f"network(s): {', '.join(NETWORKS)}, or 'all' for every one (same split, one after another)",
    )
    p.add_argument(
        "-f",
        "--fold",
        nargs="+",
        default=["0"],
        metavar="FOLD",
        help="fold(s) of splits_final.json, or 'all' to train on every case (no final validation) (default: 0)",
    )
    p.add_argument("-p", "--plans", default="monetPlans", help="plans name (monetPlans, monetPlans_binary, ...)")
    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs")
    g.add_argument(
        "--iters-per-epoch",
        type=int,
        default=d.iters_per_epoch,
        help="cap on iterations per epoch (an epoch is one pass over the training slices)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size, split across torchrun processes (default: the plans' batch size)",
    )
    g.add_argument("--lr", type=float, default=d.lr, help="NAdam learning rate")
    g.add_argument(
        "--loss",
        choices=LOSSES,
        default=d.loss,
        help="soft Dice over foreground channels, optionally plus (binary) cross-entropy",
    )
    g.add_argument("--lr-factor", type=float, default=d.lr_factor, help="LR multiplier on a plateau")
    g.add_argument(
        "--lr-patience",
        type=int,
        default=d.lr_patience,
        help="epochs without inner-val loss improvement before the LR drops",
    )
    g.add_argument(
        "--early-stop-patience",
        type=int,
        default=d.early_stop_patience,
        help="epochs without inner-val loss improvement before training stops",
    )
    g.add_argument(
        "--inner-val-fraction",
        type=float,
        default=d.inner_val_fraction,
        help="fraction of the fold's training cases held out for LR schedule / early stop / best checkpoint",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--foreground-fraction",
        type=float,
        default=d.foreground_fraction,
        help="fraction of each batch forced to slices containing foreground (default: 1/3)",
    )
    g.add_argument(
        "--rotation",
        type=float,
        default=d.rotation_deg,
        dest="rotation_deg",
        help="random rotation range, +- degrees",
    )
    g.add_argument("--scale", type=float, default=d.scale, help="random zoom range, +- fraction")
    g.add_argument("--shift", type=float, default=d.shift, help="random shift, up to this fraction of height/width")
    g.add_argument("--mirror", action="store_true", help="also flip slices randomly (not in the paper)")
    g.add_argument(
        "--output-prior",
        action=argparse.BooleanOptionalAction,
        default=d.output_prior,
        help="start the output layer's bias at the class frequencies of sampled batches (not in the "
        "paper; makes MoNet learn much sooner)",
    )
    g.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="background augmentation processes per rank (0: in the training process; "
        "default: 1 on CPU, up to 8 on a GPU)",
    )
    g = p.add_argument_group("machine")
    g.add_argument("--device", choices=DEVICES, default=d.device, help="auto picks cuda > mps > cpu")
    g.add_argument(
        "--num-threads",
        type=int,
        default=None,
        help="torch threads per process (default: available cores / processes on this node)",
    )
    g.add_argument("--amp", action="store_true", help="float16 mixed precision (CUDA only; ignored elsewhere)")
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on for CPU, where it is faster, off elsewhere)",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels where PyTorch has them (slower on GPU)",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="seeds weights, inner-val carving, batches, augmentation")
    g = p.add_argument_group("run")
    g.add_argument(
        "--continue",
        dest="continue_training",
        action="store_true",
        help="resume from checkpoint_latest.pth (a finished run: only a missing validation is redone)",
    )
    g.add_argument(
        "--continue-from",
        choices=("latest", "previous"),
        default="latest",
        help="with 'previous': resume from checkpoint_previous.pth, the state one epoch before "
        "checkpoint_latest.pth (when that one is lost or corrupt); implies --continue",
    )
    g.add_argument(
        "--pretrained-weights",
        metavar="CKPT",
        default=None,
        help="start from the matching weights of this checkpoint",
    )
    g.add_argument("--val-only", action="store_true", help="only re-run the final validation of a finished run")
    g.add_argument(
        "--val-batch-size", type=int, default=d.val_batch_size, help="slices per forward pass when validating"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` an argparse namespace describes."""
    from monetpipe.training.config import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        iters_per_epoch=args.iters_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=args.loss,
        device=args.device,
        num_workers=args.num_workers,
        num_threads=args.num_threads,
        seed=args.seed,
        amp=args.amp,
        channels_last=args.channels_last,
        deterministic=args.deterministic,
        lr_factor=args.lr_factor,
        lr_patience=args.lr_patience,
        early_stop_patience=args.early_stop_patience,
        inner_val_fraction=args.inner_val_fraction,
        foreground_fraction=args.foreground_fraction,
        rotation_deg=args.rotation_deg,
        scale=args.scale,
        shift=args.shift,
        mirror=args.mirror,
        output_prior=args.output_prior,
        val_batch_size=args.val_batch_size,
        pretrained_weights=args.pretrained_weights,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # under torchrun, one process speaks
        logging.getLogger().setLevel(logging.WARNING)

    def body() -> int:
        from monetpipe.training.api import train_models
        from monetpipe.training.distributed import shutdown

        try:
            results = train_models(
                args.task,
                args.model,
                args.fold,
                config_from_args(args),
                args.plans,
                continue_training=args.continue_training,
                val_only=args.val_only,
                continue_from=args.continue_from,
            )
        except KeyboardInterrupt:
            print(
                "interrupted: completed epochs are kept in checkpoint_latest.pth; add --continue to the same "
                "command to resume",
                file=sys.stderr,
            )
            return 130
        finally:
            shutdown()
        if rank == 0:
            for r in results:
                line = f"{r.fold_dir}: {r.epochs} epochs"
                if r.validation:
                    line += f", validation foreground Dice {r.validation['foreground_mean']['Dice']:.4f}"
                print(line)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
