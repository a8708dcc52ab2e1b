"""One 2-thread call vs two 1-thread slice-parallel workers for MoNet's ``torch_compile`` backend.

Three variants, timed in alternation (batch 1 per worker, 256 x 256 slices):

- ``1 worker x 2 threads``: ``make_inference_model(model, "torch_compile", threads=2)``;
- ``2 workers, Python wrapper``: Inductor's default wrapper, whose generated kernels hold the GIL;
- ``2 workers, C++ wrapper``: ``make_inference_model(..., workers=2)``, whose compiled graph runs with the
  GIL released (what ``monet_predict`` uses).

    python scripts/benchmark_workers.py [--slices 16] [--rounds 6]

Prints the median seconds per 150 slices of each variant (docs/performance.md, "Workers").
"""

from __future__ import annotations

import argparse
import statistics
import time
import types
import warnings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    warnings.filterwarnings("ignore")

    import torch

    from monetpipe.inference.backends import _compiled, _SliceParallel, make_inference_model
    from monetpipe.networks import build_network

    torch.manual_seed(0)
    model = build_network("monet", 1, 1).eval()
    x = torch.randn(args.slices, 1, 256, 256)
    one_call = make_inference_model(model, "torch_compile", threads=2)
    cpp_workers = make_inference_model(model, "torch_compile", threads=2, workers=2)
    # the same compiled model without the C++ wrapper, split over the same two workers
    holder = [types.SimpleNamespace(setup_s=0.0)]
    py_workers = _SliceParallel(_compiled(model, torch.device("cpu"), True, holder, workers=1), 2, 1)

    def per_slice(fn, threads):
        def run():
            torch.set_num_threads(threads)
            for i in range(0, args.slices, 2 if threads == 1 else 1):
                fn(x[i : i + (2 if threads == 1 else 1)])

        return run

    variants = {
        "1 worker x 2 threads": per_slice(one_call, 2),
        "2 workers, Python wrapper": per_slice(py_workers, 1),
        "2 workers, C++ wrapper": per_slice(cpp_workers, 1),
    }
    for run in variants.values():  # compile and warm up
        run()
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 150 / args.slices)
    print(f"MoNet torch_compile, {args.slices} slices x {args.rounds} rounds, seconds per 150 slices:")
    for name, t in times.items():
        print(f"  {name:<28} median {statistics.median(t):6.2f}  ({' '.join(f'{v:.2f}' for v in t)})")


if __name__ == "__main__":
    main()
