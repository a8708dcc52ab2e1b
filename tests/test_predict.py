"""monet_predict end to end: geometry, naming, failures, resume, ensembles, real CT (docs/inference.md).

The checkpoints are made here, not by the training code: a tiny MoNet is trained for a few steps on the
synthetic task's cached slices and saved in the documented results layout. Where a test needs to know
the right answer voxel by voxel it uses a "threshold network" (logit = gain * (intensity - t)), whose
correct label map on the original grid is simply ``HU > t``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from monetpipe.inference.api import predict_files, predict_folder
from monetpipe.inference.cli import main
from monetpipe.inference.predictor import pad_to_multiple
from monetpipe.io.image import Geometry
from monetpipe.networks import build_network
from monetpipe.paths import MonetPaths
from monetpipe.preprocessing.api import plan_and_preprocess
from monetpipe.preprocessing.plans import DEFAULT_PLANS, ChannelNormalization, Plans
from monetpipe.synthetic import make_case, make_synthetic_task

SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
CT_SHAPE = (48, 40, 10)


# --- fixtures: tiny tasks and hand-made results folders -------------------------------------------


def load_slices(slices_dir: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each cached case as a batch: slices ``(S, C, H, W)`` padded to a multiple of 16, and their classes."""
    batches = []
    for data_file in sorted(slices_dir.glob("*_data.npy")):
        case = data_file.name[: -len("_data.npy")]
        x, _ = pad_to_multiple(torch.from_numpy(np.load(data_file).astype(np.float32)).transpose(0, 1), 16)
        y, _ = pad_to_multiple(torch.from_numpy(np.load(slices_dir / f"{case}_seg.npy").astype(np.int64)), 16)
        batches.append((x, y))
    return batches


def make_model(plans: Plans, slices_dir: Path, seed: int, train_steps: int = 0) -> nn.Module:
    """A MoNet whose BatchNorm statistics come from the task's slices (so its output varies with the
    image, not a constant), optionally trained for a few steps."""
    torch.manual_seed(seed)
    net = build_network("monet", plans.num_input_channels, plans.num_classes)
    batches = load_slices(slices_dir)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for step in range(train_steps):
        x, y = batches[step % len(batches)]
        logits = net(x)
        if plans.num_classes == 1:
            loss = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], (y > 0).float())
        else:
            loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in net.modules():  # running statistics = the plain average over the batches below
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for x, _ in batches[:2]:
            net(x)
    return net.eval()


def save_results(
    folder: Path, plans: Plans, nets: dict, name: str = "monet", checkpoint: str = "final", config: dict | None = None
) -> Path:
    """Write ``folder/plans.json`` and ``fold_<k>/checkpoint_<checkpoint>.pth`` as docs/training.md documents
    (``config``: the training settings the checkpoint records, e.g. ``{"mirror": True}``)."""
    folder.mkdir(parents=True, exist_ok=True)
    plans.save(folder / "plans.json")
    for fold, net in nets.items():
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(
            {
                "network": {
                    "name": name,
                    "in_channels": plans.num_input_channels,
                    "num_classes": plans.num_classes,
                },
                "model_state": net.state_dict(),
                "plans": plans.to_dict(),
                "epoch": 1,
                **({"config": config} if config is not None else {}),
            },
            folder / f"fold_{fold}" / f"checkpoint_{checkpoint}.pth",
        )
    return folder


@pytest.fixture(scope="module")
def ct_env(tmp_path_factory):
    """A synthetic CT task, its default and binary plans, and a 2-fold MoNet results folder."""
    root = tmp_path_factory.mktemp("ct")
    paths = MonetPaths(root / "raw", root / "preprocessed", root / "results")
    task = make_synthetic_task(paths.raw, "ct", num_cases=4, num_test=2, shape=CT_SHAPE)
    # 2D plans: these tests train their own small models on the cached slices as they are
    result = plan_and_preprocess("901", paths, num_processes=1, context_slices=0)
    binary = plan_and_preprocess("901", paths, num_processes=1, binary=True, context_slices=0).plans
    nets = {
        0: make_model(result.plans, result.layout.slices, seed=0),
        1: make_model(result.plans, result.layout.slices, seed=1),
    }
    folder = save_results(paths.results / task.name / f"monet__{DEFAULT_PLANS}", result.plans, nets)
    return {
        "paths": paths,
        "task": task,
        "plans": result.plans,
        "binary": binary,
        "folder": folder,
        "images": task / "imagesTs",
        "slices": result.layout.slices,
    }


@pytest.fixture(scope="module")
def mr_env(tmp_path_factory):
    """A synthetic two-channel MR task (4D inputs) with an untrained MoNet results folder."""
    root = tmp_path_factory.mktemp("mr")
    paths = MonetPaths(root / "raw", root / "preprocessed", root / "results")
    task = make_synthetic_task(paths.raw, "mr", num_cases=3, num_test=1, shape=(40, 44, 16))
    plans = plan_and_preprocess("902", paths, num_processes=1, context_slices=0).plans
    torch.manual_seed(3)
    folder = save_results(root / "model", plans, {0: build_network("monet", 2, plans.num_classes).eval()})
    return {"plans": plans, "folder": folder, "images": task / "imagesTs"}


class ThresholdNet(nn.Module):
    """Foreground logit ``gain * (x - t)`` on channel 0: the ideal label map is ``x > t`` on any grid."""

    def __init__(self, threshold: float, gain: float = 50.0) -> None:
        super().__init__()
        self.threshold, self.gain = threshold, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * (x[:, :1] - self.threshold)


def ct_threshold_plans(binary: Plans, spacing: tuple[float, float]) -> Plans:
    """Binary plans with a fixed CT normalization ((HU - 0) / 500 after clipping to +-1000)."""
    return dataclasses.replace(
        binary,
        target_spacing=spacing,
        crop_to_nonzero=False,
        normalization=(ChannelNormalization("ct", (-1000.0, 1000.0), 0.0, 500.0),),
    )


def write_volume(array: np.ndarray, path: Path, spacing, origin, direction, dtype=np.int16) -> Geometry:
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return Geometry.of(sitk.ReadImage(str(path)))


def assert_same_geometry(reference: Path, prediction: Path) -> None:
    """Size, spacing, origin and direction identical (``==``, not approximately); 3D sub-geometry for 4D."""
    ref, pred = sitk.ReadImage(str(reference)), sitk.ReadImage(str(prediction))
    assert pred.GetDimension() == 3
    assert pred.GetPixelID() == sitk.sitkUInt8
    assert Geometry.of(pred) == Geometry.of(ref)
    if ref.GetDimension() == 3:
        assert pred.GetSize() == ref.GetSize()
        assert pred.GetSpacing() == ref.GetSpacing()
        assert pred.GetOrigin() == ref.GetOrigin()
        assert pred.GetDirection() == ref.GetDirection()


def read_labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def oblique_direction(a: float = 0.3, b: float = -0.2) -> tuple[float, ...]:
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple(float(v) for v in (rz @ rx).ravel())


def ct_phantom(shape_zyx, seed=0) -> np.ndarray:
    """Air, a soft-tissue ellipse and a bright off-centre "bone" disc (so a flip or transpose shows)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_zyx], indexing="ij")
    hu = np.full(shape_zyx, -1000.0)
    hu[(x / 0.9) ** 2 + (y / 0.8) ** 2 < 1] = 40
    hu[(x - 0.35) ** 2 + (y + 0.3) ** 2 < 0.05] = 700
    return hu + rng.normal(0, 5, shape_zyx)


# --- geometry -------------------------------------------------------------------------------------


def test_geometry_round_trip_odd_oblique_anisotropic(ct_env, tmp_path):
    """Odd sizes, anisotropic spacing and a rotated direction come back identical, labels where HU > 300."""
    inp = tmp_path / "in"
    hu = ct_phantom((7, 29, 37))
    write_volume(hu, inp / "odd.nii.gz", (0.7, 1.3, 3.1), (12.3, -45.6, 78.9), oblique_direction())
    write_volume(
        ct_phantom((9, 31, 23), 1),
        inp / "odd2.nii.gz",
        (1.1, 0.45, 2.0),
        (-5.5, 3.25, 100.0),
        oblique_direction(-0.7, 0.4),
    )
    plans = ct_threshold_plans(ct_env["binary"], (0.8, 0.8))
    summary = predict_files(inp, tmp_path / "out", [ThresholdNet(300 / 500)], plans)
    assert summary.ok and summary.predicted == ["odd", "odd2"]
    for case in ("odd", "odd2"):
        assert_same_geometry(inp / f"{case}.nii.gz", tmp_path / "out" / f"{case}.nii.gz")
    pred, expected = read_labels(tmp_path / "out" / "odd.nii.gz"), hu > 300
    assert set(np.unique(pred)) == {0, 1}
    dice = 2 * (pred.astype(bool) & expected).sum() / (pred.sum() + expected.sum())
    assert dice > 0.9, dice


@pytest.mark.slow
def test_trained_model_segments_synthetic_ct(ct_env, tmp_path):
    """A briefly trained model finds the organ; labels keep the dataset's values (0, 1, 2)."""
    folder = save_results(
        tmp_path / f"monet__{DEFAULT_PLANS}",
        ct_env["plans"],
        {0: make_model(ct_env["plans"], ct_env["slices"], seed=0, train_steps=80)},
    )
    summary = predict_folder(ct_env["images"], tmp_path / "out", folder, device="cpu")
    assert summary.ok and summary.folds == [0]
    dices = []
    for case in summary.predicted:
        assert_same_geometry(ct_env["images"] / f"{case}.nii.gz", tmp_path / "out" / f"{case}.nii.gz")
        _, label, _ = make_case("ct", int(case.split("_")[1]), 0, CT_SHAPE)
        pred = read_labels(tmp_path / "out" / f"{case}.nii.gz")
        assert set(np.unique(pred)) <= {0, 1, 2}
        dices.append(2 * ((label > 0) & (pred > 0)).sum() / ((label > 0).sum() + (pred > 0).sum()))
    assert np.mean(dices) > 0.5, dices


def test_slice_parallel_workers_write_the_same_labels(ct_env, tmp_path):
    """--workers 2 (the CPU default with 2+ threads) and --workers 1 give identical label maps, and the
    caller's PyTorch thread count is what it was."""
    folder = save_results(
        tmp_path / f"monet__{DEFAULT_PLANS}",
        ct_env["plans"],
        {0: make_model(ct_env["plans"], ct_env["slices"], seed=3)},
    )
    before = torch.get_num_threads()
    for workers in (1, 2):
        summary = predict_folder(
            ct_env["images"],
            tmp_path / f"w{workers}",
            folder,
            device="cpu",
            num_threads=2,
            workers=workers,
            batch_size=3,
        )
        assert summary.ok
    assert torch.get_num_threads() == 2  # num_threads=2 stays set after the workers ran
    for case in summary.predicted:
        assert np.array_equal(
            read_labels(tmp_path / "w1" / f"{case}.nii.gz"), read_labels(tmp_path / "w2" / f"{case}.nii.gz")
        )
    torch.set_num_threads(before)


def test_4d_multichannel_input_and_channel_files_agree(mr_env, tmp_path):
    """A 4D MSD case gives a 3D output on its sub-geometry; the same case split per channel gives the same."""
    src = sorted(mr_env["images"].glob("*.nii.gz"))[0]
    msd, nnunet = tmp_path / "msd", tmp_path / "nnunet"
    msd.mkdir()
    shutil.copy(src, msd / "case.nii.gz")
    four_d = sitk.ReadImage(str(src))
    assert four_d.GetDimension() == 4
    size = list(four_d.GetSize())
    for c in range(size[3]):
        channel = sitk.Extract(four_d, size[:3] + [0], [0, 0, 0, c])
        nnunet.mkdir(exist_ok=True)
        sitk.WriteImage(channel, str(nnunet / f"case_{c:04d}.nii.gz"), True)
    a = predict_folder(msd, tmp_path / "out_msd", mr_env["folder"], save_probabilities=True)
    b = predict_folder(nnunet, tmp_path / "out_nnunet", mr_env["folder"], save_probabilities=True)
    assert a.predicted == b.predicted == ["case"]
    out = sitk.ReadImage(str(tmp_path / "out_msd" / "case.nii.gz"))
    assert out.GetSize() == tuple(size[:3])
    assert Geometry.of(out) == Geometry.of(four_d)
    pa = np.load(tmp_path / "out_msd" / "case.npz")["probabilities"]
    pb = np.load(tmp_path / "out_nnunet" / "case.npz")["probabilities"]
    assert pa.dtype == np.float16 and pa.shape == (3, size[2], size[1], size[0])
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_allclose(pa.astype(np.float32).sum(0), 1.0, atol=5e-3)


def test_channel_count_mismatch_and_missing_channel(mr_env, ct_env, tmp_path):
    """A 3D file for a 2-channel model and a case missing a channel file fail by name; others finish."""
    inp = tmp_path / "in"
    src = sorted(mr_env["images"].glob("*.nii.gz"))[0]
    four_d = sitk.ReadImage(str(src))
    size = list(four_d.GetSize())
    inp.mkdir()
    for case, channels in (("good", (0, 1)), ("half", (0,))):
        for c in channels:
            sitk.WriteImage(sitk.Extract(four_d, size[:3] + [0], [0, 0, 0, c]), str(inp / f"{case}_{c:04d}.nii.gz"))
    summary = predict_folder(inp, tmp_path / "out", mr_env["folder"])
    assert summary.predicted == ["good"]
    assert "half_0001.nii.gz" in summary.failed["half"]
    # A one-channel CT (3D) given to the two-channel model: wrong channel count, named.
    ct_in = tmp_path / "ct_in"
    ct_in.mkdir()
    ct_file = sorted(ct_env["images"].glob("*.nii.gz"))[0]
    shutil.copy(ct_file, ct_in / ct_file.name)
    summary = predict_folder(ct_in, tmp_path / "out2", mr_env["folder"])
    (error,) = summary.failed.values()
    assert ct_file.name in error and "1 channel" in error and "expects 2" in error


# --- naming ---------------------------------------------------------------------------------------


def test_nnunet_and_msd_named_inputs_give_the_same_output(ct_env, tmp_path):
    src = sorted(ct_env["images"].glob("*.nii.gz"))[0]
    (tmp_path / "nn").mkdir()
    (tmp_path / "msd").mkdir()
    shutil.copy(src, tmp_path / "nn" / "patient7_0000.nii.gz")
    shutil.copy(src, tmp_path / "msd" / "patient7.nii.gz")
    # MSD names ending in 4 digits that are not channel groups for a 1-channel model stay whole cases.
    shutil.copy(src, tmp_path / "msd" / "lung_0001.nii.gz")
    a = predict_folder(tmp_path / "nn", tmp_path / "out_nn", ct_env["folder"], folds=["0"])
    b = predict_folder(tmp_path / "msd", tmp_path / "out_msd", ct_env["folder"], folds=["0"])
    assert a.predicted == ["patient7"]
    assert b.predicted == ["lung_0001", "patient7"]
    np.testing.assert_array_equal(
        read_labels(tmp_path / "out_nn" / "patient7.nii.gz"),
        read_labels(tmp_path / "out_msd" / "patient7.nii.gz"),
    )
    np.testing.assert_array_equal(
        read_labels(tmp_path / "out_msd" / "lung_0001.nii.gz"),
        read_labels(tmp_path / "out_msd" / "patient7.nii.gz"),
    )


# --- failures and resume --------------------------------------------------------------------------


def test_corrupt_and_nan_files_are_reported_and_others_finish(ct_env, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    good = sorted(ct_env["images"].glob("*.nii.gz"))
    for f in good:
        shutil.copy(f, inp / f.name)
    (inp / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not a NIfTI file" * 10)
    nan = np.zeros((8, 20, 20), np.float32)
    nan[3, 4, 5] = np.nan
    write_volume(nan, inp / "has_nan.nii.gz", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), np.float32)
    (inp / "._broken.nii.gz").write_bytes(b"macOS resource fork")  # ignored, not a case
    code = main(
        [
            "-i",
            str(inp),
            "-o",
            str(tmp_path / "out"),
            "--model-folder",
            str(ct_env["folder"]),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "broken.nii.gz" in err and "has_nan.nii.gz" in err
    assert "NaN" in err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f.name for f in good)


def test_resume_skips_existing_outputs_and_overwrite_redoes_them(ct_env, tmp_path):
    out = tmp_path / "out"
    first = predict_folder(ct_env["images"], out, ct_env["folder"], folds=[0])
    assert len(first.predicted) == 2
    kept, lost = (out / f"{c}.nii.gz" for c in first.predicted)
    stamp = kept.stat().st_mtime_ns
    lost.unlink()  # as if the run had been interrupted before this case was written
    (out / ".tmp-deadbeef-x.nii.gz").write_bytes(b"half a file from a killed run")
    second = predict_folder(ct_env["images"], out, ct_env["folder"], folds=[0])
    assert second.skipped == [kept.name[:-7]] and second.predicted == [lost.name[:-7]]
    assert kept.stat().st_mtime_ns == stamp and lost.is_file()
    third = predict_folder(ct_env["images"], out, ct_env["folder"], folds=[0], overwrite=True)
    assert len(third.predicted) == 2 and kept.stat().st_mtime_ns != stamp


def test_output_inside_input_is_refused(ct_env, tmp_path, capsys):
    inp = tmp_path / "in"
    shutil.copytree(ct_env["images"], inp)
    before = sorted(p.name for p in inp.iterdir())
    for out in (inp, inp / "sub"):
        code = main(["-i", str(inp), "-o", str(out), "--model-folder", str(ct_env["folder"])])
        assert code == 1 and "input folder" in capsys.readouterr().err
    assert sorted(p.name for p in inp.iterdir()) == before


# --- ensembles, probabilities, labels -------------------------------------------------------------


def test_ensemble_of_two_folds_is_the_mean_of_their_probabilities(ct_env, tmp_path):
    probs = {}
    for name, folds in (("f0", ["0"]), ("f1", ["1"]), ("both", None)):
        summary = predict_folder(
            ct_env["images"], tmp_path / name, ct_env["folder"], folds=folds, save_probabilities=True
        )
        assert summary.ok
        case = summary.predicted[0]
        probs[name] = np.load(tmp_path / name / f"{case}.npz")["probabilities"].astype(np.float32)
    assert summary.folds == [0, 1]
    assert probs["f0"].shape[0] == 3  # background, organ, lesion
    assert np.abs(probs["f0"] - probs["f1"]).max() > 0.05  # the folds really differ
    np.testing.assert_allclose(probs["both"], (probs["f0"] + probs["f1"]) / 2, atol=2e-3)


def test_binary_and_label_subset_plans_write_original_label_values(ct_env, tmp_path):
    """``--binary`` plans write 1; plans keeping only label 2 write 2 (the dataset's value, not the class)."""
    inp = tmp_path / "in"
    write_volume(
        ct_phantom((6, 32, 40)),
        inp / "c.nii.gz",
        (0.8, 0.8, 2.5),
        (0.0, 0.0, 0.0),
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
    )
    binary = ct_threshold_plans(ct_env["binary"], (0.8, 0.8))
    predict_files(inp, tmp_path / "bin", [ThresholdNet(0.6)], binary)
    assert set(np.unique(read_labels(tmp_path / "bin" / "c.nii.gz"))) == {0, 1}
    lesion_only = dataclasses.replace(binary, output_labels={0: 0, 1: 2}, label_mapping={0: 0, 1: 0, 2: 1})
    predict_files(inp, tmp_path / "lab2", [ThresholdNet(0.6)], lesion_only)
    assert set(np.unique(read_labels(tmp_path / "lab2" / "c.nii.gz"))) == {0, 2}


def test_binary_model_probabilities_and_labels_agree(ct_env, tmp_path):
    """A one-output (sigmoid) model: the npz holds [1 - p, p]; the label map is 1 exactly where p >= 0.5."""
    binary = ct_env["binary"]
    slices = ct_env["paths"].preprocessed / ct_env["task"].name / f"{binary.plans_name}_slices"
    folder = save_results(tmp_path / "monet__monetPlans_binary", binary, {0: make_model(binary, slices, seed=4)})
    summary = predict_folder(ct_env["images"], tmp_path / "out", folder, save_probabilities=True)
    assert summary.ok
    case = summary.predicted[0]
    probs = np.load(tmp_path / "out" / f"{case}.npz")["probabilities"].astype(np.float32)
    labels = read_labels(tmp_path / "out" / f"{case}.nii.gz")
    assert probs.shape == (2, *labels.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=2e-3)
    assert set(np.unique(labels)) <= {0, 1}
    decided = np.abs(probs[1] - 0.5) > 2e-3  # away from float16 rounding of the threshold
    np.testing.assert_array_equal(labels[decided], (probs[1] >= 0.5)[decided].astype(np.uint8))


def test_largest_component_flag(ct_env, tmp_path):
    inp = tmp_path / "in"
    hu = np.full((6, 30, 40), -1000.0)
    hu[1:5, 5:15, 5:15] = 800  # big
    hu[1:5, 20:24, 30:34] = 800  # small, separate
    write_volume(hu, inp / "c.nii.gz", (0.8, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    plans = ct_threshold_plans(ct_env["binary"], (0.8, 0.8))
    predict_files(inp, tmp_path / "all", [ThresholdNet(0.6)], plans)
    predict_files(inp, tmp_path / "lcc", [ThresholdNet(0.6)], plans, largest_component=True)
    all_, lcc = read_labels(tmp_path / "all" / "c.nii.gz"), read_labels(tmp_path / "lcc" / "c.nii.gz")
    assert all_[1:5, 20:24, 30:34].all() and all_[1:5, 5:15, 5:15].all()
    assert not lcc[:, 18:, 28:].any() and (lcc == all_)[:, :17, :17].all()


# --- model selection ------------------------------------------------------------------------------


def test_task_and_model_flags_find_the_results_folder(ct_env, tmp_path, monkeypatch, capsys):
    paths = ct_env["paths"]
    monkeypatch.setenv("MONET_raw", str(paths.raw))
    monkeypatch.setenv("MONET_preprocessed", str(paths.preprocessed))
    monkeypatch.setenv("MONET_results", str(paths.results))
    code = main(
        [
            "-i",
            str(ct_env["images"]),
            "-o",
            str(tmp_path / "out"),
            "-t",
            "Task901",
            "-m",
            "monet",
            "-f",
            "1",
            "--checkpoint",
            "final",
        ]
    )
    assert code == 0
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 2
    code = main(
        [
            "-i",
            str(ct_env["images"]),
            "-o",
            str(tmp_path / "out2"),
            "-t",
            "901",
            "-m",
            "monet",
            "--checkpoint",
            "best",
        ]
    )
    assert code == 1 and "checkpoint_best" in capsys.readouterr().err


def test_model_folder_alone_with_no_data_roots(ct_env, tmp_path, monkeypatch):
    """A hospital that received only the results folder: no raw or preprocessed data anywhere."""
    hospital = tmp_path / "hospital"
    shutil.copytree(ct_env["folder"], hospital / f"monet__{DEFAULT_PLANS}")
    images = tmp_path / "images"
    shutil.copytree(ct_env["images"], images)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONET_raw", str(tmp_path / "nope_raw"))
    monkeypatch.setenv("MONET_preprocessed", str(tmp_path / "nope_pre"))
    monkeypatch.setenv("MONET_results", str(tmp_path / "nope_results"))
    code = main(
        [
            "-i",
            str(images),
            "-o",
            str(tmp_path / "out"),
            "--model-folder",
            str(hospital / f"monet__{DEFAULT_PLANS}"),
            "--largest-component",
            "--batch-size",
            "3",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in images.iterdir())
    assert not (tmp_path / "nope_raw").exists() and not (tmp_path / "monet_data").exists()


def test_tta_is_refused_for_a_model_trained_without_mirroring(ct_env, tmp_path, capsys, caplog):
    """Flipped slices show anatomy where training never put it; averaging them in made Task04 worse
    (docs/inference.md), so --tta needs every fold trained with --mirror."""
    net = make_model(ct_env["plans"], ct_env["slices"], seed=0)
    plain = save_results(tmp_path / "plain" / f"monet__{DEFAULT_PLANS}", ct_env["plans"], {0: net})
    mirrored = save_results(
        tmp_path / "mirrored" / f"monet__{DEFAULT_PLANS}", ct_env["plans"], {0: net}, config={"mirror": True}
    )
    args = ["-i", str(ct_env["images"]), "--tta", "--batch-size", "3"]
    assert main([*args, "-o", str(tmp_path / "out_plain"), "--model-folder", str(plain)]) == 1
    err = capsys.readouterr().err
    assert str(plain) in err and "trained without --mirror" in err and "Drop --tta" in err and "Traceback" not in err
    assert not list((tmp_path / "out_plain").glob("*.nii.gz"))
    assert main([*args, "-o", str(tmp_path / "out_mirrored"), "--model-folder", str(mirrored)]) == 0
    assert len(list((tmp_path / "out_mirrored").glob("*.nii.gz"))) == len(list(ct_env["images"].iterdir()))
    # a model flipped left-right only is averaged over that flip alone
    left_right = save_results(
        tmp_path / "left_right" / f"monet__{DEFAULT_PLANS}",
        ct_env["plans"],
        {0: net},
        config={"mirror": True, "mirror_axes": "1"},
    )
    with caplog.at_level("INFO", logger="monetpipe.inference.api"):
        assert main([*args, "-o", str(tmp_path / "out_lr"), "--model-folder", str(left_right)]) == 0
    assert "mirror TTA over in-plane axes (1,)" in caplog.text


# --- real CT --------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_CT / "lung1_image_zcrop.nii.gz").is_file(), reason="the real CT test data is absent")
def test_real_ct_resampled_to_coarser_plan_and_back(ct_env, tmp_path):
    """512 x 512 at 0.57 mm -> the plan's 1.14 mm grid -> back: identical geometry, bone where HU > 300."""
    src = SHARED_CT / "lung1_image_zcrop.nii.gz"
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(src, inp / "lung1.nii.gz")
    plans = ct_threshold_plans(ct_env["binary"], (1.140625, 1.140625))
    summary = predict_files(inp, tmp_path / "out", [ThresholdNet(300 / 500)], plans, batch_size=4)
    assert summary.ok
    assert_same_geometry(src, tmp_path / "out" / "lung1.nii.gz")
    pred = read_labels(tmp_path / "out" / "lung1.nii.gz").astype(bool)
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(src)))
    expected = hu > 300
    assert pred.shape == hu.shape == (11, 512, 512)
    dice = 2 * (pred & expected).sum() / (pred.sum() + expected.sum())
    assert dice > 0.85, dice
    # Labels only where expected: every predicted voxel within 2 in-plane pixels of real bone (a shift,
    # flip or transpose of the grid would put many of them elsewhere).
    from scipy import ndimage

    near = ndimage.binary_dilation(expected, structure=np.ones((1, 5, 5), bool))
    assert (pred & ~near).sum() <= 0.001 * pred.sum()


def test_onnxruntime_backend_gives_the_same_segmentation(ct_env, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = {}
    for backend in ("torch", "onnxruntime"):
        summary = predict_folder(
            ct_env["images"], tmp_path / backend, ct_env["folder"], folds=["0"], backend=backend, device="cpu"
        )
        assert summary.ok
        out[backend] = {c: read_labels(tmp_path / backend / f"{c}.nii.gz") for c in summary.predicted}
    for case, labels in out["torch"].items():
        assert np.mean(labels == out["onnxruntime"][case]) >= 0.9999


# --- bad inputs and bad conditions never cost the good cases ---------------------------------------


def test_odd_byte_in_one_file_name_fails_that_case_only(ct_env, tmp_path):
    """A non-UTF-8 byte in a file name once aborted the process (SimpleITK, exit 134) with nothing
    written; now that case is reported by a printable name and the others are written."""
    import os
    import subprocess
    import sys

    inp = tmp_path / "in"
    inp.mkdir()
    good = sorted(ct_env["images"].glob("*.nii.gz"))
    for f in good:
        shutil.copy(f, inp / f.name)
    real = SHARED_CT / "lung1_image_zcrop.nii.gz"
    source = real if real.is_file() else good[0]  # a real CT where present; it is never read anyway
    odd = os.path.join(os.fsencode(inp), b"odd\xffname.nii.gz")
    shutil.copy(source, odd)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "monetpipe.inference.cli", "-i", str(inp), "-o", str(out)]
        + ["--model-folder", str(ct_env["folder"]), "-f", "0", "--device", "cpu"],
        capture_output=True,
        env=os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=300,
    )
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, err
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in good)
    assert "FAILED odd\\xffname" in err and "not valid UTF-8" in err and "Rename it" in err


def test_unwritable_output_is_refused_before_the_model_is_loaded(ct_env, tmp_path, capsys):
    """A read-only -o (or one that cannot be created) is refused first, naming the folder; the model
    folder given here does not even exist, so nothing was loaded or computed."""
    import os

    if os.geteuid() != 0:
        read_only = tmp_path / "read_only"
        read_only.mkdir()
        read_only.chmod(0o555)
        cases = [(read_only, "not writable"), (read_only / "sub" / "out", "cannot create")]
    elif Path("/sys").is_dir():  # root ignores permission bits; sysfs refuses new files even to root
        cases = [(Path("/sys"), "not writable"), (Path("/sys/monet_out/x"), "cannot create")]
    else:
        pytest.skip("no read-only folder to test with")
    for out, words in cases:
        code = main(["-i", str(ct_env["images"]), "-o", str(out), "--model-folder", str(tmp_path / "no_model")])
        err = capsys.readouterr().err
        assert code == 1 and str(out) in err and words in err and "Choose another -o" in err
        assert "Traceback" not in err and "no_model" not in err


def test_in_plane_spacing_far_from_the_plan_is_refused_by_name(ct_env, tmp_path):
    """0.01 mm pixels (a broken header) would shrink every slice to a pixel or two and come back as one
    label everywhere; the case is refused with its spacing and the plan's, the normal case is written."""
    inp = tmp_path / "in"
    hu = ct_phantom((6, 32, 40))
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    write_volume(hu, inp / "normal.nii.gz", (0.8, 0.8, 2.5), (0.0, 0.0, 0.0), identity)
    write_volume(hu, inp / "tiny_pixels.nii.gz", (0.01, 0.01, 2.5), (0.0, 0.0, 0.0), identity)
    plans = ct_threshold_plans(ct_env["binary"], (0.8, 0.8))
    summary = predict_files(inp, tmp_path / "out", [ThresholdNet(0.6)], plans)
    assert summary.predicted == ["normal"]
    error = summary.failed["tiny_pixels"]
    assert "tiny_pixels.nii.gz" in error and "0.01 x 0.01 mm" in error and "0.8 x 0.8 mm" in error
    assert "pixel spacing" in error
    assert not (tmp_path / "out" / "tiny_pixels.nii.gz").exists()


class _Failing(nn.Module):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.exc


@pytest.mark.parametrize(
    "exc,words",
    [
        (MemoryError(), ["out of memory", "--batch-size", "--workers"]),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), ["out of memory"]),
        (TypeError("unsupported operand"), ["internal error", "bug in monetpipe", "TypeError"]),
    ],
)
def test_memory_and_internal_errors_are_not_blamed_on_the_image(ct_env, tmp_path, caplog, exc, words):
    plans = ct_threshold_plans(ct_env["binary"], (0.8, 0.8))
    summary = predict_files(ct_env["images"], tmp_path / "out", [_Failing(exc)], plans, overlap=False)
    assert summary.failed and not summary.predicted
    for error in summary.failed.values():
        assert "Check the image" not in error
        assert all(w in error for w in words), error
    if isinstance(exc, TypeError):  # a bug: its traceback is logged for the report
        assert any(r.exc_info for r in caplog.records if r.levelname == "ERROR")
