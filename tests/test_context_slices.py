"""2.5D input (``--context-slices K``): the stacks, and the whole path plan -> train -> predict on them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from monetpipe.inference.cli import main as predict_main
from monetpipe.inference.predictor import predict_slices
from monetpipe.io.image import read_label, read_volume
from monetpipe.preprocessing.cli import main as preprocess_main
from monetpipe.preprocessing.context import stack_context
from monetpipe.preprocessing.plans import DEFAULT_PLANS, PAPER_PLANS, Plans, plans_name_for
from monetpipe.synthetic import make_synthetic_task
from monetpipe.training.cli import main as train_main
from monetpipe.training.data import NO_CLASS, read_patch

TASK = "Task901_SyntheticCT"


def reference_stack(data: np.ndarray, z: int, k: int) -> np.ndarray:
    """The documented stack, written out plainly: slices z-K..z+K (clamped into the volume), C each."""
    s = data.shape[1]
    return np.concatenate([data[:, min(max(z + o, 0), s - 1)] for o in range(-k, k + 1)], axis=0)


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_stack_equals_the_reference_at_the_edges_and_in_the_middle(k):
    data = np.random.default_rng(k).normal(size=(2, 5, 6, 7)).astype(np.float32)
    stacks = stack_context(data, np.arange(5), k)
    assert stacks.shape == (5, 2 * (2 * k + 1), 6, 7)
    for z in range(5):
        np.testing.assert_array_equal(stacks[z], reference_stack(data, z, k))
    if k:  # slice 0's missing neighbours are slice 0 itself; slice 4's are slice 4
        np.testing.assert_array_equal(stacks[0, :2], data[:, 0])
        np.testing.assert_array_equal(stacks[4, -2:], data[:, 4])
        np.testing.assert_array_equal(stacks[2, 2 * k : 2 * k + 2], data[:, 2])  # centre: the slice itself


def test_training_patches_and_prediction_batches_hold_the_same_stack():
    data = np.random.default_rng(0).normal(size=(1, 6, 16, 32)).astype(np.float32)
    seg = np.zeros((6, 16, 32), np.uint8)
    rng = np.random.default_rng(0)
    for z in (0, 3, 5):
        out, out_seg = np.zeros((3, 16, 32), np.float32), np.zeros((16, 32), np.float32)
        read_patch(data, seg, z, (16, 32), NO_CLASS, rng, out, out_seg, context_slices=1)
        np.testing.assert_array_equal(out, reference_stack(data, z, 1))

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(x.clone())
            return x[:, :1] * 0

    model = Recorder()
    predict_slices([model], data, batch_size=4, context_slices=1)
    fed = torch.cat(model.seen).numpy()
    np.testing.assert_array_equal(fed, np.stack([reference_stack(data, z, 1) for z in range(6)]))


def test_context_plans_have_their_own_name_and_the_default_is_25d():
    assert plans_name_for(context_slices=1) == "monetPlans_ctx1" == plans_name_for() == DEFAULT_PLANS
    assert plans_name_for(context_slices=0) == "monetPlans" == PAPER_PLANS  # 2D plans keep their old name
    assert plans_name_for(binary=True, channels=("FLAIR",), context_slices=2) == "monetPlans_binary_ch_FLAIR_ctx2"


# --- the whole path ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx_run(tmp_path_factory):
    """Task901 planned 2D (``--context-slices 0``) and with the defaults (2.5D, K = 1); MoNet trained 2 steps
    with monet_train's default plans; test images predicted with monet_predict's."""
    root = tmp_path_factory.mktemp("ctx")
    mp = pytest.MonkeyPatch()
    for n in ("raw", "preprocessed", "results"):
        mp.setenv(f"MONET_{n}", str(root / n))
    try:
        make_synthetic_task(root / "raw", kind="ct", num_cases=6, num_test=1, seed=3, shape=(48, 40, 10))
        assert preprocess_main(["-t", "901", "-np", "1", "--context-slices", "0"]) == 0
        assert preprocess_main(["-t", "901", "-np", "1"]) == 0  # the default: 2.5D
        train = ["-t", "901", "-m", "monet", "--epochs", "1", "--iters-per-epoch", "2"]
        assert train_main([*train, "--batch-size", "4", "--num-workers", "0", "--num-threads", "1"]) == 0
        out = root / "predictions"
        images = root / "raw" / TASK / "imagesTs"
        args = ["-i", str(images), "-o", str(out), "-t", "901", "-m", "monet"]
        assert predict_main([*args, "--threads", "1"]) == 0
        yield root, out
    finally:
        mp.undo()


def test_context_plans_are_recorded_and_the_cache_stays_2d(ctx_run):
    root, _ = ctx_run
    task_dir = root / "preprocessed" / TASK
    plans = Plans.load(task_dir / "monetPlans_ctx1.json")
    assert plans.context_slices == 1 and plans.num_input_channels == 3
    assert json.loads((task_dir / "monetPlans_ctx1.json").read_text())["num_input_channels"] == 3
    assert Plans.load(task_dir / "monetPlans.json").context_slices == 0  # the 2D plans are untouched
    for flat in sorted((task_dir / "monetPlans_slices").glob("*_data.npy")):
        stacked = task_dir / "monetPlans_ctx1_slices" / flat.name
        np.testing.assert_array_equal(np.load(stacked), np.load(flat))  # same (1, S, H, W) arrays


def test_a_25d_model_predicts_on_the_input_grid(ctx_run):
    root, out = ctx_run
    folder = root / "results" / TASK / "monet__monetPlans_ctx1"
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["network"]["in_channels"] == 3
    assert (folder / "fold_0" / "validation" / "summary.json").is_file()  # the final validation ran on it
    inputs = sorted((root / "raw" / TASK / "imagesTs").glob("*.nii.gz"))
    assert inputs
    for image_file in inputs:
        image, g_in = read_volume([image_file])
        labels, g_out = read_label(out / image_file.name)
        assert g_out == g_in and labels.shape == image.shape[1:]  # spacing, origin, direction, shape


def test_a_25d_model_with_2d_plans_is_refused_by_name(ctx_run, tmp_path, capsys):
    root, _ = ctx_run
    copied = tmp_path / "monet__monetPlans"
    shutil.copytree(root / "results" / TASK / "monet__monetPlans_ctx1", copied)
    shutil.copyfile(root / "preprocessed" / TASK / "monetPlans.json", copied / "plans.json")
    images = root / "raw" / TASK / "imagesTs"
    code = predict_main(["-i", str(images), "-o", str(tmp_path / "out"), "--model-folder", str(copied)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert str(copied / "fold_0" / "checkpoint_final.pth") in err
    assert "was trained on plans monetPlans_ctx1" in err and "monet_predict -p monetPlans_ctx1" in err


def test_the_paper_recipe_trains_on_the_2d_plans_unless_told_otherwise():
    from monetpipe.training.cli import parse_args

    assert parse_args(["-t", "901", "-m", "monet"]).plans == "monetPlans_ctx1"
    assert parse_args(["-t", "901", "-m", "monet", "--recipe", "paper"]).plans == "monetPlans"
    flags = ["-t", "901", "-m", "monet", "--recipe", "paper", "-p", "monetPlans_ctx1"]
    assert parse_args(flags).plans == "monetPlans_ctx1"


def test_default_training_on_a_task_planned_only_in_2d_says_how_to_go_on(ctx_run, tmp_path, monkeypatch, capsys):
    """A task preprocessed before 2.5D became the default has only monetPlans: the error names both ways."""
    root, _ = ctx_run
    pre = tmp_path / "preprocessed"
    shutil.copytree(root / "preprocessed" / TASK, pre / TASK, ignore=shutil.ignore_patterns("monetPlans_ctx1*"))
    for n, path in (("raw", root / "raw"), ("preprocessed", pre), ("results", tmp_path / "results")):
        monkeypatch.setenv(f"MONET_{n}", str(path))
    assert train_main(["-t", "901", "-m", "monet", "--epochs", "1", "--iters-per-epoch", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(pre / TASK / "monetPlans_ctx1.json") in err
    assert "it has: monetPlans)" in err and "pass -p monetPlans" in err
    assert f"monet_plan_and_preprocess -t {TASK}" in err
    assert not (tmp_path / "results" / TASK).exists()  # nothing was started


def test_monet_inspect_feeds_a_25d_model_its_stack(ctx_run, tmp_path):
    from monetpipe.evaluation.inspect_cli import main as inspect_main

    root, _ = ctx_run
    case = sorted((root / "preprocessed" / TASK / "monetPlans_ctx1_slices").glob("*_data.npy"))[0].name[:-9]
    mp = pytest.MonkeyPatch()
    for n in ("raw", "preprocessed", "results"):
        mp.setenv(f"MONET_{n}", str(root / n))
    import monetpipe.evaluation.activations as activations

    drawn = []
    real_draw = activations.draw_figure
    mp.setattr(activations, "draw_figure", lambda ins, out, *a, **k: (drawn.extend(ins), real_draw(ins, out, *a, **k)))
    try:
        args = ["-t", "901", "-m", "monet", "-p", "monetPlans_ctx1", "--case", case, "-o", str(tmp_path / "a.png")]
        assert inspect_main(args) == 0
    finally:
        mp.undo()
    assert (tmp_path / "a.png").is_file()
    # the "input" panel is the inspected slice itself (block K of the stack), not its neighbour z-K
    cache = root / "preprocessed" / TASK / "monetPlans_ctx1_slices"
    data, seg = np.load(cache / f"{case}_data.npy"), np.load(cache / f"{case}_seg.npy")
    (ins,) = drawn
    shown = [z for z in range(seg.shape[0]) if np.array_equal(seg[z], ins.target)]
    assert any(np.allclose(data[0, z], ins.image) for z in shown)
