"""The Flower ClientApp: what runs at each site (one SuperNode per site).

A site is configured once, when its SuperNode starts (``--node-config``):

- ``site``: its name (appears in ``federated_log.csv``);
- ``cases``: a JSON file listing its case ids, or the ids separated by commas;
- ``preprocessed``: its ``MONET_preprocessed`` folder (default: the ``MONET_preprocessed`` environment
  variable of the SuperNode), holding the task cached with the same plans as on the server;
- ``threads`` (optional): torch threads for training; ``device`` (optional): ``cpu``, ``cuda``, ``auto``.

Each round the server sends the global weights and the recipe; the site checks that none of its cases
is one the server holds out for validation, trains (:func:`~monetpipe.federated.local_training.train_site_round`)
and answers with its weight change (in ``float16`` when the server asks for it) and its number of
training slices (FedAvg's weight). Images never leave the site.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from monetpipe.errors import MonetError

log = logging.getLogger(__name__)
app = ClientApp()


def site_cases(value: str) -> list[str]:
    """``cases`` of the node config: a JSON file with a list of ids, or ids separated by commas."""
    text = str(value).strip()
    if text.endswith(".json"):
        path = Path(text)
        try:
            cases = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MonetError(
                f"{path}: cannot read this site's case list ({exc}). Write a JSON list of case ids."
            ) from None
        if not isinstance(cases, list) or not all(isinstance(c, str) for c in cases):
            raise MonetError(f'{path}: must be a JSON list of case ids, e.g. ["hippocampus_001", ...].')
        return sorted(cases)
    cases = sorted(c.strip() for c in text.split(",") if c.strip())
    if not cases:
        raise MonetError('this SuperNode\'s --node-config has no cases; add cases="/path/cases.json".')
    return cases


def _site_layout(node_config: dict, task: str, plans_name: str):
    from monetpipe.paths import find_task
    from monetpipe.preprocessing.slice_cache import CacheLayout

    root = node_config.get("preprocessed") or os.environ.get("MONET_preprocessed")
    if not root:
        raise MonetError(
            'this SuperNode knows no slice cache: add preprocessed="/path/to/MONET_preprocessed" to its '
            "--node-config (or set MONET_preprocessed before starting it)."
        )
    _, task_dir = find_task(task, [Path(str(root))])
    return CacheLayout(task_dir, plans_name)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round at this site: train from the global weights, reply with the weight change."""
    import torch

    from monetpipe.federated.local_training import train_site_round
    from monetpipe.federated.transport import arrays_to_state, state_to_arrays
    from monetpipe.preprocessing.plans import Plans
    from monetpipe.training.config import TrainConfig, resolve_device

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    node = dict(context.node_config)
    site = str(node.get("site") or f"node-{context.node_id}")
    cfg = msg.content["config"]
    cases = site_cases(str(node.get("cases", "")))
    held_out = set(str(cfg["held-out"]).split(",")) - {""}
    leaked = sorted(held_out.intersection(cases))
    if leaked:
        raise MonetError(
            f"site {site}: case(s) {', '.join(leaked)} are held out by the server for validation; remove them "
            f"from this site's case list ({node.get('cases')})."
        )
    plans = Plans.from_dict(json.loads(str(cfg["plans"])))
    layout = _site_layout(node, str(cfg["task"]), str(cfg["plans-name"]))
    threads = int(node.get("threads", 0) or cfg.get("threads", 0) or 0)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(resolve_device(str(node.get("device") or cfg.get("device", "auto"))))
    update = train_site_round(
        layout=layout,
        plans=plans,
        model_name=str(cfg["model"]),
        site=site,
        case_ids=cases,
        global_state=arrays_to_state(msg.content["arrays"]),
        server_round=int(cfg["server-round"]),
        train_config=TrainConfig.from_dict(json.loads(str(cfg["train-config"]))),
        local_iters=int(cfg["local-iters"]) or None,
        local_epochs=int(cfg["local-epochs"]),
        proximal_mu=float(cfg.get("proximal-mu", 0.0)),
        device=device,
    )
    reply = RecordDict(
        {
            "arrays": state_to_arrays(update.delta, str(cfg["update-dtype"])),
            "metrics": MetricRecord(
                {
                    "num-examples": update.num_slices,
                    "train-loss": update.train_loss,
                    "steps": update.steps,
                    "seconds": update.seconds,
                }
            ),
            "site": ConfigRecord({"name": site}),
        }
    )
    return Message(reply, reply_to=msg)
