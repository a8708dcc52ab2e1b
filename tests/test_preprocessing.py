"""monet_plan_and_preprocess on the synthetic tasks and (when present) real MSD Task04."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from monetpipe.errors import DatasetError, MonetError
from monetpipe.io.atomic import read_json
from monetpipe.io.image import Geometry, read_label, read_volume
from monetpipe.preprocessing import plan_and_preprocess
from monetpipe.preprocessing.cli import main as cli_main
from monetpipe.preprocessing.planner import choose_slice_axis, in_plane_target_spacing, plan_labels
from monetpipe.preprocessing.plans import DEFAULT_PLANS, Plans
from monetpipe.preprocessing.preprocessor import preprocess_image, restore_to_original_grid
from monetpipe.preprocessing.splits import ensure_splits, holdout_split, kfold_split
from monetpipe.synthetic import make_synthetic_task


@pytest.fixture()
def ct_task(monet_roots):
    make_synthetic_task(monet_roots.raw, kind="ct", num_cases=6, seed=1)
    return monet_roots


# --- planning rules --------------------------------------------------------------------------------


def test_slice_axis_is_largest_spacing_ties_to_z():
    assert choose_slice_axis([2.5, 0.8, 0.8]) == 0
    assert choose_slice_axis([1.0, 1.0, 1.0]) == 0
    assert choose_slice_axis([0.8, 3.0, 0.8]) == 1


def test_in_plane_spacing_rule_matches_paper():
    # 512x512 CT at 0.8 mm -> 256x256 at 1.6 mm; small slices keep their spacing.
    assert in_plane_target_spacing([0.8, 0.8], [512, 512], 256) == pytest.approx((1.6, 1.6))
    assert in_plane_target_spacing([1.0, 1.0], [50, 35], 256) == (1.0, 1.0)


def test_label_variants():
    labels = {0: "bg", 1: "organ", 2: "lesion", 7: "pancreas"}
    mapping, output, names = plan_labels(labels, binary=False, keep=None)
    assert mapping == {0: 0, 1: 1, 2: 2, 7: 3} and output[3] == 7 and len(names) == 4
    mapping, output, names = plan_labels(labels, binary=True, keep=None)
    assert set(mapping.values()) == {0, 1} and output == {0: 0, 1: 1}
    mapping, output, names = plan_labels(labels, binary=False, keep=[7])
    assert mapping == {0: 0, 7: 1} and output == {0: 0, 1: 7} and names == ("bg", "pancreas")
    with pytest.raises(MonetError, match="choose from"):
        plan_labels(labels, binary=False, keep=[5])


def test_nonzero_bbox_is_the_box_of_every_nonzero_voxel():
    """find_objects gives the same box as the voxels' own min/max, per axis, for any channel's nonzero."""
    from monetpipe.preprocessing.fingerprint import nonzero_bbox

    rng = np.random.default_rng(0)
    for trial in range(40):
        image = np.zeros((2, *rng.integers(1, 9, size=3)), dtype=np.float32)
        for _ in range(rng.integers(1, 4)):
            c, *idx = (int(rng.integers(0, n)) for n in image.shape)
            image[(c, *idx)] = rng.choice([-2.5, 1.0, 7.0])
        nonzero = np.nonzero(np.any(image != 0, axis=0))
        expected = tuple((int(a.min()), int(a.max()) + 1) for a in nonzero)
        assert nonzero_bbox(image) == expected, trial
    assert nonzero_bbox(np.zeros((1, 3, 4, 5))) == ((0, 3), (0, 4), (0, 5))  # empty: the whole image


def test_splits_holdout_and_kfold():
    ids = [f"c{i:02d}" for i in range(20)]
    (split,) = holdout_split(ids)
    assert len(split["val"]) == 6 and not set(split["val"]) & set(split["train"])
    assert holdout_split(list(reversed(ids))) == [split]  # from sorted ids: order of input irrelevant
    folds = kfold_split(ids, 5)
    assert sorted(c for f in folds for c in f["val"]) == ids and all(len(f["val"]) == 4 for f in folds)


def test_kfold_matches_scikit_learn_when_available():
    sklearn = pytest.importorskip("sklearn.model_selection")
    ids = [f"c{i:02d}" for i in range(13)]
    ours = kfold_split(ids, 5)
    theirs = [[ids[i] for i in te] for _, te in sklearn.KFold(5, shuffle=True, random_state=12345).split(ids)]
    assert [f["val"] for f in ours] == theirs


def test_existing_split_is_never_changed_silently(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    path = tmp_path / "splits_final.json"
    ensure_splits(path, ids, folds=1)
    with pytest.raises(MonetError, match="--overwrite-splits"):
        ensure_splits(path, ids, folds=5)
    assert len(ensure_splits(path, ids, folds=5, overwrite=True)) == 5


# --- the whole stage on the synthetic CT task -----------------------------------------------------------


def test_plan_and_preprocess_synthetic_ct(ct_task):
    result = plan_and_preprocess("901", num_processes=1)
    task_dir = ct_task.preprocessed / "Task901_SyntheticCT"
    for name in ("dataset.json", "dataset_fingerprint.json", f"{DEFAULT_PLANS}.json", "splits_final.json"):
        assert (task_dir / name).is_file(), name
    plans = Plans.load(task_dir / f"{DEFAULT_PLANS}.json")
    assert plans.version == 1 and plans.slice_axis == 0  # 2.5 mm z spacing is the largest
    assert plans.target_spacing == pytest.approx((0.8, 0.8))
    assert plans.patch_size[0] % 16 == 0 and plans.patch_size[1] % 16 == 0
    assert plans.normalization[0].scheme == "ct" and plans.num_classes == 3
    fingerprint = read_json(task_dir / "dataset_fingerprint.json")
    assert fingerprint["num_cases"] == 6
    stats = fingerprint["foreground_intensity"][0]
    assert stats["percentile_00_5"] < stats["median"] < stats["percentile_99_5"]
    split = json.loads((task_dir / "splits_final.json").read_text())
    assert len(split) == 1 and len(split[0]["val"]) == 2  # round(0.3 * 6)

    case = split[0]["train"][0]
    data = np.load(result.layout.data_file(case), mmap_mode="r")
    seg = np.load(result.layout.seg_file(case))
    props = read_json(result.layout.properties_file(case))
    assert data.dtype == np.float16 and data.shape[1:] == seg.shape and seg.max() == 2
    assert props["class_slices"]["2"], "lesion slices are indexed for foreground sampling"
    # CT normalization: clipped to the foreground percentiles, then z-scored -> bounded values
    lo = (stats["percentile_00_5"] - stats["mean"]) / stats["std"]
    assert float(data.min()) >= lo - 1e-2

    # gt_segmentations: the reference in the plan's output labels, with the raw geometry
    ref, g = read_label(result.layout.gt_file(case))
    raw_label, g_raw = read_label(ct_task.raw / "Task901_SyntheticCT" / "labelsTr" / f"{case}.nii.gz")
    assert np.array_equal(ref, raw_label) and g == g_raw


def test_second_run_skips_and_changed_source_rebuilds_only_that_case(ct_task):
    first = plan_and_preprocess("901", num_processes=1)
    assert first.num_built == 6
    second = plan_and_preprocess("901", num_processes=1)
    assert second.num_built == 0 and second.num_skipped == 6
    # touch one source file's content: exactly that case is rebuilt
    raw = ct_task.raw / "Task901_SyntheticCT"
    label_file = raw / "labelsTr" / "synct_001.nii.gz"
    import SimpleITK as sitk

    img = sitk.ReadImage(str(label_file))
    arr = sitk.GetArrayFromImage(img)
    arr[arr == 2] = 1
    new = sitk.GetImageFromArray(arr)
    new.CopyInformation(img)
    sitk.WriteImage(new, str(label_file))
    third = plan_and_preprocess("901", num_processes=1)
    assert third.num_built == 1 and third.num_skipped == 5


def test_changed_intensities_keep_the_plans_and_rebuild_one_case_unless_replan(ct_task, caplog):
    import SimpleITK as sitk

    from monetpipe.preprocessing.plans import Plans

    first = plan_and_preprocess("901", num_processes=1)
    image_file = ct_task.raw / "Task901_SyntheticCT" / "imagesTr" / "synct_002.nii.gz"
    img = sitk.ReadImage(str(image_file))
    brighter = sitk.GetImageFromArray(sitk.GetArrayFromImage(img) + np.int16(80))  # shifts the CT statistics
    brighter.CopyInformation(img)
    sitk.WriteImage(brighter, str(image_file), True)
    with caplog.at_level("INFO"):
        second = plan_and_preprocess("901", num_processes=1)
    assert second.num_built == 1 and second.num_skipped == 5
    assert second.plans == first.plans == Plans.load(first.layout.plans_file)
    assert "Keeping the existing plans" in caplog.text and "normalization" in caplog.text
    third = plan_and_preprocess("901", num_processes=1, replan=True)
    assert third.plans.normalization != first.plans.normalization
    assert Plans.load(first.layout.plans_file) == third.plans
    assert third.num_built == 6


def test_fingerprint_reads_only_new_or_changed_cases_and_equals_a_full_recompute(ct_task, monkeypatch):
    import SimpleITK as sitk

    from monetpipe.io.dataset import load_task
    from monetpipe.preprocessing import fingerprint as fp

    first = plan_and_preprocess("901", num_processes=1)
    samples_dir = first.task_dir / fp.SAMPLES_FOLDER
    assert sorted(p.stem for p in samples_dir.glob("*.npy")) == sorted(
        first.splits[0]["train"] + first.splits[0]["val"]
    )
    read = []
    original = fp._fingerprint_case
    monkeypatch.setattr(fp, "_fingerprint_case", lambda args: read.append(args[0].case_id) or original(args))

    raw = ct_task.raw / "Task901_SyntheticCT"
    image_file = raw / "imagesTr" / "synct_002.nii.gz"
    img = sitk.ReadImage(str(image_file))
    brighter = sitk.GetImageFromArray(sitk.GetArrayFromImage(img) + np.int16(80))
    brighter.CopyInformation(img)
    sitk.WriteImage(brighter, str(image_file), True)
    (samples_dir / "synct_004.npy").write_bytes(b"not numpy")  # a damaged sample file: that case is read again
    second = plan_and_preprocess("901", num_processes=1)
    assert sorted(read) == ["synct_002", "synct_004"] and second.num_built == 1

    incremental = read_json(first.task_dir / "dataset_fingerprint.json")
    full = fp.compute_fingerprint(load_task(raw), num_processes=1)
    assert incremental["foreground_intensity"] == full["foreground_intensity"]
    assert incremental["cases"] == full["cases"]

    # a removed case: nothing is read, its samples go, the statistics are the remaining cases'
    read.clear()
    for f in (raw / "imagesTr" / "synct_005.nii.gz", raw / "labelsTr" / "synct_005.nii.gz"):
        f.unlink()
    dataset = json.loads((raw / "dataset.json").read_text())
    dataset["training"] = [t for t in dataset["training"] if "synct_005" not in t["label"]]
    dataset["numTraining"] = len(dataset["training"])
    (raw / "dataset.json").write_text(json.dumps(dataset))
    fp.compute_fingerprint(load_task(raw), 1, incremental, samples_dir)
    assert read == [] and not (samples_dir / "synct_005.npy").exists()


def test_a_raw_task_folder_outside_monet_raw_is_read_from_its_path(monet_roots, tmp_path):
    from monetpipe.paths import find_task

    downloaded = make_synthetic_task(tmp_path / "downloads", kind="ct", num_cases=3, num_test=0, shape=(40, 36, 8))
    result = plan_and_preprocess(str(downloaded), num_processes=1)
    assert result.task_dir == monet_roots.preprocessed / "Task901_SyntheticCT"
    assert result.num_built == 3 and not any(monet_roots.raw.iterdir())
    # every later command finds it by name in its own root
    assert find_task(str(downloaded), [monet_roots.preprocessed])[0] == "Task901_SyntheticCT"


def test_plan_variants_never_overwrite_each_other(ct_task):
    default = plan_and_preprocess("901", num_processes=1)
    binary = plan_and_preprocess("901", num_processes=1, binary=True)
    lesion = plan_and_preprocess("901", num_processes=1, labels=[2])
    assert {default.layout.slices, binary.layout.slices, lesion.layout.slices} == {
        default.task_dir / f"{DEFAULT_PLANS}_slices",
        default.task_dir / "monetPlans_binary_ctx1_slices",
        default.task_dir / "monetPlans_labels_2_ctx1_slices",
    }
    assert binary.plans.num_classes == 1 and lesion.plans.output_labels == {0: 0, 1: 2}
    case = default.splits[0]["train"][0]
    ref_bin, _ = read_label(binary.layout.gt_file(case))
    ref_default, _ = read_label(default.layout.gt_file(case))
    assert np.array_equal(ref_bin, (ref_default > 0).astype(np.uint8))
    ref_lesion, _ = read_label(lesion.layout.gt_file(case))
    assert set(np.unique(ref_lesion)) == {0, 2}
    assert np.load(default.layout.seg_file(case)).max() == 2  # default cache untouched


def test_restore_round_trip_is_exact_on_the_original_grid(ct_task):
    result = plan_and_preprocess("901", num_processes=1)
    plans = result.plans
    case = result.splits[0]["val"][0]
    raw = ct_task.raw / "Task901_SyntheticCT"
    image, geometry = read_volume([raw / "imagesTr" / f"{case}.nii.gz"])
    label, _ = read_label(raw / "labelsTr" / f"{case}.nii.gz")
    data, props = preprocess_image(image, geometry, plans)
    # one-hot of the *cached* labels as "perfect probabilities", restored to the original grid
    seg = np.load(result.layout.seg_file(case))
    onehot = np.stack([(seg == k) for k in range(3)]).astype(np.float32)
    labels_back, restored = restore_to_original_grid(onehot, props, plans, with_probabilities=True)
    assert restored.shape == (3, *geometry.shape_zyx)
    assert np.mean(labels_back == label) > 0.99  # identical grid here; only crop/resample borders may differ


def test_mr_task_4d_multichannel(monet_roots):
    make_synthetic_task(monet_roots.raw, kind="mr", num_cases=4, seed=2)
    result = plan_and_preprocess("902", num_processes=1)
    assert result.plans.num_input_channels == 2 * 3  # two channels of slices z-1, z, z+1
    assert all(n.scheme == "zscore" for n in result.plans.normalization)
    data = np.load(result.layout.data_file(result.splits[0]["train"][0]))
    assert data.shape[0] == 2


def test_cli_runs_and_reports_bad_input_without_traceback(ct_task, capsys):
    assert cli_main(["-t", "Task901", "-np", "1"]) == 0
    assert f"{DEFAULT_PLANS}.json" in capsys.readouterr().out
    bad = ct_task.raw / "Task901_SyntheticCT" / "imagesTr" / "synct_002.nii.gz"
    bad.write_bytes(b"not a nifti")
    assert cli_main(["-t", "901", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "synct_002.nii.gz" in err and "Traceback" not in err


@pytest.mark.parametrize("module", ["monetpipe.preprocessing.cli", "monetpipe.preprocessing.api"])
def test_planning_never_imports_torch(module):
    # torch takes seconds to import: `--help` and a rerun with nothing to build must not pay for it.
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_noop_rerun_does_not_import_torch(ct_task):
    import subprocess
    import sys

    assert cli_main(["-t", "901", "-np", "1"]) == 0
    code = "import sys; "
    code += "from monetpipe.preprocessing.cli import main; main(['-t', '901']); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "0 built, 6 up to date" in run.stdout and run.stdout.strip().endswith("False")


def test_unknown_task_cli_lists_tasks(ct_task, capsys):
    assert cli_main(["-t", "Task77"]) == 1
    assert "Task901_SyntheticCT" in capsys.readouterr().err


# --- bad input: each names the file and nothing half-written is left -----------------------------------


def _corrupt(raw, how):
    import SimpleITK as sitk

    folder = raw / "Task901_SyntheticCT"
    label = folder / "labelsTr" / "synct_003.nii.gz"
    img = sitk.ReadImage(str(label))
    if how == "undeclared":
        arr = sitk.GetArrayFromImage(img)
        arr[0, 0, 0] = 9
        new = sitk.GetImageFromArray(arr)
        new.CopyInformation(img)
    elif how == "spacing":
        new = img
        new.SetSpacing((1.0, 1.0, 1.0))
    elif how == "size":
        new = img[:-2, :, :]
    sitk.WriteImage(new, str(label))
    return label


@pytest.mark.parametrize("how, message", [("undeclared", "not declared"), ("spacing", "spacing"), ("size", "size")])
def test_bad_labels_are_reported_by_name(ct_task, how, message):
    _corrupt(ct_task.raw, how)
    # one variant through worker processes: the error must cross the process boundary intact
    with pytest.raises(DatasetError, match=f"synct_003.nii.gz.*{message}"):
        plan_and_preprocess("901", num_processes=2 if how == "size" else 1)
    leftovers = [p for p in ct_task.preprocessed.rglob(".tmp-*")]
    assert not leftovers


def test_wrong_channel_count_is_reported(ct_task):
    folder = ct_task.raw / "Task901_SyntheticCT"
    meta = json.loads((folder / "dataset.json").read_text())
    meta["modality"] = {"0": "CT", "1": "PET"}
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="channel"):
        plan_and_preprocess("901", num_processes=1)


def test_inputs_are_never_modified(ct_task):
    folder = ct_task.raw / "Task901_SyntheticCT"
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}
    plan_and_preprocess("901", num_processes=1)
    after = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}
    assert before == after


# --- real data --------------------------------------------------------------------------------------


def test_real_msd_task04_hippocampus(shared_data, monet_roots):
    src = shared_data / "Task04_Hippocampus"
    if not src.is_dir():
        pytest.skip("Task04_Hippocampus absent")
    os.symlink(src, monet_roots.raw / "Task04_Hippocampus")
    result = plan_and_preprocess("Task04", num_processes=2)
    plans = result.plans
    assert result.num_built == 200
    assert plans.slice_axis == 0 and plans.target_spacing == (1.0, 1.0)
    assert plans.patch_size == (64, 48) and plans.num_classes == 3
    assert len(result.splits[0]["val"]) == 60 and len(result.splits[0]["train"]) == 140
    # float32 label files in the real data (003, 243) were cast, not refused
    seg = np.load(result.layout.seg_file("hippocampus_003"))
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2}
    again = plan_and_preprocess("Task04", num_processes=2)
    assert again.num_skipped == 200 and again.seconds < result.seconds / 3


def test_real_ct_geometry_survives_preprocessing(shared_data, tmp_path):
    ct = shared_data / "ct" / "lung1_image_zcrop.nii.gz"
    if not ct.is_file():
        pytest.skip("real CT absent")
    image, geometry = read_volume([ct])
    plans = _ct_plans_for_lung(geometry)
    data, props = preprocess_image(image, geometry, plans)
    assert data.shape[2] <= 256 and data.shape[3] <= 256  # 512 at 0.57 mm -> <= 256 at the plan's spacing
    probs = np.zeros((1, *data.shape[1:]), np.float32)
    labels, restored = restore_to_original_grid(probs, props, plans, with_probabilities=True)
    assert restored.shape[1:] == labels.shape == geometry.shape_zyx
    assert Geometry.from_dict(props["geometry"]) == geometry


def _ct_plans_for_lung(geometry):
    from monetpipe.preprocessing.plans import ChannelNormalization

    spacing = geometry.spacing_zyx
    return Plans(
        plans_name=DEFAULT_PLANS,
        task="Task99_Lung",
        slice_axis=0,
        transpose_forward=(0, 1, 2),
        transpose_backward=(0, 1, 2),
        target_spacing=in_plane_target_spacing(spacing[1:], [512, 512], 256),
        patch_size=(256, 256),
        median_shape=(11, 256, 256),
        crop_to_nonzero=True,
        normalization=(ChannelNormalization("ct", (-1000.0, 400.0), -300.0, 400.0),),
        channel_names=("CT",),
        dataset_labels={0: "bg", 1: "tumour"},
        label_mapping={0: 0, 1: 1},
        output_labels={0: 0, 1: 1},
        class_names=("bg", "tumour"),
        num_classes=1,
        batch_size=8,
        max_size=256,
    )


def _task04_copy(shared_data, raw, n=6):
    """The first ``n`` real Task04 cases copied into ``raw/Task04_Hippocampus`` (their dataset.json trimmed)."""
    import shutil

    src = shared_data / "Task04_Hippocampus"
    if not src.is_dir():
        pytest.skip("Task04_Hippocampus absent")
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"] = meta["training"][:n]
    meta["numTraining"] = n
    dst = raw / "Task04_Hippocampus"
    for entry in meta["training"]:
        for key in ("image", "label"):
            (dst / entry[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / entry[key], dst / entry[key])
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def test_cut_real_label_stops_preprocessing_naming_it_and_caches_nothing_from_it(shared_data, monet_roots, capsys):
    task_dir = _task04_copy(shared_data, monet_roots.raw)
    label = task_dir / "labelsTr" / "hippocampus_004.nii.gz"
    label.write_bytes(label.read_bytes()[:-300])  # the tail of the voxels and the gzip trailer are gone
    assert cli_main(["-t", "4", "-np", "2"]) == 1
    err = capsys.readouterr().err
    assert "hippocampus_004.nii.gz: truncated NIfTI file" in err and "Re-copy or re-download" in err
    assert "Traceback" not in err
    out = monet_roots.preprocessed / "Task04_Hippocampus"
    assert not (out / "dataset_fingerprint.json").exists() and not (out / f"{DEFAULT_PLANS}.json").exists()
    assert not list(out.rglob("hippocampus_004*")) and not list(out.rglob(".tmp-*"))


def _read_only(folder):
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions do not stop writes")
    folder.chmod(0o555)


def test_unwritable_preprocessed_root_is_refused_before_work(ct_task, capsys, monkeypatch):
    # A path through a regular file cannot be created by anyone, root included.
    blocker = ct_task.preprocessed / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("MONET_preprocessed", str(blocker / "pre"))
    assert cli_main(["-t", "901", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{blocker / 'pre'}" in err and "not writable" in err and "MONET_preprocessed" in err
    assert "Traceback" not in err


def test_read_only_preprocessed_folder_is_refused_naming_it(ct_task, capsys):
    _read_only(ct_task.preprocessed)
    try:
        assert cli_main(["-t", "901", "-np", "1"]) == 1
    finally:
        ct_task.preprocessed.chmod(0o755)
    err = capsys.readouterr().err
    assert "Task901_SyntheticCT: folder is not writable" in err and "Traceback" not in err


# --- worker processes end with their parent ---------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    """Live (non-zombie) processes below ``pid``, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            if state != "Z":
                parents[int(entry)] = int(ppid)
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z":
            alive.add(pid)
    return alive


def test_workers_exit_when_the_parent_is_killed():
    import signal
    import subprocess
    import sys
    import time

    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc to list processes")
    script = "import time\nfrom monetpipe.parallel import map_cases\nmap_cases(time.sleep, [120] * 4, 2)\n"
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 90
        while len(_descendants(proc.pid)) < 3 and time.monotonic() < deadline:  # forkserver + 2 workers
            time.sleep(0.5)
        workers = _descendants(proc.pid)
        assert len(workers) >= 3, "the workers never started"
        os.kill(proc.pid, signal.SIGKILL)  # not reaped yet: the parent stays a zombie meanwhile
        deadline = time.monotonic() + 15
        while (alive := _alive(workers)) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    assert not alive, f"orphaned worker processes still running: {sorted(alive)}"


# --- absurd voxel spacings in training data -----------------------------------------------------------


def _respace(folder, case, spacing_xyz):
    import SimpleITK as sitk

    for sub in ("imagesTr", "labelsTr"):
        path = folder / sub / f"{case}.nii.gz"
        image = sitk.ReadImage(str(path))
        image.SetSpacing(spacing_xyz)
        sitk.WriteImage(image, str(path), True)


@pytest.mark.parametrize(
    "spacing_xyz, message",
    [((0.01, 0.01, 2.5), "below 0.05 mm"), ((15.0, 15.0, 2.5), "more than 10x in-plane")],
)
def test_absurd_spacing_in_training_data_is_refused_naming_the_case(ct_task, capsys, spacing_xyz, message):
    _respace(ct_task.raw / "Task901_SyntheticCT", "synct_002", spacing_xyz)
    assert cli_main(["-t", "901", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "imagesTr/synct_002.nii.gz: voxel spacing" in err and message in err and "pixdim" in err
    assert not (ct_task.preprocessed / "Task901_SyntheticCT" / f"{DEFAULT_PLANS}.json").exists()


def test_slice_axis_spacing_outlier_only_warns(ct_task, caplog):
    import SimpleITK as sitk

    folder = ct_task.raw / "Task901_SyntheticCT"
    x, y, z = sitk.ReadImage(str(folder / "imagesTr" / "synct_002.nii.gz")).GetSpacing()
    _respace(folder, "synct_002", (x, y, z * 20))
    with caplog.at_level("WARNING"):
        result = plan_and_preprocess("901", num_processes=1)
    assert result.plans.slice_axis == 0
    assert "synct_002.nii.gz: spacing along the slice axis" in caplog.text
