"""monet_predict without networks: input grouping, largest component, the restore to the original grid, raw NIfTI."""

from __future__ import annotations

import dataclasses
import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from monetpipe.devices import configure_threads, resolve_device
from monetpipe.errors import MonetError
from monetpipe.inference.inputs import group_input_files
from monetpipe.inference.loading import choose_folds
from monetpipe.inference.postprocessing import keep_largest_component
from monetpipe.io.image import Geometry
from monetpipe.io.nifti import find_nonfinite, write_labels_like
from monetpipe.preprocessing.plans import ChannelNormalization, Plans
from monetpipe.preprocessing.preprocessor import output_lookup, preprocess_image, restore_to_original_grid
from monetpipe.preprocessing.resampling import resample_images
from monetpipe.results import ModelFolder


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


# --- input naming ---------------------------------------------------------------------------------


def ids(cases):
    return {c.case_id: [f.name for f in c.files] for c in cases if c.error is None}


def test_nnunet_channel_files_form_cases(tmp_path):
    touch(
        tmp_path,
        "a_0000.nii.gz",
        "a_0001.nii.gz",
        "b_0001.nii.gz",
        "b_0000.nii.gz",
        ".hidden_0000.nii.gz",
        "._a_0000.nii.gz",
        "notes.txt",
    )
    cases, naming = group_input_files(tmp_path, 2)
    assert naming == "nnunet"
    assert ids(cases) == {"a": ["a_0000.nii.gz", "a_0001.nii.gz"], "b": ["b_0000.nii.gz", "b_0001.nii.gz"]}


def test_msd_names_with_four_digits_are_whole_cases(tmp_path):
    """``lung_0001``/``lung_0002`` for a 1-channel model: no complete channel groups -> MSD cases."""
    touch(tmp_path, "lung_0001.nii.gz", "lung_0002.nii.gz", "lung_0003.nii")
    cases, naming = group_input_files(tmp_path, 1)
    assert naming == "msd"
    assert sorted(ids(cases)) == ["lung_0001", "lung_0002", "lung_0003"]


def test_single_channel_suffix_is_a_channel(tmp_path):
    touch(tmp_path, "liver_3_0000.nii.gz", "liver_10_0000.nii.gz")
    cases, naming = group_input_files(tmp_path, 1)
    assert naming == "nnunet" and sorted(ids(cases)) == ["liver_10", "liver_3"]


def test_mixed_names_fall_back_to_msd(tmp_path):
    touch(tmp_path, "a_0000.nii.gz", "b.nii.gz")
    cases, naming = group_input_files(tmp_path, 1)
    assert naming == "msd" and sorted(ids(cases)) == ["a_0000", "b"]


def test_case_missing_a_channel_is_an_error_for_that_case_only(tmp_path):
    touch(tmp_path, "a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz")
    cases, naming = group_input_files(tmp_path, 2)
    assert naming == "nnunet"
    by_id = {c.case_id: c for c in cases}
    assert by_id["a"].error is None
    assert "b_0001.nii.gz" in by_id["b"].error and "missing" in by_id["b"].error


def test_duplicate_msd_case_is_an_error(tmp_path):
    touch(tmp_path, "a.nii.gz", "a.nii", "b.nii.gz")
    cases, _ = group_input_files(tmp_path, 1)
    errors = {c.case_id: c.error for c in cases}
    assert errors["b"] is None and "a.nii" in errors["a"]


def test_empty_or_missing_folder_is_refused(tmp_path):
    with pytest.raises(MonetError, match="no NIfTI"):
        group_input_files(tmp_path, 1)
    with pytest.raises(MonetError, match="not found"):
        group_input_files(tmp_path / "nope", 1)


# --- largest component ----------------------------------------------------------------------------


def test_keep_largest_component_per_label():
    labels = np.zeros((5, 20, 20), np.uint8)
    labels[1:4, 2:10, 2:10] = 1  # organ, big
    labels[1:4, 15:17, 15:17] = 1  # organ, stray
    labels[2, 4:6, 4:6] = 2  # lesion inside the organ: stays although it touches label 1
    labels[2, 18, 1] = 2  # stray lesion voxel
    out = keep_largest_component(labels)
    assert out.dtype == labels.dtype
    assert (out[1:4, 15:17, 15:17] == 0).all() and out[2, 18, 1] == 0
    assert (out[2, 4:6, 4:6] == 2).all()
    assert (
        (out == 1) == ((labels == 1) & (np.arange(20)[None, None, :] < 12) & (np.arange(20)[None, :, None] < 12))
    ).all()
    # Diagonal neighbours are separate with face connectivity, joined with full connectivity.
    diag = np.zeros((1, 4, 6), np.uint8)
    diag[0, 0, 0] = diag[0, 1, 1] = diag[0, 2, 2] = 3  # a diagonal chain of three
    diag[0, 0, 4] = diag[0, 0, 5] = 3  # a face-connected pair
    assert keep_largest_component(diag)[0, 0, 4:].all() and keep_largest_component(diag).sum() == 6
    assert keep_largest_component(diag, connectivity=3)[0, :3, :3].trace() == 9


# --- restore to the original grid: labels = argmax of the restored probabilities ---------------------


def plans_for(num_classes: int, slice_axis: int) -> Plans:
    fwd = (slice_axis,) + tuple(a for a in range(3) if a != slice_axis)
    return Plans(
        plans_name="t",
        task="t",
        slice_axis=slice_axis,
        transpose_forward=fwd,
        transpose_backward=tuple(int(i) for i in np.argsort(fwd)),
        target_spacing=(1.3, 0.7),
        patch_size=(32, 32),
        median_shape=(5, 20, 20),
        crop_to_nonzero=True,
        normalization=(ChannelNormalization("zscore"),),
        channel_names=("MR",),
        dataset_labels={0: "bg", 3: "a", 5: "b"},
        label_mapping={0: 0, 3: 1, 5: 2},
        output_labels={0: 0, 1: 3, 2: 5} if num_classes > 1 else {0: 0, 1: 5},
        class_names=("bg", "a", "b") if num_classes > 1 else ("bg", "b"),
        num_classes=num_classes,
        batch_size=2,
        max_size=256,
    )


@pytest.mark.parametrize("num_classes,slice_axis", [(3, 0), (1, 0), (3, 2), (1, 1)])
def test_restored_labels_are_the_argmax_of_the_restored_probabilities(num_classes, slice_axis):
    """Labels, with or without the probability volume, in any chunking: the argmax (or p >= 0.5) of the
    probabilities resampled to the crop box, background outside it, slice axis put back."""
    rng = np.random.default_rng(num_classes + slice_axis)
    image = np.zeros((1, 9, 23, 17), np.float32)
    image[0, 2:8, 3:21, 1:15] = rng.normal(size=(6, 18, 14)) + 2  # a crop box that is not the whole volume
    geometry = Geometry((17, 23, 9), (0.9, 1.1, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    plans = plans_for(num_classes, slice_axis)
    data, props = preprocess_image(image, geometry, plans)
    logits = torch.from_numpy(rng.normal(size=(num_classes, *data.shape[1:])).astype(np.float32))
    probs = torch.sigmoid(logits) if num_classes == 1 else torch.softmax(logits, 0)
    labels, restored = restore_to_original_grid(probs, props, plans, with_probabilities=True, chunk=2)
    fast, nothing = restore_to_original_grid(probs, props, plans, chunk=3)
    assert nothing is None and fast.shape == image.shape[1:] and fast.dtype == labels.dtype == np.uint8
    # the reference, built whole: resample every slice at once, place into the box, transpose back
    inside = resample_images(probs.numpy(), tuple(props["shape_after_crop"][1:]))
    full = np.zeros((num_classes, *[image.shape[1:][a] for a in plans.transpose_forward]), np.float32)
    full[0] = 1.0 if num_classes > 1 else 0.0
    box = [props["crop_box_zyx"][a] for a in plans.transpose_forward]
    full[(slice(None), *(slice(a, b) for a, b in box))] = inside
    full = full.transpose([0] + [a + 1 for a in plans.transpose_backward])
    np.testing.assert_array_equal(restored, full)
    classes = (full[0] >= 0.5) if num_classes == 1 else np.argmax(full, axis=0)
    np.testing.assert_array_equal(labels, output_lookup(plans)[classes.astype(np.uint8)])
    np.testing.assert_array_equal(fast, labels)
    assert set(np.unique(fast)) <= set(plans.output_labels.values())


# --- raw NIfTI: header copy, NaN ------------------------------------------------------------------


def test_label_written_with_input_header_has_identical_geometry(tmp_path):
    a, b = 0.4, -0.3
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    image = sitk.GetImageFromArray(np.zeros((5, 7, 11, 2), np.float32), isVector=True)  # two components
    image.SetSpacing((0.33, 1.7, 4.1))
    image.SetOrigin((-12.25, 7.5, 300.125))
    image.SetDirection(tuple((rz @ rx).ravel()))
    sitk.WriteImage(image, str(tmp_path / "in.nii"))
    src = sitk.ReadImage(str(tmp_path / "in.nii"))
    geometry = Geometry.of(src)
    labels = np.random.default_rng(0).integers(0, 3, geometry.shape_zyx).astype(np.uint8)
    write_labels_like(labels, tmp_path / "in.nii", geometry, tmp_path / "out.nii.gz")
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert out.GetPixelID() == sitk.sitkUInt8 and out.GetNumberOfComponentsPerPixel() == 1
    assert (out.GetSize(), out.GetSpacing(), out.GetOrigin(), out.GetDirection()) == (
        src.GetSize(),
        src.GetSpacing(),
        src.GetOrigin(),
        src.GetDirection(),
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), labels)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_non_nifti_reference_falls_back_to_simpleitk(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    image.SetSpacing((0.5, 0.75, 2.0))
    sitk.WriteImage(image, str(tmp_path / "in.nrrd"))
    geometry = Geometry.of(sitk.ReadImage(str(tmp_path / "in.nrrd")))
    write_labels_like(np.ones((3, 4, 5), np.uint8), tmp_path / "in.nrrd", geometry, tmp_path / "out.nii.gz")
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert Geometry.of(out).mismatch(geometry) is None and sitk.GetArrayFromImage(out).sum() == 60


def test_nan_in_float_nifti_is_found_although_simpleitk_reads_it_as_zero(tmp_path):
    array = np.zeros((4, 6, 8), np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "ok.nii.gz"))
    array[2, 3, 4] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "nan.nii"))
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nan.nii.gz")))).all()  # why it is needed
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 6, 8), np.int16)), str(tmp_path / "int.nii.gz"))
    assert find_nonfinite(tmp_path / "nan.nii.gz") and find_nonfinite(tmp_path / "nan.nii")
    assert not find_nonfinite(tmp_path / "ok.nii.gz") and not find_nonfinite(tmp_path / "int.nii.gz")
    # Big-endian float64 with inf, written by hand.
    raw = bytearray(gzip.decompress((tmp_path / "ok.nii.gz").read_bytes())[:352])
    hdr = bytearray(struct.pack(">i", 348)) + raw[4:40] + struct.pack(">8h", 3, 8, 6, 4, 1, 1, 1, 1) + raw[56:70]
    hdr += struct.pack(">hh", 64, 64) + raw[74:108] + struct.pack(">f", 352.0) + raw[112:352]
    data = np.zeros((4, 6, 8), ">f8")
    data[0, 0, 1] = np.inf
    (tmp_path / "be.nii").write_bytes(bytes(hdr) + data.tobytes())
    assert find_nonfinite(tmp_path / "be.nii")


# --- model folder and device ----------------------------------------------------------------------


def test_choose_folds(tmp_path):
    for fold in ("0", "1", "all"):
        touch(tmp_path / f"fold_{fold}", "checkpoint_final.pth")
    touch(tmp_path / "fold_2", "checkpoint_best.pth")
    folder = ModelFolder(tmp_path)
    assert choose_folds(folder, None, "final") == [0, 1]  # the ensemble of numbered folds, not 'all'
    assert choose_folds(folder, ["all"], "final") == ["all"]
    assert choose_folds(folder, None, "best") == [2]
    with pytest.raises(MonetError, match="fold_2"):
        choose_folds(folder, ["2"], "final")
    with pytest.raises(MonetError, match="no fold has checkpoint_latest"):
        choose_folds(folder, None, "latest")


def test_device_and_threads():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(MonetError, match="--device cuda"):
            resolve_device("cuda")
    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_one_device_module_for_training_and_inference(monkeypatch):
    """training.config re-exports monetpipe.devices; a container's CPU quota (cgroup v2) caps the CPUs."""
    import os

    import monetpipe.devices as devices
    from monetpipe.training import config

    assert config.resolve_device is devices.resolve_device and config.available_cpus is devices.available_cpus
    with pytest.raises(MonetError, match="unknown"):
        resolve_device("tpu")

    class QuotaOfTwo:
        def __init__(self, path: str) -> None:
            assert path == "/sys/fs/cgroup/cpu.max"

        def read_text(self) -> str:
            return "200000 100000\n"

    monkeypatch.setattr(devices, "Path", QuotaOfTwo)
    assert devices.available_cpus() == min(2, len(os.sched_getaffinity(0)))


def test_plans_replace_helper_is_valid():
    """The helper plans above are a valid Plans (guards the restore tests against a silently wrong setup)."""
    plans = plans_for(3, 2)
    assert Plans.from_dict(plans.to_dict()) == plans
    assert dataclasses.replace(plans, num_classes=1).is_binary


def test_fast_labels_ties_go_to_the_first_class():
    plans = plans_for(3, 0)
    props = {"shape_after_crop": [2, 6, 6], "shape_zyx": [2, 6, 6], "crop_box_zyx": [[0, 2], [0, 6], [0, 6]]}
    probs = torch.full((3, 2, 6, 6), 1 / 3)
    probs[1:, 1] = 0.5  # a tie between classes 1 and 2 on the second slice
    probs[0, 1] = 0.0
    fast, _ = restore_to_original_grid(probs, props, plans)
    reference, _ = restore_to_original_grid(probs, props, plans, with_probabilities=True, chunk=1)
    np.testing.assert_array_equal(fast, reference)
    assert (fast[0] == 0).all() and (fast[1] == 3).all()


def test_inference_form_gives_the_eval_models_probabilities():
    """BN folding, in-place activations and channels_last change nothing beyond float rounding."""
    from monetpipe.inference.loading import prepare_for_inference
    from monetpipe.inference.predictor import predict_slices
    from monetpipe.networks import build_network

    torch.manual_seed(0)
    net = build_network("monet", 2, 3)
    for m in net.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    data = np.random.default_rng(1).normal(size=(2, 5, 37, 29)).astype(np.float32)  # odd sizes: padded
    reference = predict_slices([net], data, batch_size=2)
    for channels_last in (False, True):
        fast = prepare_for_inference(net, torch.device("cpu"), channels_last)
        got = predict_slices([fast], data, batch_size=3, channels_last=channels_last)
        assert got.shape == (3, 5, 37, 29)
        torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)
    assert any(getattr(m, "inplace", False) for m in fast.modules())


def test_tta_averages_the_four_mirrored_predictions():
    from monetpipe.inference.predictor import predict_slices

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 5, padding=2).eval()  # not mirror-symmetric
    data = np.random.default_rng(2).normal(size=(1, 3, 16, 32)).astype(np.float32)
    got = predict_slices([net], data, batch_size=2, tta=True)
    x = torch.from_numpy(data).transpose(0, 1)
    with torch.no_grad():
        flips = [(), (3,), (2,), (2, 3)]
        expected = (
            sum(torch.softmax(net(x.flip(d) if d else x), 1).flip(d) if d else torch.softmax(net(x), 1) for d in flips)
            / 4
        )
    torch.testing.assert_close(got, expected.transpose(0, 1), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, predict_slices([net], data, batch_size=2))


def test_tta_flips_only_the_axes_the_model_was_trained_to_flip():
    """A model trained with --mirror-axes 1 is averaged over itself and its left-right flip only: flipping
    the other axis would show it anatomy where training never put it."""
    from monetpipe.inference.predictor import mirror_flips, predict_slices

    assert mirror_flips((0, 1)) == [(), (3,), (2,), (2, 3)]
    assert mirror_flips((1,)) == [(), (3,)] and mirror_flips((0,)) == [(), (2,)]
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 5, padding=2).eval()
    data = np.random.default_rng(3).normal(size=(1, 3, 16, 32)).astype(np.float32)
    got = predict_slices([net], data, batch_size=2, tta=True, mirror_axes=(1,))
    x = torch.from_numpy(data).transpose(0, 1)
    with torch.no_grad():
        expected = (torch.softmax(net(x), 1) + torch.softmax(net(x.flip(3)), 1).flip(3)) / 2
    torch.testing.assert_close(got, expected.transpose(0, 1), atol=1e-6, rtol=1e-5)


def test_tta_axes_come_from_the_checkpoints_training_config():
    from monetpipe.inference.loading import trained_mirror_axes

    assert trained_mirror_axes({"config": {"mirror": False, "mirror_axes": "1"}}) == ()
    assert trained_mirror_axes({"config": {"mirror": True, "mirror_axes": "1"}}) == (1,)
    assert trained_mirror_axes({"config": {"mirror": True}}) == (0, 1)  # runs from before --mirror-axes
    assert trained_mirror_axes({}) == ()


def test_flush_denormals_is_scoped():
    from monetpipe.inference.api import flush_denormals

    tiny = torch.tensor([1e-39], dtype=torch.float32)
    with flush_denormals():
        inside = (tiny * 1.0).item()
    outside = (tiny * 1.0).item()
    if torch.set_flush_denormal(False):  # the CPU supports it (x86 with SSE3)
        assert inside == 0.0
    assert outside > 0.0


def test_default_batch_size_keeps_large_slices_small_on_cpu():
    """On CPU the batch shrinks with the slice size (measured: batch 1 fastest at 256 x 256, 16 at 64 x 64)."""
    from monetpipe.inference.api import default_batch_size

    hippocampus = dataclasses.replace(plans_for(3, 0), patch_size=(64, 48), batch_size=32)
    ct = dataclasses.replace(plans_for(3, 0), patch_size=(512, 512), batch_size=2)
    tiny = dataclasses.replace(plans_for(3, 0), patch_size=(16, 16), batch_size=8)
    assert default_batch_size(hippocampus, torch.device("cpu")) == 21
    assert default_batch_size(ct, torch.device("cpu")) == 1
    assert default_batch_size(tiny, "cpu") == 8  # never more than the plan's
    assert default_batch_size(ct, torch.device("cuda")) == 2  # GPUs keep the plan's batch


def test_default_workers_and_their_batch():
    """Two one-thread workers on a CPU with 2+ threads; each worker gets a cache-sized batch."""
    from monetpipe.inference.api import default_batch_size
    from monetpipe.inference.loading import default_workers

    assert default_workers(torch.device("cpu"), 2) == 2 and default_workers("cpu", 8) == 2
    assert default_workers("cpu", 1) == 1 and default_workers(torch.device("cuda"), 8) == 1
    ct = dataclasses.replace(plans_for(3, 0), patch_size=(512, 512), batch_size=2)
    assert default_batch_size(ct, "cpu", workers=2) == 2  # one 512 x 512 slice per worker


def test_predict_options_are_built_in_field_order():
    """predict_folder / predict_files build PredictOptions positionally from their keywords."""
    from monetpipe.inference.api import PredictOptions

    names = [f.name for f in dataclasses.fields(PredictOptions)]
    assert names[:6] == ["tta", "save_probabilities", "largest_component", "batch_size", "overwrite", "overlap"]


def test_an_unknown_network_is_refused_and_only_model_folders_are_listed(monet_roots):
    from monetpipe.errors import MonetError
    from monetpipe.inference.loading import resolve_model_folder

    task = monet_roots.results / "Task901_SyntheticCT"
    (task / "unet16__monetPlans").mkdir(parents=True)
    (task / "overlays").mkdir()
    with pytest.raises(MonetError, match="unknown network 'monte'.*monet, unet16"):
        resolve_model_folder("901", "monte", paths=monet_roots)
    with pytest.raises(MonetError) as info:
        resolve_model_folder("901", "MoNet", paths=monet_roots)  # case-insensitive, as monet_train
    assert "monet__monetPlans_ctx1: no trained model" in str(info.value) and "overlays" not in str(info.value)
    assert "unet16__monetPlans" in str(info.value) and "pass -p with the plans of one listed" in str(info.value)


def test_fold_flag_reads_as_in_monet_train():
    """-f / --fold / --folds name the same trained folds; 'all' is monet_train -f all's model."""
    from monetpipe.inference.cli import build_parser

    parser = build_parser()
    base = ["-i", "in", "-o", "out", "-t", "4", "-m", "monet"]
    assert parser.parse_args(base + ["-f", "all"]).folds == ["all"]
    assert parser.parse_args(base + ["--fold", "0", "1"]).folds == ["0", "1"]
    assert parser.parse_args(base + ["--folds", "2"]).folds == ["2"]
    assert "monet_train -f all" in " ".join(parser.format_help().split())
