#!/usr/bin/env python
"""Training throughput per network: slices/s on CPU (256x256, batch 16) and, when CUDA is present, GPU
seconds per training batch of 32 (the paper's Table 2 column).

One training step = forward, soft-Dice + CE loss, backward, NAdam step, on random data (the data
pipeline runs in background workers and is not what is measured here). Each network gets warm-up
steps, then ``--steps`` timed ones; wall time and process CPU time are both reported, so a busy
machine shows up as CPU time well below threads x wall time.

    python scripts/benchmark_training.py                       # every network, CPU (+ GPU if present)
    python scripts/benchmark_training.py -m monet unet16 --steps 5 --threads 2

``--precisions fp32 bf16`` compares training precisions on the CPU instead (``monet_train --precision``):
the precisions take turns, ``--steps`` timed steps each, for ``--rounds`` rounds, so a change in the
machine's load hits both alike; it prints the median seconds per step of each and the ratio to fp32,
with the load average before and after. MoNet on Task04's slices (64 x 48, batch 32, 3 classes):

    python scripts/benchmark_training.py -m monet --shape 64 48 --cpu-batch 32 --classes 3 --loss dice \
        --precisions fp32 bf16 --rounds 5 --steps 4 --threads 2 --no-gpu

``--channels 3`` times the 2.5D default's input (three slices as channels); ``--profile`` adds, per
precision, the operators that took the steps' time (where a compiled step's gain would come from).
"""

from __future__ import annotations

import argparse
import statistics
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--models", nargs="+", default=None, help="networks (default: every registered one)")
    p.add_argument("--size", type=int, default=256, help="slice height and width")
    p.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), help="slice height and width (overrides --size)")
    p.add_argument("--loss", default="dice_ce", choices=("dice", "dice_ce"), help="training loss")
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16", "fp32+compile", "bf16+compile"),
        help="CPU only: compare these training precisions, alternating (bf16 = bfloat16 autocast; +compile = "
        "monet_train --compile, its compile time printed from the warm-up step)",
    )
    p.add_argument("--rounds", type=int, default=3, help="with --precisions: rounds of alternation")
    p.add_argument(
        "--profile",
        action="store_true",
        help="with --precisions: after the rounds, profile --steps more steps of each and print the operators "
        "that took the most time, with their share of the steps' CPU time",
    )
    p.add_argument("--cpu-batch", type=int, default=16, help="CPU batch size")
    p.add_argument("--gpu-batch", type=int, default=32, help="GPU batch size (paper: 32)")
    p.add_argument("--classes", type=int, default=1, help="output channels (1 = sigmoid, as in the paper's tasks)")
    p.add_argument(
        "--channels", type=int, default=1, help="input channels (3 = 2.5D, --context-slices 1 on a one-channel task)"
    )
    p.add_argument("--steps", type=int, default=3, help="timed steps per network")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all available cores)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: as monet_train: on for CPU, off for GPU)",
    )
    p.add_argument("--amp", action="store_true", help="GPU: float16 autocast (monet_train --amp)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU measurement")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU measurement")
    return p.parse_args()


def measure(
    name: str,
    device,
    batch: int,
    size: int | tuple[int, int],
    classes: int,
    steps: int,
    warmup: int,
    channels_last: bool,
    amp: bool = False,
    loss: str = "dice_ce",
    channels: int = 1,
) -> dict:
    """Time ``steps`` training steps; returns wall seconds per step (median), CPU seconds per step."""
    import torch

    from monetpipe.networks import build_network
    from monetpipe.training.losses import build_loss

    torch.manual_seed(0)
    net = build_network(name, channels, classes).to(device)
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(batch, channels, h, w, device=device)
    y = torch.randint(0, max(classes, 2), (batch, h, w), device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    loss_fn, opt = build_loss(loss), torch.optim.NAdam(net.parameters(), lr=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    walls, cpu0 = [], 0.0
    for i in range(warmup + steps):
        if i == warmup:
            cpu0 = time.process_time()
        sync()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync()
        if i >= warmup:
            walls.append(time.perf_counter() - t)
    return {
        "wall": statistics.median(walls),
        "sd": statistics.pstdev(walls) if len(walls) > 1 else 0.0,
        "cpu": (time.process_time() - cpu0) / steps,
    }


class _PrecisionRun:
    """One network training on fixed random slices in one precision, timed a few steps at a time."""

    def __init__(self, name: str, precision: str, args: argparse.Namespace, shape: tuple[int, int]) -> None:
        import torch

        from monetpipe.networks import build_network
        from monetpipe.training.losses import build_loss
        from monetpipe.training.trainer import compiled_training_loss, training_loss

        torch.manual_seed(0)
        self.net = build_network(name, args.channels, args.classes).to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(args.cpu_batch, args.channels, *shape, generator=gen)
        self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, max(args.classes, 2), (args.cpu_batch, *shape), generator=gen)
        self.loss = build_loss(args.loss)
        self.opt = torch.optim.NAdam(self.net.parameters(), lr=5e-4)
        self.dtype = torch.bfloat16 if precision.startswith("bf16") else None
        self.step_loss = compiled_training_loss() if precision.endswith("+compile") else training_loss
        self.walls: list[float] = []

    def steps(self, n: int, record: bool = True) -> None:
        """``n`` training steps as monet_train takes them (autocast forward, float32 loss and optimizer)."""
        for _ in range(n):
            t = time.perf_counter()
            loss = self.step_loss(self.net, self.loss, self.x, self.y, "cpu", self.dtype)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if record:
                self.walls.append(time.perf_counter() - t)


def print_profile(label: str, run: _PrecisionRun, steps: int, top: int = 12) -> None:
    """torch.profiler over ``steps`` steps of ``run``: the operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run.steps(steps, record=False)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    print(f"\nprofile, {label}: {steps} step(s), {total / 1e6:.2f} s self CPU time in operators", flush=True)
    for e in events[:top]:
        print(f"  {e.key[:55]:<55} {e.self_cpu_time_total / total:>6.1%}  {e.count:>6} calls", flush=True)


def compare_precisions(args: argparse.Namespace, models: list[str]) -> None:
    """Alternate the precisions on the CPU and print seconds per step and the ratio to fp32."""
    import os

    from monetpipe.cpu_features import cpu_features

    shape = tuple(args.shape) if args.shape else (args.size, args.size)
    load_before = os.getloadavg()
    print(f"CPU: {cpu_features().summary()}", flush=True)
    print(
        f"{args.rounds} round(s) of {args.steps} step(s) per precision, batch {args.cpu_batch} of "
        f"{shape[0]}x{shape[1]}, {args.channels} input / {args.classes} output channels, loss {args.loss}, "
        "channels_last",
        flush=True,
    )
    rows = []
    for name in models:
        runs = {p: _PrecisionRun(name, p, args, shape) for p in args.precisions}
        for p, run in runs.items():
            t = time.perf_counter()
            run.steps(args.warmup, record=False)
            print(f"  {name} {p}: {args.warmup} warm-up step(s) in {time.perf_counter() - t:.1f} s", flush=True)
        for r in range(args.rounds):
            for p, run in runs.items():
                run.steps(args.steps)
                last = statistics.median(run.walls[-args.steps :])
                print(f"  {name} round {r + 1} {p}: {last:.3f} s/step", flush=True)
        if args.profile:
            for p, run in runs.items():
                print_profile(f"{name} {p}", run, args.steps)
        base = statistics.median(runs["fp32"].walls) if "fp32" in runs else None
        for p, run in runs.items():
            med = statistics.median(run.walls)
            rows.append((name, p, med, args.cpu_batch / med, med / base if base else float("nan")))
    load_after = os.getloadavg()
    print(f"\n{'model':<15} {'precision':<9} {'s/step':>8} {'slices/s':>9} {'x fp32':>7}")
    for name, p, med, rate, ratio in rows:
        print(f"{name:<15} {p:<9} {med:>8.3f} {rate:>9.1f} {ratio:>7.2f}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")


def main() -> int:
    args = parse_args()
    import torch

    from monetpipe.networks import build_network, count_parameters, list_networks
    from monetpipe.training.config import available_cpus, resolve_channels_last

    models = args.models or list_networks()
    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
    if args.precisions:
        print(f"{threads} thread(s)")
        compare_precisions(args, models)
        return 0
    rows = []
    if not args.no_cpu:
        cl = resolve_channels_last(args.channels_last, "cpu")
        print(
            f"CPU: {threads} thread(s), batch {args.cpu_batch}, {args.size}x{args.size}, channels_last={cl}, "
            f"{args.steps} timed step(s)",
            flush=True,
        )
        for name in models:
            r = measure(
                name,
                torch.device("cpu"),
                args.cpu_batch,
                args.size,
                args.classes,
                args.steps,
                args.warmup,
                cl,
                channels=args.channels,
            )
            rows.append(("cpu", name, r, args.cpu_batch))
            print(f"  {name}: {r['wall']:.2f} s/step", flush=True)
    if torch.cuda.is_available() and not args.no_gpu:
        cl = resolve_channels_last(args.channels_last, "cuda")
        print(
            f"GPU: {torch.cuda.get_device_name()}, batch {args.gpu_batch}, amp={args.amp}, channels_last={cl}",
            flush=True,
        )
        for name in models:
            r = measure(
                name,
                torch.device("cuda"),
                args.gpu_batch,
                args.size,
                args.classes,
                max(args.steps, 10),
                max(args.warmup, 3),
                cl,
                args.amp,
                channels=args.channels,
            )
            rows.append(("gpu", name, r, args.gpu_batch))

    print(
        f"\n{'device':<6} {'model':<15} {'params':>11} {'batch':>5} {'s/step':>14} {'slices/s':>9} {'cpu s/step':>10}"
    )
    for device, name, r, batch in rows:
        params = count_parameters(build_network(name, 1, args.classes))["params_trainable"]
        print(
            f"{device:<6} {name:<15} {params:>11,} {batch:>5} {r['wall']:>8.3f} ±{r['sd']:<5.3f} "
            f"{batch / r['wall']:>9.1f} {r['cpu']:>10.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
