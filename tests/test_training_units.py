"""Unit tests of the training parts that need no task on disk: losses, sampling, patches, checkpoints,
config."""

from __future__ import annotations

import math
import random
from dataclasses import fields

import numpy as np
import pytest
import torch

from monetpipe.errors import MonetError
from monetpipe.training.checkpoint import load_pretrained, restore_rng_states, rng_states, save_checkpoint
from monetpipe.training.config import TrainConfig
from monetpipe.training.data import (
    NO_CLASS,
    CaseSlices,
    SliceIndex,
    carve_inner_validation,
    epoch_schedule,
    foreground_places,
    iterations_per_epoch,
    rank_columns,
    read_patch,
)
from monetpipe.training.losses import (
    DiceCELoss,
    SoftDiceLoss,
    dice_from_confusion,
    dice_statistics,
    hard_confusion,
    loss_from_statistics,
)
from monetpipe.training.progress import read_log_csv, write_log_csv
from monetpipe.training.trainer import EarlyStopping


def _logits_for(target: torch.Tensor, num_classes: int, strength: float = 20.0) -> torch.Tensor:
    """Logits that put (almost) all probability on ``target``."""
    if num_classes == 1:
        return (target.float() * 2 - 1).unsqueeze(1) * strength
    return torch.nn.functional.one_hot(target, num_classes).permute(0, 3, 1, 2).float() * strength


# ---- losses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 3])
def test_dice_loss_is_zero_for_a_perfect_and_one_for_a_disjoint_prediction(num_classes):
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 2:8, 2:8] = 1
    if num_classes == 3:
        target[:, 10:14, 10:14] = 2
    loss = SoftDiceLoss()
    assert loss(_logits_for(target, num_classes), target).item() < 1e-4
    wrong = torch.zeros_like(target)
    wrong[:, 8:10, 0:16] = 1 if num_classes == 1 else 2  # overlaps no reference foreground
    assert loss(_logits_for(wrong, num_classes), target).item() > 0.99


def test_dice_loss_ignores_background_and_uses_the_batch_as_one_volume():
    # slice 0 holds all the foreground, slice 1 none: a per-slice Dice would punish slice 1 for nothing.
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, :4] = 1
    logits = _logits_for(target, 2)
    assert SoftDiceLoss()(logits, target).item() < 1e-4
    # predicting background everywhere is a total miss of the (only) foreground class
    assert SoftDiceLoss()(_logits_for(torch.zeros_like(target), 2), target).item() > 0.99


def test_dice_ce_adds_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert DiceCELoss()(logits, target).item() == pytest.approx(SoftDiceLoss()(logits, target).item() + ce.item(), 1e-5)
    binary = target.clamp(max=1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], binary.float())
    assert DiceCELoss()(logits[:, :1], binary).item() == pytest.approx(
        SoftDiceLoss()(logits[:, :1], binary).item() + bce.item(), 1e-5
    )


def test_loss_from_accumulated_statistics_equals_the_loss_of_the_whole_set():
    torch.manual_seed(1)
    logits, target = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6, 8, 8))
    stats = dice_statistics(logits[:2], target[:2]) + dice_statistics(logits[2:], target[2:])
    ce_sum = sum(
        torch.nn.functional.cross_entropy(logits[s], target[s], reduction="sum").item()
        for s in (slice(0, 2), slice(2, 6))
    )
    assert loss_from_statistics("dice", stats, 0.0, 0) == pytest.approx(SoftDiceLoss()(logits, target).item(), 1e-5)
    assert loss_from_statistics("dice_ce", stats, ce_sum, target.numel()) == pytest.approx(
        DiceCELoss()(logits, target).item(), 1e-5
    )


def test_hard_dice_per_class_with_nan_for_absent_classes():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, :2] = 1  # 2 pixels of class 1, no class 2
    pred = torch.zeros_like(target)
    pred[0, 0, :1] = 1  # 1 TP, 1 FN
    pred[0, 3, 3] = 1  # 1 FP
    dice = dice_from_confusion(hard_confusion(_logits_for(pred, 3), target))
    assert dice[0] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert math.isnan(dice[1])


# ---- sampling and patches -----------------------------------------------------------------------------


def _index(layout=None) -> SliceIndex:
    cases = [
        CaseSlices("a", 5, {1: np.array([1, 2]), 2: np.array([2])}),
        CaseSlices("b", 3, {1: np.array([], dtype=np.int64), 2: np.array([], dtype=np.int64)}),
        CaseSlices("c", 4, {1: np.array([0]), 2: np.array([], dtype=np.int64)}),
    ]
    return SliceIndex(layout, cases)


def test_inner_validation_is_seeded_disjoint_and_at_least_one_case():
    ids = [f"case_{i:03d}" for i in range(25)]
    train, inner = carve_inner_validation(ids, 0.1, seed=7)
    assert len(inner) == 2 and not set(train) & set(inner) and sorted(train + inner) == ids
    assert carve_inner_validation(list(reversed(ids)), 0.1, seed=7) == (
        train,
        inner,
    )  # order of input irrelevant
    assert carve_inner_validation(ids, 0.1, seed=8)[1] != inner
    assert len(carve_inner_validation(ids[:3], 0.1)[1]) == 1
    with pytest.raises(MonetError, match="at least 2"):
        carve_inner_validation(ids[:1])


def test_a_third_of_each_batch_is_reserved_for_foreground_and_spread_across_ranks():
    assert foreground_places(32, 1 / 3).sum() == 11
    assert foreground_places(3, 1 / 3).sum() == 1
    assert foreground_places(8, 0.0).sum() == 0
    places = foreground_places(12, 1 / 3)
    for rank in range(2):  # each half of the batch (a rank's share) gets its part
        assert places[rank_columns(12, rank, 2)].sum() == 2


def test_rank_columns_partition_the_batch():
    for batch, world in [(32, 2), (7, 3), (4, 4)]:
        covered = np.concatenate([np.arange(batch)[rank_columns(batch, r, world)] for r in range(world)])
        assert covered.tolist() == list(range(batch))


def test_epoch_schedule_is_deterministic_covers_every_slice_and_forces_foreground():
    index = _index()
    assert index.num_slices == 12 and index.foreground_cases == [0, 2]
    iterations = iterations_per_epoch(index.num_slices, 6, cap=250)
    assert iterations == 2
    s = epoch_schedule(index, epoch=3, iterations=iterations, batch_size=6, foreground_fraction=1 / 3, seed=5)
    assert np.array_equal(s, epoch_schedule(index, 3, iterations, 6, 1 / 3, 5))
    assert not np.array_equal(s, epoch_schedule(index, 4, iterations, 6, 1 / 3, 5))
    forced = s[:, foreground_places(6, 1 / 3)].reshape(-1, 3)
    for case, sl, cls in forced:
        assert cls != NO_CLASS and sl in index.cases[case].class_slices[cls]
    uniform = s[:, ~foreground_places(6, 1 / 3)].reshape(-1, 3)
    assert (uniform[:, 2] == NO_CLASS).all()
    flat = index.offsets[uniform[:, 0]] + uniform[:, 1]
    assert len(set(flat.tolist())) == len(flat)  # a pass draws without replacement
    assert iterations_per_epoch(100_000, 32, cap=250) == 250


def test_read_patch_pads_small_slices_centred_and_keeps_the_forced_class_when_cropping():
    rng = np.random.default_rng(0)
    data = np.arange(1 * 2 * 6 * 10, dtype=np.float16).reshape(1, 2, 6, 10) + 1
    seg = np.zeros((2, 6, 10), dtype=np.uint8)
    out_d, out_s = np.zeros((1, 8, 8), np.float32), np.zeros((8, 8), np.float32)
    read_patch(data, seg, 1, (8, 8), NO_CLASS, rng, out_d, out_s)
    assert (out_d[0, 0] == 0).all() and (out_d[0, 7] == 0).all()  # padded rows (6 -> 8, centred)
    assert (out_d[0, 1:7] > 0).all()  # width 10 cropped to 8: every column real data
    big_seg = np.zeros((1, 40, 40), dtype=np.uint8)
    big_seg[0, 37, 2] = 2  # a single pixel of class 2 in a corner
    big_data = np.zeros((1, 1, 40, 40), dtype=np.float32)
    for trial in range(20):
        out_d, out_s = np.zeros((1, 16, 16), np.float32), np.zeros((16, 16), np.float32)
        read_patch(big_data, big_seg, 0, (16, 16), 2, np.random.default_rng(trial), out_d, out_s)
        assert (out_s == 2).sum() == 1


# ---- checkpoints, schedule, config, log ---------------------------------------------------------------


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    save_checkpoint({"rng": rng_states()}, tmp_path / "c.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    loaded = torch.load(tmp_path / "c.pth", weights_only=True)
    restore_rng_states(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left nothing behind


def test_pretrained_weights_copy_what_fits_and_name_the_rest():
    from monetpipe.networks import build_network

    source = build_network("monet", 1, 3)
    target = build_network("monet", 1, 1)
    copied, untouched = load_pretrained(target, {"model_state": source.state_dict()}, "src.pth")
    assert (
        copied > 50 and untouched and all("head" in name or "out" in name or "final" in name for name in untouched)
    ), untouched
    with pytest.raises(ValueError, match="none of its weights"):
        load_pretrained(target, {"model_state": {"x": torch.zeros(1)}}, "src.pth")


def test_early_stopping_counts_epochs_without_improvement_and_resumes():
    stopper = EarlyStopping(patience=2)
    assert [stopper.step(v) for v in (1.0, 0.9, 0.95, 0.9)] == [False, False, False, True]
    again = EarlyStopping(patience=2)
    again.load_state_dict(EarlyStopping(2).state_dict() | {"best": 0.9, "bad_epochs": 1})
    assert again.step(0.91) is True


def test_config_rejects_bad_values_with_the_flag_name():
    with pytest.raises(MonetError, match="--epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(MonetError, match="--loss"):
        TrainConfig(loss="focal")
    assert TrainConfig.from_dict(TrainConfig(lr=1e-3).to_dict() | {"unknown": 1}) == TrainConfig(lr=1e-3)


def test_every_config_field_is_a_flag_with_the_same_default():
    from monetpipe.training.cli import build_parser, config_from_args

    args = build_parser().parse_args(["-t", "4", "-m", "monet"])
    assert config_from_args(args) == TrainConfig()
    custom = build_parser().parse_args(
        [
            "-t",
            "4",
            "-m",
            "monet",
            "--epochs",
            "7",
            "--rotation",
            "5",
            "--mirror",
            "--loss",
            "dice_ce",
            "--num-workers",
            "0",
            "--batch-size",
            "6",
        ]
    )
    cfg = config_from_args(custom)
    assert (cfg.epochs, cfg.rotation_deg, cfg.mirror, cfg.loss, cfg.num_workers, cfg.batch_size) == (
        7,
        5.0,
        True,
        "dice_ce",
        0,
        6,
    )
    assert {f.name for f in fields(TrainConfig)} <= set(vars(args)) | {"rotation_deg"}


def test_the_parser_is_generated_from_the_config_fields():
    from monetpipe.training.cli import build_parser

    flags = {a.dest: a for a in build_parser()._actions}
    for f in fields(TrainConfig):
        action = flags[f.name]
        assert action.default == f.default and action.help == f.metadata["help"]
    assert flags["rotation_deg"].option_strings == ["--rotation"]
    assert flags["output_prior"].option_strings == ["--output-prior", "--no-output-prior"]
    assert flags["channels_last"].option_strings == ["--channels-last", "--no-channels-last"]
    assert flags["mirror"].option_strings == ["--mirror"] and flags["mirror"].nargs == 0
    assert flags["loss"].choices == ("dice", "dice_ce") and flags["epochs"].type is int
    assert flags["lr"].type is float and flags["batch_size"].type is int


def test_task_and_model_are_required_without_config(capsys):
    from monetpipe.training.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["-m", "monet"])
    assert "the following arguments are required: -t/--task" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "cannot read it as JSON"),
        ('{"epochs": 3}', "not a training run's config.json"),
        ('{"task": "T", "model": "monet", "fold": 0, "plans": "p", "config": {"epoks": 3}}', "unknown setting"),
    ],
)
def test_a_bad_config_file_is_refused_by_name(tmp_path, capsys, content, message):
    from monetpipe.training.cli import main

    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    assert main(["--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"--config {path}: {message}" in err and "Traceback" not in err


def test_training_log_round_trip(tmp_path):
    rows = [
        {
            "epoch": e,
            "train_loss": 0.5 / e,
            "val_loss": 0.6 / e,
            "val_dice": float("nan") if e == 1 else 0.7,
            "lr": 5e-4,
            "seconds": 1.5,
        }
        for e in (1, 2)
    ]
    write_log_csv(rows, tmp_path / "training_log.csv")
    back = read_log_csv(tmp_path / "training_log.csv")
    assert (tmp_path / "training_log.csv").read_text().splitlines()[
        0
    ] == "epoch,train_loss,val_loss,val_dice,lr,seconds"
    assert [r["epoch"] for r in back] == [1, 2] and math.isnan(back[0]["val_dice"])
    assert back[1]["train_loss"] == pytest.approx(0.25)


# ---- output prior -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [("monet", "head.norm.bias"), ("unet16", "head.bias")])
def test_the_output_bias_is_the_one_that_feeds_the_logits(name, expected):
    from monetpipe.networks import build_network
    from monetpipe.training.output_prior import find_output_bias, init_output_prior

    net = build_network(name, 2, 3)
    bias = find_output_bias(net, 2)
    assert bias is dict(net.named_parameters())[expected]
    assert init_output_prior(net, 2, 3, np.array([0.9, 0.06, 0.04]))
    net.eval()
    with torch.no_grad():
        probs = torch.softmax(net(torch.zeros(1, 2, 32, 32)), 1)
    assert probs[0, 0].mean() > 0.6  # background is now the default guess


def test_prior_bias_reproduces_the_frequencies():
    from monetpipe.training.output_prior import prior_bias

    freqs = np.array([0.9, 0.07, 0.03])
    assert np.allclose(torch.softmax(torch.tensor(prior_bias(freqs, 3)), 0).numpy(), freqs)
    assert np.allclose(torch.sigmoid(torch.tensor(prior_bias(np.array([0.8, 0.2]), 1))).numpy(), [0.2])


def test_flags_for_writes_recorded_values_as_the_flags_that_set_them():
    from monetpipe.training.cli import config_from_args, parse_args
    from monetpipe.training.config import flags_for

    values = {"lr": 5e-4, "loss": "dice", "time_budget": 3600.0, "compile_step": True, "channels_last": False}
    flags = flags_for(values)
    assert flags == ["--lr", "0.0005", "--loss", "dice", "--time-budget", "3600s", "--compile", "--no-channels-last"]
    config = config_from_args(parse_args(["-t", "4", "-m", "monet", *flags]))
    assert {k: getattr(config, k) for k in values} == values  # the flags give the values back
    assert flags_for({"mirror": False, "schedule": None}) == ["(without --mirror)", "(without --schedule)"]


@pytest.mark.parametrize(("axes", "flippable"), [("0,1", {0, 1}), ("1", {1}), ("0", {0})])
def test_mirror_flips_only_the_axes_asked_for(axes, flippable):
    """--mirror-axes 1 flips a slice left-right (Task04's columns) and never swaps its rows (anterior and
    posterior there); without --mirror nothing is flipped whatever --mirror-axes says."""
    from monetpipe.training.augmentation import training_transforms

    plain = dict(rotation_deg=0.0, scale=0.0, shift=0.0)
    ramp = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)  # every flip gives a different array
    seen = set()
    for seed in range(30):
        np.random.seed(seed)
        batch = {"data": ramp[None, None].copy(), "seg": ramp[None, None].copy()}
        out = training_transforms(TrainConfig(mirror=True, mirror_axes=axes, **plain), (8, 6))(**batch)
        got = out["data"][0, 0]
        match = [f for f in ((), (0,), (1,), (0, 1)) if np.array_equal(np.flip(ramp, f) if f else ramp, got)]
        assert len(match) == 1, "the transform did more than flip"
        assert np.array_equal(out["seg"][0, 0], got), "image and labels flipped differently"
        seen.add(match[0])
    assert seen == {f for f in ((), (0,), (1,), (0, 1)) if set(f) <= flippable}
    assert TrainConfig(mirror=False, mirror_axes="1").mirror_dims == ()
    assert TrainConfig(mirror=True, mirror_axes="0,1").mirror_dims == (0, 1)
    with pytest.raises(MonetError, match="--mirror-axes"):
        TrainConfig(mirror=True, mirror_axes="2")


def _slices(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` smooth random 3-channel 16 x 12 slices of varied contrast, and label maps thresholded from them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :12]
    data = np.stack([np.sin(yy / rng.uniform(2, 4) + c) + np.cos(xx / rng.uniform(2, 4)) for c in range(3)])
    data = np.repeat(data[None], n, axis=0) * rng.uniform(0.5, 2, (n, 1, 1, 1))
    seg = (data[:, :1] > 0.5).astype(np.float32) + (data[:, :1] > 1.2)
    return data.astype(np.float32), seg


def _augment(config: TrainConfig, data: np.ndarray, seg: np.ndarray, seed: int = 0) -> dict:
    from monetpipe.training.augmentation import training_transforms

    np.random.seed(seed)
    return training_transforms(config, data.shape[2:])(data=data.copy(), seg=seg.copy())


def test_spatial_probability_leaves_a_share_of_slices_uninterpolated():
    """--spatial-probability p rotates and zooms each slice with probability p each, so about (1 - p)^2 of the
    slices reach the network exactly as stored (no interpolation blur), with their labels unchanged too;
    p = 1 (the default and the paper's) transforms every slice."""
    data, seg = _slices()
    spatial = dict(rotation_deg=30.0, scale=0.25, shift=0.0)
    for p, low, high in ((0.0, 1.0, 1.0), (0.2, 0.5, 0.78), (1.0, 0.0, 0.0)):
        out = _augment(TrainConfig(spatial_probability=p, **spatial), data, seg)
        same = np.array([np.array_equal(a, b) for a, b in zip(data, out["data"], strict=True)])
        assert low <= same.mean() <= high, (p, same.mean())
        assert all(np.array_equal(a, b) for a, b in zip(seg[same], out["seg"][same], strict=True))
    assert TrainConfig().spatial_probability == 1.0
    with pytest.raises(MonetError, match="--spatial-probability"):
        TrainConfig(spatial_probability=1.5)


def test_intensity_augmentation_changes_images_never_labels():
    """--intensity-augmentation varies about 6 in 10 slices' intensities (noise, blur, brightness, contrast,
    gamma) and leaves every label map as it was; a slice's channels are treated alike, so slices whose three
    channels were equal mostly keep them equal (only the per-pixel noise, on 1 in 10, tells them apart).
    Off by default and in the paper's recipe."""
    from monetpipe.training.config import PAPER_RECIPE

    data, seg = _slices()
    plain = dict(rotation_deg=0.0, scale=0.0, shift=0.0)
    assert np.array_equal(_augment(TrainConfig(**plain), data, seg)["data"], data), "the default changed intensities"
    out = _augment(TrainConfig(intensity_augmentation=True, **plain), data, seg)
    assert np.array_equal(out["seg"], seg), "intensity augmentation changed labels"
    changed = np.array([not np.array_equal(a, b) for a, b in zip(data, out["data"], strict=True)])
    assert 0.45 <= changed.mean() <= 0.8, changed.mean()
    assert np.isfinite(out["data"]).all()
    equal = np.repeat(data[:, :1], 3, axis=1)
    out = _augment(TrainConfig(intensity_augmentation=True, **plain), equal, seg, seed=3)["data"]
    alike = [np.allclose(s[0], s[1], atol=1e-5) and np.allclose(s[0], s[2], atol=1e-5) for s in out]
    assert np.mean(alike) >= 0.8, "a slice's channels were augmented differently"
    assert PAPER_RECIPE["intensity_augmentation"] is False and not TrainConfig().intensity_augmentation


def test_dropout_flag_sets_every_dropout_layer_of_the_network_it_trains():
    """``--dropout 0`` trains MoNet without its RDDC blocks' SpatialDropout2D (the paper's 0.2): a training-mode
    forward pass is then deterministic; no flag keeps each network's own rates; a rate outside [0, 1) is
    refused by flag."""
    import torch

    from monetpipe.networks import build_network, dropout_overrides
    from monetpipe.training.cli import config_from_args, parse_args

    config = config_from_args(parse_args(["-t", "4", "-m", "monet", "--dropout", "0"]))
    assert config.dropout == 0.0
    torch.manual_seed(0)
    net = build_network("monet", 3, 3, **dropout_overrides("monet", config.dropout)).train()
    rates = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout2d)]
    assert len(rates) == 15 and set(rates) == {0.0}  # three in each of the five RDDC blocks
    x = torch.randn(2, 3, 16, 12)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    default = config_from_args(parse_args(["-t", "4", "-m", "monet"]))
    assert default.dropout is None and dropout_overrides("monet", default.dropout) == {}
    rates = {m.p for m in build_network("monet", 3, 3).modules() if isinstance(m, torch.nn.Dropout2d)}
    assert rates == {0.2}
    unet = build_network("unet16", 1, 2, **dropout_overrides("UNet16", 0.1))
    assert {m.p for m in unet.modules() if isinstance(m, torch.nn.Dropout2d)} == {0.1}
    with pytest.raises(MonetError, match="--dropout"):
        TrainConfig(dropout=1.0)
