"""The synthetic tasks: valid MSD folders that load, read back exactly, and are reproducible."""

from __future__ import annotations

import filecmp
import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from monetpipe.errors import DatasetError
from monetpipe.io.dataset import load_task
from monetpipe.io.image import Geometry, read_label, read_volume
from monetpipe.synthetic import make_case, make_synthetic_task
from monetpipe.synthetic_cli import main

CT_SHAPE = (40, 36, 10)
MR_SHAPE = (36, 40, 16)


@pytest.fixture(scope="module")
def ct_task(tmp_path_factory) -> Path:
    return make_synthetic_task(tmp_path_factory.mktemp("raw"), "ct", num_cases=3, num_test=1, shape=CT_SHAPE)


@pytest.fixture(scope="module")
def mr_task(tmp_path_factory) -> Path:
    return make_synthetic_task(tmp_path_factory.mktemp("raw"), "mr", num_cases=3, num_test=1, shape=MR_SHAPE)


def _lesion_enclosed(label: np.ndarray) -> bool:
    """Every face neighbour of a lesion voxel is organ or lesion: the lesion touches neither background
    nor the image border."""
    padded = np.pad(label, 1)
    grown = ndimage.binary_dilation(padded == 2)
    return bool(np.all(padded[grown] > 0))


def test_ct_task_is_a_valid_msd_folder(ct_task):
    assert ct_task.name == "Task901_SyntheticCT"
    data = json.loads((ct_task / "dataset.json").read_text())
    assert data["modality"] == {"0": "CT"} and data["tensorImageSize"] == "3D"
    assert data["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert (data["numTraining"], data["numTest"]) == (3, 1)
    first = {"image": "./imagesTr/synct_001.nii.gz", "label": "./labelsTr/synct_001.nii.gz"}
    assert data["training"][0] == first
    assert data["test"] == ["./imagesTs/synct_004.nii.gz"]

    task = load_task(ct_task)
    assert task.dialect == "msd" and task.is_ct
    assert task.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert [c.case_id for c in task.training] == ["synct_001", "synct_002", "synct_003"]
    assert [c.case_id for c in task.test] == ["synct_004"]


def test_ct_cases_read_back_with_their_geometry_and_labels(ct_task):
    sizes = set()
    for number, case in enumerate(load_task(ct_task).training, start=1):
        expected_image, expected_label, geometry = make_case("ct", number, seed=0, shape=CT_SHAPE)
        assert sitk.ReadImage(str(case.image_files[0])).GetPixelID() == sitk.sitkInt16
        image, image_geometry = read_volume(case.image_files)
        label, label_geometry = read_label(case.label_file)
        assert image.shape == (1, *geometry.shape_zyx)
        np.testing.assert_array_equal(image[0], expected_image)
        np.testing.assert_array_equal(label, expected_label)
        assert geometry.mismatch(image_geometry) is None and geometry.mismatch(label_geometry) is None
        assert np.allclose(image_geometry.spacing, (0.8, 0.8, 2.5))
        assert np.allclose(np.reshape(image_geometry.direction, (3, 3)), np.diag([-1, -1, 1]))
        assert np.abs(image_geometry.origin).max() > 1.0
        sizes.add(image_geometry.size)

        assert set(np.unique(label)) == {0, 1, 2}
        assert _lesion_enclosed(label)
        hu = image[0]
        assert hu[0, 0, 0] == pytest.approx(-1000, abs=60)  # a corner is air
        tissue = np.median(hu[(label == 0) & (hu > -50) & (hu < 150)])
        assert np.median(hu[label == 1]) - tissue > 40  # the organ is visibly enhanced
        assert np.median(hu[label == 1]) - np.median(hu[label == 2]) > 30  # the lesion is hypodense
        assert (label > 0).any(axis=(1, 2)).sum() < label.shape[0]  # some slices hold no foreground
    assert len(sizes) > 1, "cases should not all share one size"


def test_mr_task_is_4d_channels_last_and_reads_back(mr_task):
    data = json.loads((mr_task / "dataset.json").read_text())
    assert mr_task.name == "Task902_SyntheticMR"
    assert data["modality"] == {"0": "T1", "1": "T2"} and data["tensorImageSize"] == "4D"
    task = load_task(mr_task)
    assert task.num_channels == 2 and task.channel_names == ("T1", "T2")

    for number, case in enumerate(task.training, start=1):
        expected_image, expected_label, geometry = make_case("mr", number, seed=0, shape=MR_SHAPE)
        raw = sitk.ReadImage(str(case.image_files[0]))
        assert raw.GetDimension() == 4 and raw.GetSize() == (*geometry.size, 2)  # (x, y, z, c) on disk
        assert raw.GetPixelID() == sitk.sitkFloat32

        image, image_geometry = read_volume(case.image_files)
        label, label_geometry = read_label(case.label_file)
        assert image.shape == (2, *geometry.shape_zyx) and image.dtype == np.float32
        np.testing.assert_array_equal(image, expected_image)  # channel order and values kept exactly
        assert geometry.mismatch(image_geometry) is None and geometry.mismatch(label_geometry) is None
        assert np.allclose(image_geometry.spacing, (1.0, 1.0, 1.2))
        assert not np.allclose(np.reshape(image_geometry.direction, (3, 3)), np.eye(3))
        assert set(np.unique(label)) == {0, 1, 2} and _lesion_enclosed(label)

        head = image[0] != 0
        assert np.array_equal(head, image[1] != 0)
        assert image[:, 0, 0, 0].tolist() == [0.0, 0.0]  # zero outside the head ...
        box = ndimage.find_objects(head.astype(np.uint8))[0]
        cropped = np.prod([s.stop - s.start for s in box])
        assert cropped <= 0.75 * head.size  # ... so cropping to nonzero removes a quarter or more
        # T1 (channel 0) shows the organ darker than the rest of the brain, T2 (channel 1) brighter.
        brain = head & (label == 0)
        t1_ratio = image[0][label == 1].mean() / image[0][brain].mean()
        t2_ratio = image[1][label == 1].mean() / image[1][brain].mean()
        assert t1_ratio < 0.9 and t2_ratio > 1.2


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, ct_task):
    again = make_synthetic_task(tmp_path, "ct", num_cases=3, num_test=1, shape=CT_SHAPE)
    for f in sorted(p for p in ct_task.rglob("*") if p.is_file()):
        assert filecmp.cmp(f, again / f.relative_to(ct_task), shallow=False), f.name

    for kind, shape in (("ct", CT_SHAPE), ("mr", MR_SHAPE)):
        a, la, ga = make_case(kind, 2, seed=0, shape=shape)
        b, lb, gb = make_case(kind, 2, seed=1, shape=shape)
        assert ga != gb or not np.array_equal(la, lb)
        if a.shape == b.shape:
            assert not np.array_equal(a, b)


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    kwargs = dict(num_cases=2, num_test=0, shape=CT_SHAPE)
    folder = make_synthetic_task(tmp_path, "ct", seed=0, **kwargs)
    image = folder / "imagesTr" / "synct_001.nii.gz"
    before = image.stat().st_mtime_ns

    assert make_synthetic_task(tmp_path, "ct", seed=0, **kwargs) == folder  # same arguments: no-op
    assert image.stat().st_mtime_ns == before
    with pytest.raises(DatasetError, match="overwrite"):
        make_synthetic_task(tmp_path, "ct", seed=1, **kwargs)
    assert image.stat().st_mtime_ns == before

    make_synthetic_task(tmp_path, "ct", seed=1, overwrite=True, **kwargs)
    assert json.loads((folder / "dataset.json").read_text())["synthetic"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temp or old folders left

    (folder / "labelsTr" / "synct_002.nii.gz").unlink()  # damaged: not "the same task" any more
    with pytest.raises(DatasetError):
        make_synthetic_task(tmp_path, "ct", seed=1, **kwargs)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        make_synthetic_task(tmp_path, "pet")
    with pytest.raises(ValueError, match="shape"):
        make_synthetic_task(tmp_path, "ct", shape=(16, 16, 4))
    assert not any(tmp_path.iterdir())


def test_cli_writes_into_output_and_refuses_to_clobber(tmp_path, capsys):
    args = ["-o", str(tmp_path), "--kind", "mr", "--cases", "2", "--test", "0", "--shape", *map(str, MR_SHAPE)]
    assert main(args) == 0
    folder = tmp_path / "Task902_SyntheticMR"
    assert capsys.readouterr().out.strip() == str(folder)
    assert len(load_task(folder).training) == 2

    assert main([*args, "--seed", "3"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--seed", "3", "--overwrite"]) == 0
    assert json.loads((folder / "dataset.json").read_text())["synthetic"]["seed"] == 3


def test_cli_defaults_to_monet_raw(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MONET_raw", str(tmp_path / "raw"))
    assert main(["--cases", "1", "--test", "0", "--shape", *map(str, CT_SHAPE)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "raw" / "Task901_SyntheticCT")


def test_default_ct_task_is_fast_and_loads(tmp_path):
    start = time.perf_counter()
    folder = make_synthetic_task(tmp_path)
    elapsed = time.perf_counter() - start
    task = load_task(folder)
    assert (len(task.training), len(task.test)) == (12, 2)
    sizes = [Geometry.of(sitk.ReadImage(str(c.image_files[0]))).size for c in task.training]
    assert all(90 <= x <= 102 and 75 <= y <= 85 and 20 <= z <= 28 for x, y, z in sizes)
    assert elapsed < 10.0  # typically ~2 s; generous for a busy CI machine
