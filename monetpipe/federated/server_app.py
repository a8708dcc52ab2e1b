"""The Flower ServerApp: rounds of FedAvg / FedProx over the sites, and the run folder ``monet_train`` writes.

The ServerApp reads a run specification (a JSON file written by :func:`monetpipe.federated.api.run_federated`,
named by the run config key ``spec``), holds the fold's inner-validation and validation cases, and per round:

1. waits (up to ``connect_timeout``) for the sites' SuperNodes, needs at least ``min_sites``;
2. sends the global weights with Flower's strategy (``configure_train`` of ``FedAvg`` / ``FedProx``);
3. collects the sites' weight changes (``round_timeout``); a site that fails or does not answer is logged
   and left out, and the round counts when ``min_sites`` updates arrived (else the run stops with a message
   and ``--continue`` resumes from the last completed round);
4. averages the changes in float32 with the strategy's ``aggregate_train`` (weighted by training slices)
   and adds them to the global weights;
5. runs ``monet_train``'s inner validation on the global model; the best round's weights become
   ``checkpoint_best.pth``; ``checkpoint_latest.pth``, ``federated_log.csv`` and the plot are rewritten.

After the last round: ``checkpoint_final.pth`` and the final validation, as ``monet_train`` does it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from monetpipe.errors import MonetError
from monetpipe.io.atomic import read_json, write_json

log = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls; reports the outcome in the spec's ``result_file``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Flower HTTP call otherwise
    spec_file = Path(str(context.run_config["spec"]))
    spec = read_json(spec_file)
    result_file = Path(spec["result_file"])
    try:
        outcome = run_rounds(grid, spec)
    except MonetError as exc:
        log.error("%s", exc)
        write_json({"ok": False, "error": str(exc)}, result_file)
        return
    except Exception as exc:  # a bug, not a user's mistake: keep the traceback for the report
        write_json(
            {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, result_file
        )
        raise
    write_json({"ok": True, **outcome}, result_file)


def model_folder(results: Path, task: str, model: str, plans_name: str, tag: str):
    """``MONET_results/<Task>/<model>__<plans>__<tag>/``: a results folder ``monet_predict`` reads as it is."""
    from monetpipe.results import ModelFolder

    return ModelFolder(Path(results) / task / f"{model}__{plans_name}__{tag}")


def run_rounds(grid: Grid, spec: dict) -> dict:
    """The whole federated run of one fold (see the module docstring)."""
    from monetpipe.federated.settings import FederatedConfig
    from monetpipe.paths import MonetPaths
    from monetpipe.training.api import plan_fold
    from monetpipe.training.lock import run_folder_lock

    settings = FederatedConfig.from_dict(spec["settings"])
    paths = MonetPaths(Path(spec["raw"]), Path(spec["preprocessed"]), Path(spec["results"]))
    fp = plan_fold(
        spec["task"], spec["model"], spec["fold"], spec["plans"], paths, settings.inner_val_fraction, settings.seed
    )
    fp = dataclasses.replace(fp, folder=model_folder(paths.results, fp.task, fp.model, spec["plans"], settings.tag()))
    with run_folder_lock(fp.fold_dir, command="monet_federated"):
        return _run_locked(grid, fp, settings, spec)


def train_config_of(settings) -> object:
    """The :class:`TrainConfig` the sites train with (augmentation and sampling: ``monet_train``'s defaults)."""
    from monetpipe.training.config import TrainConfig

    return TrainConfig(
        epochs=settings.max_rounds,
        iters_per_epoch=settings.iters_per_epoch,
        batch_size=settings.batch_size,
        lr=settings.lr,
        time_budget=settings.time_budget,
        lr_floor=settings.lr_floor,
        loss=settings.loss,
        device=settings.device,
        seed=settings.seed,
        inner_val_fraction=settings.inner_val_fraction,
        val_batch_size=settings.val_batch_size,
        output_prior=False,  # the server sees no training data to take class frequencies from
    )


def _strategy(settings):
    from flwr.serverapp.strategy import FedAvg, FedProx

    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": settings.required_sites,
        "min_available_nodes": settings.required_sites,
    }
    if settings.strategy == "fedprox":
        return FedProx(proximal_mu=settings.proximal_mu, **common)
    return FedAvg(**common)


def _wait_for_sites(grid: Grid, settings, server_round: int, wanted: int) -> list[int]:
    """Wait up to ``connect_timeout`` for ``wanted`` sites; go on with fewer when ``min_sites`` allows."""
    deadline = time.monotonic() + settings.connect_timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < wanted and time.monotonic() < deadline:
        time.sleep(1.0)
        nodes = list(grid.get_node_ids())
    if len(nodes) < settings.required_sites:
        raise MonetError(
            f"round {server_round}: only {len(nodes)} of {settings.sites} site(s) connected within "
            f"{settings.connect_timeout:g} s and --min-sites is {settings.required_sites}. Start the missing sites' "
            f"SuperNodes, then re-run with --continue."
        )
    if len(nodes) < settings.sites:
        log.warning("round %d: %d of %d sites connected; going on with them", server_round, len(nodes), settings.sites)
    return nodes


def _round_config(fp, settings, train_config, server_round: int, threads: int | None) -> ConfigRecord:
    return ConfigRecord(
        {
            "task": fp.task,
            "plans-name": fp.plans.plans_name,
            "plans": json.dumps(fp.plans.to_dict()),
            "model": fp.model,
            "train-config": json.dumps(train_config.to_dict()),
            "local-iters": int(settings.local_iters or 0),
            "local-epochs": int(settings.local_epochs),
            "update-dtype": settings.update_dtype,
            "held-out": ",".join(fp.inner_val_cases + fp.val_cases),
            "device": settings.device,
            "threads": int(threads or 0),
            "server-round": server_round,
        }
    )


def _of(settings) -> str:
    """``/10`` after a round number where the rounds are capped; nothing when the time budget alone decides."""
    return "" if settings.max_rounds is None else f"/{settings.max_rounds}"


def _reason(msg: Message) -> str:
    text = str(msg.error.reason).strip().splitlines()
    return (text[-1] if text else "failed")[:300]


def _run_locked(grid: Grid, fp, settings, spec: dict) -> dict:
    import torch

    from monetpipe.federated.budget import RoundBudget
    from monetpipe.federated.local_training import apply_delta, floating_state, load_floating_state
    from monetpipe.federated.transport import state_to_arrays
    from monetpipe.networks import build_network
    from monetpipe.training.api import prepare_run_folder
    from monetpipe.training.checkpoint import save_checkpoint
    from monetpipe.training.config import resolve_device
    from monetpipe.training.data import SliceIndex
    from monetpipe.training.distributed import DistContext
    from monetpipe.training.inner_validation import inner_validation

    resume = _resume_or_refuse(fp, spec)
    SliceIndex.build(fp.layout, fp.inner_val_cases + fp.val_cases, fp.plans)  # the server's own cases: fail now
    train_config = train_config_of(settings)
    device = torch.device(resolve_device(settings.device))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    net = build_network(fp.model, fp.plans.num_input_channels, fp.plans.num_classes)
    run = _RunState.resumed(fp, net, settings) if resume else _RunState()
    state = floating_state(net)
    net.to(device)
    record = _run_record(fp, settings, train_config, spec, device, run.done if resume else None)
    prepare_run_folder(fp, record)
    strategy = _strategy(settings)
    ctx = DistContext()
    done_at_start = run.done
    budget = RoundBudget.create(
        settings.time_budget,
        settings.max_rounds,
        settings.lr,
        settings.lr_floor,
        len(fp.inner_val_cases),
        len(fp.val_cases),
        run.budget_state,
    )
    while (left := budget.rounds_left(run.done, run.history)) is None or left > 0:
        start = time.perf_counter()
        server_round = run.done + 1
        # every site before this invocation's first round; later only as many as a round needs, so that a
        # site that died costs one round's wait, not one per round
        first = server_round == done_at_start + 1
        _wait_for_sites(grid, settings, server_round, settings.sites if first else settings.required_sites)
        lr = budget.round_lr(run.history)
        # the sites train the round at this one LR; the budget and its schedule are the server's
        round_train_config = dataclasses.replace(train_config, lr=lr, time_budget=None)
        config = _round_config(fp, settings, round_train_config, server_round, settings.threads)
        messages = list(strategy.configure_train(server_round, state_to_arrays(state), config, grid))
        log.info("round %d%s: sent the global model to %d site(s), LR %.3g", server_round, _of(settings),
                 len(messages), lr)  # fmt: skip
        replies = list(grid.send_and_receive(messages, timeout=settings.round_timeout))
        valid, round_rows = _collect_replies(messages, replies, run.site_names, server_round, settings)
        if len(valid) < settings.required_sites:
            raise MonetError(
                f"round {server_round}: {len(valid)} of {len(messages)} site(s) returned an update and --min-sites is "
                f"{settings.required_sites}; the run stops after round {run.done} (saved in "
                f"{fp.folder.checkpoint(fp.fold, 'latest')}). Fix or restart the failed site(s) (see the log above) "
                f"and re-run with --continue."
            )
        aggregated, _ = strategy.aggregate_train(server_round, valid)
        state = apply_delta(state, {k: a.numpy() for k, a in aggregated.items()})
        load_floating_state(net, state)
        val_start = time.perf_counter()
        metrics = inner_validation(
            net,
            fp.layout,
            fp.inner_val_cases,
            settings.loss,
            fp.plans.num_classes,
            device,
            ctx,
            settings.val_batch_size,
            context_slices=fp.plans.context_slices,
        )
        now = time.perf_counter()
        metrics["val_seconds"] = now - val_start
        is_best = run.end_round(server_round, round_rows, len(messages), metrics, settings, now - start, lr)
        run.budget_state = budget.state_dict()
        _save_round(fp, settings, net, train_config, record, run, is_best)
        budget.round_saved(time.perf_counter() - now)

    if settings.time_budget:
        log.info("time budget: %.0f of %.0f s spent after %d round(s)", budget.elapsed(), settings.time_budget,
                 run.done)  # fmt: skip
    run.budget_state = budget.state_dict()
    save_checkpoint(_checkpoint(fp, net, train_config, record, run, True), fp.folder.checkpoint(fp.fold, "final"))
    record["federated"]["rounds_done"] = run.done
    write_json(record, fp.fold_dir / "config.json")
    log.info("finished %s after %d rounds (best inner-val Dice %.4f)", fp.fold_dir, run.done, run.best)
    summary = _final_validation(fp, net, device, settings)
    return {
        "fold_dir": str(fp.fold_dir),
        "rounds": run.done,
        "best_dice": run.best if math.isfinite(run.best) else None,
        "validation_dice": (summary or {}).get("foreground_mean", {}).get("Dice"),
    }


def _resume_or_refuse(fp, spec: dict) -> bool:
    """Whether to continue an unfinished run; a finished one, or an unfinished one without --continue, is refused."""
    final, latest = fp.folder.checkpoint(fp.fold, "final"), fp.folder.checkpoint(fp.fold, "latest")
    if final.is_file():
        raise MonetError(
            f"{fp.fold_dir} holds a finished federated run (checkpoint_final.pth); refusing to overwrite it. Delete "
            f"{fp.fold_dir} to run it again, or use another MONET_results."
        )
    resume = bool(spec.get("continue")) and latest.is_file()
    if latest.is_file() and not resume:
        raise MonetError(
            f"{fp.fold_dir} holds an unfinished federated run (checkpoint_latest.pth). Pass --continue to resume "
            f"it from its last completed round, or delete {fp.fold_dir} to start over."
        )
    return resume


@dataclass
class _RunState:
    """What the rounds have produced so far: rounds done, per-round history, the log rows, the best Dice."""

    done: int = 0
    history: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    best: float = -math.inf
    site_names: dict = field(default_factory=dict)
    budget_state: dict = field(default_factory=dict)  # RoundBudget.state_dict(): budget seconds spent, LR progress

    @classmethod
    def resumed(cls, fp, net, settings) -> _RunState:
        """The state saved in ``checkpoint_latest.pth``, its weights loaded into ``net``."""
        from monetpipe.results import load_checkpoint
        from monetpipe.training.checkpoint import network_spec

        latest = fp.folder.checkpoint(fp.fold, "latest")
        ckpt = load_checkpoint(latest)
        if ckpt.get("network") != network_spec(fp.model, fp.plans.num_input_channels, fp.plans.num_classes):
            raise MonetError(f"{latest}: holds another network than {fp.model}; delete {fp.fold_dir} to start over.")
        net.load_state_dict(ckpt["model_state"])
        run = cls(
            int(ckpt["epoch"]),
            list(ckpt["history"]),
            list(ckpt["federated"]["log"]),
            float(ckpt["best_dice"]),
            {int(k): v for k, v in ckpt["federated"].get("node_sites", {}).items()},
            dict(ckpt["federated"].get("budget") or {}),
        )
        log.info("continuing %s after round %d%s", fp.fold_dir, run.done, _of(settings))
        return run

    def end_round(
        self, server_round: int, round_rows: list, sent: int, metrics: dict, settings, seconds: float, lr: float
    ) -> bool:
        """Record a finished round (site rows, a ``global`` row, the history); True when its Dice is the best.
        ``seconds``: the whole round, inner validation included (``metrics["val_seconds"]`` of it)."""
        self.done = server_round
        is_best = metrics["val_dice"] > self.best
        self.best = max(self.best, metrics["val_dice"])
        ok_rows = [r for r in round_rows if r["status"] == "ok"]
        slices = sum(r["num_slices"] for r in ok_rows)
        train_loss = sum(r["train_loss"] * r["num_slices"] for r in ok_rows) / slices
        seconds = round(seconds, 2)
        self.history.append(
            {
                "epoch": server_round,
                "train_loss": train_loss,
                "val_loss": metrics["val_loss"],
                "val_dice": metrics["val_dice"],
                "lr": lr,
                "seconds": seconds,
                "val_seconds": round(float(metrics.get("val_seconds", 0.0)), 2),
            }
        )
        self.rows.extend(sorted(round_rows, key=lambda r: r["site"]))
        self.rows.append(
            {
                "round": server_round,
                "site": "global",
                "train_loss": train_loss,
                "bytes_up": sum(r.get("bytes_up") or 0 for r in round_rows),
                "bytes_down": sum(r.get("bytes_down") or 0 for r in round_rows),
                "seconds": seconds,
                "num_slices": slices,
                "steps": sum(r["steps"] for r in ok_rows),
                "val_loss": metrics["val_loss"],
                "val_dice": metrics["val_dice"],
                "status": f"{len(ok_rows)}/{sent} sites",
            }
        )
        log.info(
            "round %d%s: %d/%d updates, train loss %.4f, inner-val loss %.4f, Dice %.4f, %.1f s%s",
            server_round,
            _of(settings),
            len(ok_rows),
            sent,
            train_loss,
            metrics["val_loss"],
            metrics["val_dice"],
            seconds,
            " (best)" if is_best else "",
        )
        return is_best


def _collect_replies(messages: list, replies: list, site_names: dict, server_round: int, settings):
    """The valid updates (arrays as float32) and one log row per site: ok, failed, or no reply."""
    from monetpipe.federated.transport import as_float32, message_bytes

    down = {m.metadata.dst_node_id: message_bytes(m) for m in messages}
    sent_to = {m.object_id: m.metadata.dst_node_id for m in messages}
    valid, round_rows, answered = [], [], set()
    for reply in replies:
        # an error reply made by the SuperLink (a site that stopped answering) comes from the SuperLink's
        # node id: name the site by the message it answers
        node = sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        answered.add(node)
        if reply.has_error():
            name = site_names.get(node, f"node-{node}")
            log.warning("round %d: site %s failed: %s", server_round, name, _reason(reply))
            round_rows.append(
                {"round": server_round, "site": name, "bytes_down": down.get(node), "status": _reason(reply)}
            )
            continue
        content = reply.content
        name = str(content["site"]["name"])
        site_names[node] = name
        metrics = content["metrics"]
        round_rows.append(
            {
                "round": server_round,
                "site": name,
                "train_loss": float(metrics["train-loss"]),
                "bytes_up": message_bytes(reply),
                "bytes_down": down.get(node),
                "seconds": round(float(metrics["seconds"]), 2),
                "num_slices": int(metrics["num-examples"]),
                "steps": int(metrics["steps"]),
                "status": "ok",
            }
        )
        reply.content = RecordDict({"arrays": as_float32(content["arrays"]), "metrics": metrics})
        valid.append(reply)
    for node in sorted(set(down) - answered):
        name = site_names.get(node, f"node-{node}")
        log.warning("round %d: site %s sent no update within %g s", server_round, name, settings.round_timeout)
        round_rows.append({"round": server_round, "site": name, "bytes_down": down[node], "status": "no reply"})
    return valid, round_rows


def _checkpoint(fp, net, train_config, record: dict, run: _RunState, finished: bool) -> dict:
    """``monet_train``'s checkpoint format, plus the federation's log and site names."""
    from monetpipe.training.checkpoint import network_spec, rng_states

    return {
        "network": network_spec(fp.model, fp.plans.num_input_channels, fp.plans.num_classes),
        "model_state": {k: v.cpu() for k, v in net.state_dict().items()},
        "plans": fp.plans.to_dict(),
        "epoch": run.done,
        "history": run.history,
        "best_dice": run.best,
        "stopped_early": False,
        "finished": finished,
        "rng": rng_states(),
        "config": train_config.to_dict(),
        "cases": {"train": fp.train_cases, "inner_val": fp.inner_val_cases, "val": fp.val_cases},
        "federated": {
            **record["federated"],
            "log": run.rows,
            "node_sites": {str(k): v for k, v in run.site_names.items()},
            "budget": run.budget_state,
        },
    }


def _save_round(fp, settings, net, train_config, record: dict, run: _RunState, is_best: bool) -> None:
    """Checkpoints as ``monet_train`` writes them (best before latest, the replaced latest kept as previous),
    then the logs and the progress plot."""
    from monetpipe.federated.records import plot_federated, write_federated_log
    from monetpipe.training.checkpoint import save_checkpoint, save_latest
    from monetpipe.training.progress import write_log_csv

    checkpoint = _checkpoint(fp, net, train_config, record, run, False)
    if is_best:
        save_checkpoint(checkpoint, fp.folder.checkpoint(fp.fold, "best"))
    save_latest(checkpoint, fp.folder.checkpoint(fp.fold, "latest"), fp.folder.checkpoint(fp.fold, "previous"))
    write_federated_log(run.rows, fp.fold_dir / "federated_log.csv")
    write_log_csv(run.history, fp.fold_dir / "training_log.csv")
    plot_federated(
        run.rows, fp.fold_dir / "federated_progress.png", f"{fp.task} {fp.model} fold {fp.fold} ({settings.tag()})"
    )


def _final_validation(fp, net, device, settings) -> dict | None:
    """The fold's validation cases through ``monet_train``'s final validation (``monet_predict``'s code path)."""
    if not fp.val_cases:
        log.info("fold %s has no validation cases: skipping the final validation", fp.fold)
        return None
    from monetpipe.training.validation import validate_fold

    return validate_fold(
        net, fp.layout, fp.plans, fp.val_cases, fp.folder.validation_dir(fp.fold), device, settings.val_batch_size
    )


def _run_record(fp, settings, train_config, spec: dict, device, resumed_from: int | None) -> dict:
    """``config.json``: ``monet_train``'s record plus the ``"federated"`` object."""
    import flwr

    from monetpipe.training.api import run_record

    resolved = {
        "device": str(device),
        "batch_size": train_config.batch_size or fp.plans.batch_size,
        "patch_size": list(fp.plans.patch_size),
        "num_classes": fp.plans.num_classes,
        "best_checkpoint_metric": "inner-val Dice of the global model after each round (max)",
    }
    record = run_record(fp, train_config, resolved, resumed_from)
    site_map = spec.get("site_map")
    record["federated"] = {
        "sites": settings.sites,
        "rounds": settings.max_rounds,
        "time_budget": settings.time_budget,
        "strategy": settings.strategy,
        "proximal_mu": settings.proximal_mu if settings.strategy == "fedprox" else None,
        "local_epochs": None if settings.local_iters else settings.local_epochs,
        "local_iters": settings.local_iters,
        "min_sites": settings.required_sites,
        "update_dtype": settings.update_dtype,
        "tag": settings.tag(),
        "runtime": spec.get("runtime", "deployment"),
        "site_cases": site_map,
        "settings": settings.to_dict(),
        "flwr": flwr.__version__,
    }
    if spec.get("command"):
        record["command"] = spec["command"]
    return record
