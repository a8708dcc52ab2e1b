"""``run_federated``: ``monet_federated`` as a plain function (the command only parses arguments).

Resolves the fold as ``monet_train`` does (same split, same inner-validation carving), decides which site
gets which training cases, writes the run specification and the Flower App, then either starts a local
federation (SuperLink + one SuperNode per site on 127.0.0.1) or submits to a running SuperLink, and waits
for the ServerApp's outcome.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from monetpipe.errors import MonetError
from monetpipe.federated.settings import FederatedConfig
from monetpipe.io.atomic import read_json, write_json
from monetpipe.paths import MonetPaths
from monetpipe.preprocessing.plans import DEFAULT_PLANS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FederatedResult:
    """What a call of :func:`run_federated` produced."""

    fold_dir: Path
    rounds: int
    best_dice: float | None
    validation_dice: float | None
    sites: dict[str, list[str]]


def plan_sites(fp, settings: FederatedConfig, site_map: str | Path | None) -> dict[str, list[str]]:
    """``--site-map`` checked against the fold and the cache, else the seeded split into ``settings.sites``."""
    from monetpipe.federated.sites import check_site_map, read_site_map, split_sites

    if site_map is None:
        return split_sites(fp.train_cases, settings.sites, settings.seed)
    sites = read_site_map(site_map)
    return check_site_map(
        sites, fp.train_cases, fp.inner_val_cases, fp.val_cases, fp.layout, fp.fold, source=str(site_map)
    )


def run_federated(
    task: str,
    model: str,
    fold: int | str = 0,
    settings: FederatedConfig | None = None,
    plans_name: str = DEFAULT_PLANS,
    paths: MonetPaths | None = None,
    site_map: str | Path | None = None,
    continue_run: bool = False,
    superlink: str | None = None,
    root_certificates: str | None = None,
    keep_work_dir: bool = False,
) -> FederatedResult:
    """Train ``model`` on ``fold`` of ``task`` across sites with Flower.

    Args:
        task: ``Task04``, ``4``, ... (resolved in ``MONET_preprocessed``).
        model: a registered network.
        fold: a fold of ``splits_final.json`` or ``"all"``.
        settings: rounds, local steps, strategy, ... (``settings.sites`` is replaced by the site map's size).
        plans_name: which plans and slice cache.
        paths: data roots (default: from the environment).
        site_map: JSON ``{"site": [cases]}``; default: split the fold's training cases into ``settings.sites``.
        continue_run: resume an unfinished run from its last completed round.
        superlink: ``HOST:PORT`` of a running SuperLink to submit to; default: start a local federation.
        root_certificates: CA certificate of that SuperLink (TLS); without it the connection is insecure.
        keep_work_dir: keep the generated app, logs and Flower home (their folder is logged).

    Raises:
        MonetError: bad settings or site map, a busy / finished run folder, or the federation failed (the
            ServerApp's message).
    """
    from monetpipe.federated.launcher import LocalFederation, submit, write_app, write_connection
    from monetpipe.federated.server_app import model_folder
    from monetpipe.training.api import plan_fold
    from monetpipe.training.lock import run_folder_lock

    settings = settings or FederatedConfig()
    paths = paths or MonetPaths.from_env()
    fp = plan_fold(task, model, fold, plans_name, paths, settings.inner_val_fraction, settings.seed)
    # submitted to a running federation without a site map, each site brings its own case list
    sites = {} if superlink is not None and site_map is None else plan_sites(fp, settings, site_map)
    if site_map is not None:
        settings = settings.with_changes(sites=len(sites), min_sites=_min_sites(settings, len(sites), site_map))
    folder = model_folder(paths.results, fp.task, fp.model, plans_name, settings.tag())
    fold_dir = folder.fold_dir(fp.fold)
    _check_run_folder(folder, fp.fold, continue_run)
    if continue_run and folder.checkpoint(fp.fold, "final").is_file():
        with run_folder_lock(fold_dir, command="monet_federated"):
            return _finished(dataclasses.replace(fp, folder=folder), settings, sites)
    with run_folder_lock(fold_dir, command="monet_federated"):
        pass  # refuse now, not after starting the federation, when another run holds it

    work = Path(tempfile.mkdtemp(prefix="monet_federated_"))
    try:
        spec_file, result_file, site_files = _write_spec(
            work, fp, plans_name, paths, settings, sites, continue_run, superlink
        )
        app_dir = write_app(work / "app", spec_file)
        flwr_home = work / "flwr_home"
        where = ", ".join(f"{k}: {len(v)} cases" for k, v in sites.items()) or "each with its own case list"
        log.info("%s fold %s: %d site(s) (%s), %s of %s -> %s", fp.model, fp.fold, settings.sites, where,
                 settings.describe_rounds(), settings.strategy, fold_dir)  # fmt: skip
        if superlink is None:
            threads = settings.threads or max(1, _cpus() // len(sites))
            with LocalFederation(work, site_files, paths.preprocessed, threads) as federation:
                write_connection(flwr_home, federation.address)
                submit(app_dir, flwr_home)
        else:
            write_connection(flwr_home, superlink, root_certificates)
            submit(app_dir, flwr_home)
        return _outcome(result_file, work, superlink, sites)
    finally:
        if keep_work_dir:
            log.info("kept the federation's work folder %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _write_spec(
    work: Path,
    fp,
    plans_name: str,
    paths: MonetPaths,
    settings: FederatedConfig,
    sites: dict,
    continue_run: bool,
    superlink: str | None,
) -> tuple[Path, Path, dict]:
    """The ServerApp's instructions (``spec.json``) and each site's case list; where the result will be."""
    spec_file, result_file = work / "spec.json", work / "result.json"
    site_files = {}
    for name, cases in sites.items():
        site_files[name] = work / "sites" / f"{name}.json"
        write_json(cases, site_files[name])
    write_json(
        {
            "task": fp.task,
            "model": fp.model,
            "fold": fp.fold,
            "plans": plans_name,
            "raw": str(paths.raw),
            "preprocessed": str(paths.preprocessed),
            "results": str(paths.results),
            "settings": settings.to_dict(),
            "site_map": sites or None,
            "continue": continue_run,
            "result_file": str(result_file),
            "runtime": "local deployment (SuperLink + SuperNodes on 127.0.0.1)" if superlink is None else "deployment",
            "command": sys.argv,
        },
        spec_file,
    )
    return spec_file, result_file, site_files


def _outcome(result_file: Path, work: Path, superlink: str | None, sites: dict) -> FederatedResult:
    """What the ServerApp reported; its failure as a MonetError (its traceback logged)."""
    if not result_file.is_file():
        raise MonetError(
            "the federation ended without a result (the ServerApp did not finish); see the [flower] log above"
            + (f" and {work / 'logs'}" if superlink is None else "")
            + ". Re-run with --continue to resume from the last completed round."
        )
    outcome = read_json(result_file)
    if not outcome.get("ok"):
        if outcome.get("traceback"):
            log.error("ServerApp failure:\n%s", outcome["traceback"])
        raise MonetError(outcome.get("error", "the federated run failed"))
    return FederatedResult(
        Path(outcome["fold_dir"]),
        int(outcome["rounds"]),
        outcome.get("best_dice"),
        outcome.get("validation_dice"),
        sites,
    )


def _finished(fp, settings: FederatedConfig, sites: dict) -> FederatedResult:
    """``--continue`` on a finished run: only the final validation, when it is missing (as ``monet_train``)."""
    import math

    from monetpipe.results import load_checkpoint

    ckpt = load_checkpoint(fp.folder.checkpoint(fp.fold, "final"))
    summary_file = fp.folder.validation_dir(fp.fold) / "summary.json"
    if fp.val_cases and not summary_file.is_file():
        import torch

        from monetpipe.networks import build_network
        from monetpipe.training.config import resolve_device
        from monetpipe.training.validation import validate_fold

        log.info("%s is finished but has no final validation; running it", fp.fold_dir)
        spec = ckpt["network"]
        net = build_network(spec["name"], spec["in_channels"], spec["num_classes"])
        net.load_state_dict(ckpt["model_state"])
        device = torch.device(resolve_device(settings.device))
        net.to(device)
        validate_fold(
            net, fp.layout, fp.plans, fp.val_cases, fp.folder.validation_dir(fp.fold), device, settings.val_batch_size
        )
    else:
        log.info("%s is already finished; nothing to do", fp.fold_dir)
    summary = read_json(summary_file) if summary_file.is_file() else {}
    best = float(ckpt.get("best_dice", math.nan))
    return FederatedResult(
        fp.fold_dir,
        int(ckpt["epoch"]),
        best if math.isfinite(best) else None,
        summary.get("foreground_mean", {}).get("Dice"),
        sites,
    )


def _min_sites(settings: FederatedConfig, n: int, source) -> int | None:
    if settings.min_sites is not None and settings.min_sites > n:
        raise MonetError(f"--min-sites {settings.min_sites}: {source} names only {n} site(s). Lower --min-sites.")
    return settings.min_sites


def _check_run_folder(folder, fold, continue_run: bool) -> None:
    """Refuse a finished run, or an unfinished one without ``--continue``, before anything starts."""
    final, latest = folder.checkpoint(fold, "final"), folder.checkpoint(fold, "latest")
    if final.is_file() and not continue_run:
        raise MonetError(
            f"{folder.fold_dir(fold)} holds a finished federated run (checkpoint_final.pth); refusing to overwrite "
            f"it. Delete {folder.fold_dir(fold)} to run it again (--continue only re-runs a missing final "
            f"validation), or use another MONET_results."
        )
    if latest.is_file() and not continue_run:
        raise MonetError(
            f"{folder.fold_dir(fold)} holds an unfinished federated run (checkpoint_latest.pth). Pass --continue to "
            f"resume it from its last completed round, or delete {folder.fold_dir(fold)} to start over."
        )


def _cpus() -> int:
    from monetpipe.training.config import available_cpus

    return available_cpus() or os.cpu_count() or 1
