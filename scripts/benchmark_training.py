#!/usr/bin/env python
"""Training throughput per network: slices/s on CPU (256x256, batch 16) and, when CUDA is present, GPU
seconds per training batch of 32 (the paper's Table 2 column).

One training step = forward, soft-Dice + CE loss, backward, NAdam step, on random data (the data
pipeline runs in background workers and is not what is measured here). Each network gets warm-up
steps, then ``--steps`` timed ones; wall time and process CPU time are both reported, so a busy
machine shows up as CPU time well below threads x wall time.

    python scripts/benchmark_training.py                       # every network, CPU (+ GPU if present)
    python scripts/benchmark_training.py -m monet unet16 --steps 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--models", nargs="+", default=None, help="networks (default: every registered one)")
    p.add_argument("--size", type=int, default=256, help="slice height and width")
    p.add_argument("--cpu-batch", type=int, default=16, help="CPU batch size")
    p.add_argument("--gpu-batch", type=int, default=32, help="GPU batch size (paper: 32)")
    p.add_argument("--classes", type=int, default=1, help="output channels (1 = sigmoid, as in the paper's tasks)")
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
    size: int,
    classes: int,
    steps: int,
    warmup: int,
    channels_last: bool,
    amp: bool = False,
) -> dict:
    """Time ``steps`` training steps; returns wall seconds per step (median), CPU seconds per step."""
    import torch

    from monetpipe.networks import build_network
    from monetpipe.training.losses import build_loss

    torch.manual_seed(0)
    net = build_network(name, 1, classes).to(device)
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, max(classes, 2), (batch, size, size), device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    loss_fn, opt = build_loss("dice_ce"), torch.optim.NAdam(net.parameters(), lr=5e-4)
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


def main() -> int:
    args = parse_args()
    import torch

    from monetpipe.networks import build_network, count_parameters, list_networks
    from monetpipe.training.config import available_cpus, resolve_channels_last

    models = args.models or list_networks()
    threads = args.threads or available_cpus()
    torch.set_num_threads(threads)
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
