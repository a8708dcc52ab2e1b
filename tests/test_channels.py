"""``--channels``: planning, caching, training and predicting on a subset of a dataset's input channels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from monetpipe.errors import MonetError
from monetpipe.inference.cli import main as predict_main
from monetpipe.io.dataset import load_task
from monetpipe.io.image import read_label, read_volume
from monetpipe.preprocessing.cli import main as preprocess_main
from monetpipe.preprocessing.planner import select_channels
from monetpipe.preprocessing.plans import DEFAULT_PLANS, Plans, plans_name_for
from monetpipe.synthetic import make_synthetic_task
from monetpipe.training.cli import main as train_main

TASK = "Task902_SyntheticMR"  # 4D images, channels T1 and T2


@pytest.fixture(scope="module")
def mr_run(tmp_path_factory):
    """Task902 planned with all channels and with T2 only; MoNet trained 2 steps on T2; test images predicted."""
    root = tmp_path_factory.mktemp("channels")
    mp = pytest.MonkeyPatch()
    for n in ("raw", "preprocessed", "results"):
        mp.setenv(f"MONET_{n}", str(root / n))
    try:
        make_synthetic_task(root / "raw", kind="mr", num_cases=6, num_test=1, seed=2, shape=(40, 36, 16))
        assert preprocess_main(["-t", "902", "-np", "1"]) == 0
        assert preprocess_main(["-t", "902", "-np", "1", "--channels", "t2"]) == 0
        train = ["-t", "902", "-m", "monet", "-p", "monetPlans_ch_T2_ctx1", "--epochs", "1", "--iters-per-epoch", "2"]
        assert train_main([*train, "--batch-size", "4", "--num-workers", "0", "--num-threads", "1"]) == 0
        out = root / "predictions"
        images = root / "raw" / TASK / "imagesTs"
        args = ["-i", str(images), "-o", str(out), "-t", "902", "-m", "monet", "-p", "monetPlans_ch_T2_ctx1"]
        assert predict_main([*args, "--threads", "1"]) == 0
        yield root, out
    finally:
        mp.undo()


def test_channels_by_name_any_case_or_index(tmp_path):
    task = load_task(make_synthetic_task(tmp_path, kind="mr", num_cases=2, num_test=0, shape=(32, 32, 16)))
    assert select_channels(["T2"], task) == select_channels(["t2"], task) == select_channels(["1"], task) == (1,)
    assert select_channels(["t2", "0"], task) == (0, 1) and select_channels(None, task) == (0, 1)
    with pytest.raises(MonetError, match=r"--channels FLAIR: not a channel of .*dataset.json.* 0 T1, 1 T2"):
        select_channels(["FLAIR"], task)
    with pytest.raises(MonetError, match="0 T1, 1 T2"):
        select_channels(["2"], task)


def test_a_channel_selection_has_its_own_plans_and_a_cache_of_only_those_channels(mr_run):
    root, _ = mr_run
    task_dir = root / "preprocessed" / TASK
    plans = Plans.load(task_dir / "monetPlans_ch_T2_ctx1.json")
    assert plans.channel_names == ("T2",) and plans.source_channels == (1,)
    assert plans.dataset_channel_names == ("T1", "T2") and plans.num_input_channels == 3  # T2 of 3 slices
    assert Plans.load(task_dir / f"{DEFAULT_PLANS}.json").channel_names == ("T1", "T2")  # the default plan is untouched
    assert plans_name_for(channels=("T2",)) == "monetPlans_ch_T2_ctx1"
    for both in sorted((task_dir / f"{DEFAULT_PLANS}_slices").glob("*_data.npy")):
        t2 = np.load(task_dir / "monetPlans_ch_T2_ctx1_slices" / both.name)
        assert t2.shape[0] == 1
        np.testing.assert_array_equal(t2[0], np.load(both)[1])  # exactly the T2 channel of the full plan


def test_a_one_channel_model_predicts_4d_and_per_channel_inputs_on_their_grid(mr_run, tmp_path):
    root, out = mr_run
    folder = root / "results" / TASK / "monet__monetPlans_ch_T2_ctx1"
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["network"]["in_channels"] == 3  # T2 of slices z-1, z, z+1 (the default 2.5D input)
    assert (folder / "fold_0" / "validation" / "summary.json").is_file()  # final validation read 4D raw images
    (image_file,) = sorted((root / "raw" / TASK / "imagesTs").glob("*.nii.gz"))
    image, g_in = read_volume([image_file])
    labels, g_out = read_label(out / image_file.name)
    assert g_out == g_in and labels.shape == image.shape[1:]

    # the same case as nnU-Net per-channel files (_0000 T1, _0001 T2): the same prediction
    split = tmp_path / "split"
    split.mkdir()
    four_d = sitk.ReadImage(str(image_file))
    for c in range(2):
        sitk.WriteImage(_channel_3d(four_d, c), str(split / f"{image_file.name[: -len('.nii.gz')]}_{c:04d}.nii.gz"))
    args = ["-i", str(split), "-o", str(tmp_path / "out"), "-t", "902", "-m", "monet", "-p", "monetPlans_ch_T2_ctx1"]
    assert predict_main([*args, "--threads", "1"]) == 0
    again, g_again = read_label(tmp_path / "out" / image_file.name)
    _, g_split = read_volume(sorted(split.glob("*.nii.gz")))  # the 3D files' header (rounding of the 4D one)
    assert g_again == g_split
    np.testing.assert_array_equal(again, labels)


def _channel_3d(four_d: sitk.Image, c: int) -> sitk.Image:
    size = list(four_d.GetSize())
    return sitk.Extract(four_d, [*size[:3], 0], [0, 0, 0, c])


def test_an_input_with_too_few_channels_is_refused_naming_what_the_model_expects(mr_run, tmp_path, capsys):
    root, _ = mr_run
    (image_file,) = sorted((root / "raw" / TASK / "imagesTs").glob("*.nii.gz"))
    one = tmp_path / "in"
    one.mkdir()
    sitk.WriteImage(_channel_3d(sitk.ReadImage(str(image_file)), 1), str(one / "case.nii.gz"))
    args = ["-i", str(one), "-o", str(tmp_path / "out"), "-t", "902", "-m", "monet", "-p", "monetPlans_ch_T2_ctx1"]
    assert predict_main([*args, "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "case.nii.gz" in err and "expects 2 (T1, T2; it uses T2)" in err
