"""Bytes per federated round for each network, as Flower serialized them (the traffic table in docs/federated.md).

Runs a short real federation per model (local federation: SuperLink + one SuperNode per site on
127.0.0.1; ``--rounds`` rounds of one local step, batch 2) into a temporary MONET_results and reads the
last round of ``federated_log.csv``: the bytes of each site's update (up) and of the global model sent to
it (down). The last round is used because in round 1 the freshly initialised model has many identical
arrays (zero biases, BatchNorm statistics) that Flower sends once. The bytes depend on the network and
the update dtype only, not on the data, so a small preprocessed task is enough.

    MONET_preprocessed=... python scripts/federated_traffic.py -t 4 -m monet unet16 unet64 attention_unet
    MONET_preprocessed=... python scripts/federated_traffic.py -t 4 -m monet --update-dtype float16
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

MIB = 1024 * 1024


def measure(task: str, model: str, sites: int, rounds: int, dtype: str, results: Path) -> dict:
    from monetpipe.federated import FederatedConfig, run_federated
    from monetpipe.federated.records import read_federated_log
    from monetpipe.networks import build_network, count_parameters
    from monetpipe.paths import MonetPaths
    from monetpipe.training.api import plan_fold

    env = MonetPaths.from_env()
    paths = MonetPaths(env.raw, env.preprocessed, results)
    settings = FederatedConfig(sites=sites, rounds=rounds, local_iters=1, batch_size=2, update_dtype=dtype)
    result = run_federated(task, model, 0, settings, paths=paths)
    rows = read_federated_log(result.fold_dir / "federated_log.csv")
    last = [r for r in rows if r["round"] == rounds and r["site"] != "global" and r["status"] == "ok"]
    plans = plan_fold(task, model, 0, paths=paths).plans
    counts = count_parameters(build_network(model, plans.num_input_channels, plans.num_classes))
    return {
        "model": model,
        "update_dtype": dtype,
        "params_trainable": counts["params_trainable"],
        "params_keras": counts["params_keras"],
        "sites": len(last),
        "bytes_up_per_site": sum(r["bytes_up"] for r in last) / len(last),
        "bytes_down_per_site": sum(r["bytes_down"] for r in last) / len(last),
        "bytes_per_round": sum(r["bytes_up"] + r["bytes_down"] for r in last),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-t", "--task", default="4")
    p.add_argument("-m", "--models", nargs="+", default=["monet", "unet16", "unet64", "attention_unet"])
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--update-dtype", default="float32", choices=("float32", "float16"))
    p.add_argument("-o", "--output", help="append the rows to this JSON file")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    rows = []
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="monet_traffic_") as tmp:
            rows.append(measure(args.task, model, args.sites, args.rounds, args.update_dtype, Path(tmp)))
        if args.output:  # after every model, so a later failure loses nothing
            out = Path(args.output)
            old = json.loads(out.read_text()) if out.is_file() else []
            out.write_text(json.dumps(old + rows[-1:], indent=2))
    print("| model | parameters (Keras count) | update dtype | MiB up per site | MiB down per site | MiB per round |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params_keras']:,} | {r['update_dtype']} | {r['bytes_up_per_site'] / MIB:.3f} | "
            f"{r['bytes_down_per_site'] / MIB:.3f} | {r['bytes_per_round'] / MIB:.2f} |"
        )


if __name__ == "__main__":
    main()
