"""dataset.json dialects, pixel types, geometry and bad input."""

import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk

from monetpipe.errors import DatasetError
from monetpipe.io.dataset import load_task
from monetpipe.io.image import Geometry, read_label, read_volume, write_label

DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _write(path, array, spacing=(0.8, 0.7, 2.5), origin=(10.0, -5.0, 3.0), direction=DIRECTION, vector=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array, isVector=vector)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


def _msd(folder, n=2, modality=None, per_channel=False, dtype=np.int16):
    modality = modality or {"0": "CT"}
    training = []
    for i in range(n):
        cid = f"case_{i:03d}"
        arr = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 7).astype(dtype)
        if per_channel:
            for c in range(len(modality)):
                _write(folder / "imagesTr" / f"{cid}_{c:04d}.nii.gz", arr)
        else:
            _write(folder / "imagesTr" / f"{cid}.nii.gz", arr)
        _write(folder / "labelsTr" / f"{cid}.nii.gz", (arr % 3).astype(np.uint8))
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta = {
        "name": "T",
        "modality": modality,
        "labels": {"0": "bg", "1": "a", "2": "b"},
        "numTraining": n,
        "training": training,
        "test": [],
    }
    (folder / "dataset.json").write_text(json.dumps(meta))
    return meta


def test_msd_layout(tmp_path):
    _msd(tmp_path)
    (tmp_path / "imagesTr" / "._case_000.nii.gz").write_bytes(b"junk")  # macOS metadata: ignored
    task = load_task(tmp_path)
    assert task.dialect == "msd" and task.channel_names == ("CT",) and task.is_ct
    assert [c.case_id for c in task.training] == ["case_000", "case_001"]
    assert task.labels == {0: "bg", 1: "a", 2: "b"}


def test_nnunet_v1_per_channel_files(tmp_path):
    _msd(tmp_path, modality={"0": "T1", "1": "T2"}, per_channel=True)
    task = load_task(tmp_path)
    assert task.dialect == "nnunet_v1"
    image, _ = read_volume(task.training[0].image_files)
    assert image.shape == (2, 4, 5, 6)


def test_nnunet_v2_layout(tmp_path):
    arr = np.zeros((4, 5, 6), np.uint8)
    for cid in ("a1", "a2"):
        _write(tmp_path / "imagesTr" / f"{cid}_0000.nii.gz", arr.astype(np.float32))
        _write(tmp_path / "labelsTr" / f"{cid}.nii.gz", arr)
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "thing": 1},
                "numTraining": 2,
                "file_ending": ".nii.gz",
            }
        )
    )
    task = load_task(tmp_path)
    assert task.dialect == "nnunet_v2" and [c.case_id for c in task.training] == ["a1", "a2"]
    assert task.labels == {0: "background", 1: "thing"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"labels": {"background": 0, "a": [1, 2]}}, "region"),
        ({"labels": {"background": 0, "a": 1, "ignore": 2}}, "ignore"),
        ({"file_ending": ".png"}, "file_ending"),
    ],
)
def test_unsupported_nnunet_v2_features_are_refused(tmp_path, change, message):
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}
    meta.update(change)
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=message):
        load_task(tmp_path)


def test_missing_dataset_json_names_file(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json"):
        load_task(tmp_path)


def test_path_leaving_task_folder_is_refused(tmp_path):
    meta = _msd(tmp_path / "task")
    meta["training"][0]["image"] = "../../etc/passwd"
    (tmp_path / "task" / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="leaves the task folder"):
        load_task(tmp_path / "task")


def test_missing_image_names_file(tmp_path):
    _msd(tmp_path)
    (tmp_path / "imagesTr" / "case_001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case_001"):
        load_task(tmp_path)


def test_corrupt_nifti_names_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    _write(path, np.zeros((4, 5, 6), np.int16))
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 3]))  # truncated
    with pytest.raises(DatasetError, match="broken.nii.gz"):
        read_volume([path])


def test_nan_intensities_name_file(tmp_path):
    # ITK's NIfTI reader already turns NaN into 0, so the check matters for the other formats ITK reads.
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    _write(tmp_path / "nan.nrrd", arr)
    with pytest.raises(DatasetError, match="nan.nrrd.*NaN"):
        read_volume([tmp_path / "nan.nrrd"])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_any_pixel_type_reads_as_float32_with_geometry(tmp_path, dtype):
    arr = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 50).astype(dtype)
    _write(tmp_path / "x.nii.gz", arr)
    image, g = read_volume([tmp_path / "x.nii.gz"])
    assert image.dtype == np.float32 and np.array_equal(image[0], arr.astype(np.float32))
    assert g.size == (6, 5, 4) and np.allclose(g.spacing, (0.8, 0.7, 2.5)) and np.allclose(g.direction, DIRECTION)


def test_float_label_maps_are_cast(tmp_path):
    _write(tmp_path / "l.nii.gz", np.array([[[0, 1], [2, 0]]], np.float32))
    label, _ = read_label(tmp_path / "l.nii.gz")
    assert label.dtype == np.uint8 and label.max() == 2


def test_non_integer_label_map_is_refused(tmp_path):
    _write(tmp_path / "l.nii.gz", np.array([[[0, 0.5]]], np.float32))
    with pytest.raises(DatasetError, match="l.nii.gz"):
        read_label(tmp_path / "l.nii.gz")


def test_4d_channels_last_reads_as_channels_first_with_3d_geometry(tmp_path):
    vols = [sitk.GetImageFromArray(np.full((3, 4, 5), c, np.float32)) for c in range(2)]
    for v in vols:
        v.SetSpacing((1.0, 2.0, 3.0))
        v.SetOrigin((4.0, 5.0, 6.0))
    img4 = sitk.JoinSeries(vols)
    sitk.WriteImage(img4, str(tmp_path / "mr.nii.gz"))
    image, g = read_volume([tmp_path / "mr.nii.gz"])
    assert image.shape == (2, 3, 4, 5) and image[1].min() == 1
    assert g.spacing == (1.0, 2.0, 3.0) and g.origin == (4.0, 5.0, 6.0) and len(g.direction) == 9


def test_write_label_round_trips_geometry_exactly(tmp_path):
    # NIfTI stores spacing/origin as float32: use values it represents exactly, as read images have.
    g = Geometry((6, 5, 4), (0.75, 0.5, 2.5), (10.0, -5.25, 3.0), DIRECTION)
    arr = np.random.default_rng(0).integers(0, 3, (4, 5, 6)).astype(np.uint8)
    write_label(arr, g, tmp_path / "out.nii.gz")
    back, g2 = read_label(tmp_path / "out.nii.gz")
    assert np.array_equal(back, arr) and g2 == g
    assert not list(tmp_path.glob(".tmp-*"))


def test_nan_in_nifti_is_found_although_itk_reads_it_as_zero(tmp_path):
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = 7.25
    path = tmp_path / "nan.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    raw = bytearray(path.read_bytes())
    at = raw.find(np.float32(7.25).tobytes())
    raw[at : at + 4] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(raw))
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()  # ITK hides it...
    with pytest.raises(DatasetError, match="nan.nii.*NaN"):  # ...monetpipe does not
        read_volume([path])


# --- truncated and corrupt files: SimpleITK reads a cut integer file as zeros; monetpipe refuses it ------


def _real(shared_data, rel):
    path = shared_data / rel
    if not path.is_file():
        pytest.skip(f"{rel} absent")
    return path


def _cut_copy(src, dst, keep=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def _float32_ct(shared_data, tmp_path, name="ct_f32.nii.gz"):
    image = sitk.ReadImage(str(_real(shared_data, "ct/lung1_image_zcrop.nii.gz")))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(tmp_path / name), True)
    return tmp_path / name


def test_cut_uint8_label_is_refused_naming_the_file(shared_data, tmp_path):
    src = _real(shared_data, "Task04_Hippocampus/labelsTr/hippocampus_001.nii.gz")
    cut = _cut_copy(src, tmp_path / "hippocampus_001.nii.gz")
    assert sitk.ReadImage(str(cut)).GetPixelID() == sitk.sitkUInt8  # ITK alone: no error, zeros
    with pytest.raises(DatasetError, match=r"hippocampus_001.nii.gz: truncated .*expected \d+ bytes.*found \d+"):
        read_label(cut)


def test_cut_int16_ct_is_refused_although_simpleitk_reads_it(shared_data, tmp_path):
    cut = _cut_copy(_real(shared_data, "ct/lung1_image_zcrop.nii.gz"), tmp_path / "lung.nii.gz", keep=0.1)
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(cut)))
    assert itk.shape == (11, 512, 512) and (itk == 0).mean() > 0.5  # the silent failure this guards against
    with pytest.raises(DatasetError, match=r"lung.nii.gz: truncated NIfTI file.*Re-copy or re-download"):
        read_volume([cut])


def test_cut_float32_image_is_refused_not_an_eoferror(shared_data, tmp_path):
    cut = _cut_copy(_float32_ct(shared_data, tmp_path), tmp_path / "cut_f32.nii.gz")
    with pytest.raises(DatasetError, match=r"cut_f32.nii.gz: truncated NIfTI file \(expected \d+ bytes"):
        read_volume([cut])


def test_cut_uncompressed_nii_is_refused(shared_data, tmp_path):
    src = _real(shared_data, "Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz")
    whole = tmp_path / "whole.nii"
    sitk.WriteImage(sitk.Cast(sitk.ReadImage(str(src)), sitk.sitkInt16), str(whole))
    size = whole.stat().st_size
    cut = _cut_copy(whole, tmp_path / "h001.nii", keep=0.9)
    with pytest.raises(DatasetError, match=rf"h001.nii: truncated NIfTI file \(expected {size} bytes, found"):
        read_volume([cut])
    assert read_volume([whole])[0].shape == (1, 35, 51, 35)


def test_corrupted_byte_in_gzip_stream_fails_the_crc(shared_data, tmp_path):
    data = bytearray(_real(shared_data, "ct/lung1_image_zcrop.nii.gz").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle of the compressed voxels
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"flipped.nii.gz: corrupt NIfTI file.*Re-copy or re-download"):
        read_volume([path])


def test_gzip_cut_in_its_trailer_and_recompressed_short_file_are_refused(shared_data, tmp_path):
    src = _real(shared_data, "ct/example_ct_sm.nii.gz")
    no_trailer = tmp_path / "no_trailer.nii.gz"
    no_trailer.write_bytes(src.read_bytes()[:-4])  # every voxel there, CRC/length missing
    with pytest.raises(DatasetError, match="no_trailer.nii.gz: truncated.*end marker"):
        read_volume([no_trailer])
    short = tmp_path / "short.nii.gz"  # cut, then re-compressed: a valid gzip of too few bytes
    short.write_bytes(gzip.compress(gzip.decompress(src.read_bytes())[:-100]))
    with pytest.raises(DatasetError, match="short.nii.gz: truncated.*after decompression"):
        read_volume([short])


def test_intact_files_in_unusual_but_valid_shapes_read_as_before(shared_data, tmp_path):
    src = _real(shared_data, "ct/example_ct_sm.nii.gz")
    expected, _ = read_volume([src])
    plain = gzip.decompress(src.read_bytes())
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]) + bytes(8))
    (tmp_path / "not_compressed.nii.gz").write_bytes(plain)  # zlib reads this transparently, as ITK does
    for name in ("multi.nii.gz", "not_compressed.nii.gz"):
        assert np.array_equal(read_volume([tmp_path / name])[0], expected)


def test_every_real_task04_file_and_ct_passes_the_check(shared_data):
    from monetpipe.io.verify import verify_nifti

    files = sorted((shared_data / "Task04_Hippocampus").glob("*Tr/*.nii.gz")) + sorted(
        (shared_data / "ct").glob("*.nii.gz")
    )
    if not files:
        pytest.skip("real data absent")
    assert not any(verify_nifti(f) for f in files)  # none refused, none holds NaN


def test_nan_in_a_float_label_map_is_refused(tmp_path):
    arr = np.zeros((4, 5, 6), np.float32)
    arr[0, 0, 0] = 1.0
    path = tmp_path / "lab.nii"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    raw = bytearray(path.read_bytes())
    at = raw.find(np.float32(1.0).tobytes(), 352)
    raw[at : at + 4] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="lab.nii: label map holds NaN"):
        read_label(path)


def _nifti2(array, spacing=(0.5, 0.75, 2.0)):
    """A minimal little-endian NIfTI-2 file (int16, sform only) as bytes."""
    import struct

    header = bytearray(540)
    struct.pack_into("<i8s2h", header, 0, 540, b"n+2\x00\r\n\x1a\n", 4, 16)
    z, y, x = array.shape
    struct.pack_into("<8q", header, 16, 3, x, y, z, 1, 1, 1, 1)
    struct.pack_into("<8d", header, 104, 1.0, *spacing, 1, 1, 1, 1)
    struct.pack_into("<q2d", header, 168, 544, 1.0, 0.0)
    struct.pack_into("<2i", header, 344, 0, 1)
    for row, s in enumerate(spacing):
        struct.pack_into("<4d", header, 400 + 32 * row, *[s if c == row else 0.0 for c in range(3)], 0.0)
    return bytes(header) + bytes(4) + array.astype("<i2").tobytes()


def test_nifti2_is_checked_and_named_as_unsupported(tmp_path):
    data = _nifti2(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    (tmp_path / "n2.nii").write_bytes(data[:-20])
    with pytest.raises(DatasetError, match=r"n2.nii: truncated NIfTI file \(expected 784 bytes, found 764\)"):
        read_volume([tmp_path / "n2.nii"])
    (tmp_path / "n2.nii.gz").write_bytes(gzip.compress(data))  # complete
    try:
        image, _ = read_volume([tmp_path / "n2.nii.gz"])
    except DatasetError as exc:  # SimpleITK 2.5 (ITK 5.4) vendors only the NIfTI-1 library
        assert "n2.nii.gz: is a NIfTI-2 file" in str(exc) and "NIfTI-1" in str(exc)
    else:
        assert np.array_equal(image[0], np.arange(120).reshape(4, 5, 6))


# --- symbolic links: users link raw data into a task folder -------------------------------------------


def test_symlinked_image_and_label_files_are_accepted(tmp_path):
    _msd(tmp_path / "elsewhere")
    task_dir = tmp_path / "task"
    _msd(task_dir)
    for sub in ("imagesTr", "labelsTr"):
        target = tmp_path / "elsewhere" / sub / "case_001.nii.gz"
        (task_dir / sub / "case_001.nii.gz").unlink()
        (task_dir / sub / "case_001.nii.gz").symlink_to(target)
    task = load_task(task_dir)
    case = task.case("case_001")
    assert case.image_files[0] == task_dir / "imagesTr" / "case_001.nii.gz"  # the link, named as listed
    assert read_volume(case.image_files)[0].shape == (1, 4, 5, 6) and read_label(case.label_file)[0].max() == 2


def test_symlinked_images_folder_is_accepted_but_dotdot_still_refused(tmp_path):
    _msd(tmp_path / "data")
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    for name in ("imagesTr", "labelsTr", "dataset.json"):
        (task_dir / name).symlink_to(tmp_path / "data" / name)
    assert [c.case_id for c in load_task(task_dir).training] == ["case_000", "case_001"]
    meta = json.loads((tmp_path / "data" / "dataset.json").read_text())
    meta["training"][0]["image"] = "./imagesTr/../../data/imagesTr/case_000.nii.gz"
    (task_dir / "dataset.json").unlink()
    (task_dir / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="leaves the task folder"):
        load_task(task_dir)


def test_dangling_symlink_is_named_as_such(tmp_path):
    _msd(tmp_path)
    link = tmp_path / "labelsTr" / "case_001.nii.gz"
    link.unlink()
    link.symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(DatasetError, match=r"case_001.nii.gz: label .*symbolic link to .*gone.nii.gz.*does not exist"):
        load_task(tmp_path)


# --- the voxels come from the checking pass: they must equal SimpleITK's, geometry included ------------


def _itk_reference(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), Geometry.of(image)


def _without_itk_voxel_reads(monkeypatch):
    """Make SimpleITK's full read fail, so a passing read proves the single-pass path was taken."""

    def refuse(*args, **kwargs):
        raise AssertionError("sitk.ReadImage was called: the voxels were decompressed twice")

    monkeypatch.setattr(sitk, "ReadImage", refuse)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64, np.float32, np.float64]
)
@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_single_pass_read_equals_simpleitk_for_every_pixel_type(tmp_path, monkeypatch, dtype, ending):
    arr = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 7 % 113 - (30 if np.dtype(dtype).kind != "u" else 0)).astype(dtype)
    path = tmp_path / f"x{ending}"
    _write(path, arr)
    expected, geometry = _itk_reference(path)
    _without_itk_voxel_reads(monkeypatch)
    image, g = read_volume([path])
    assert np.array_equal(image[0], expected.astype(np.float32)) and g == geometry


def test_single_pass_read_equals_simpleitk_for_4d_and_labels(tmp_path, monkeypatch):
    vols = [sitk.GetImageFromArray(np.full((3, 4, 5), c, np.int16)) for c in range(2)]
    sitk.WriteImage(sitk.JoinSeries(vols), str(tmp_path / "mr.nii.gz"))
    _write(tmp_path / "lab.nii.gz", (np.arange(120).reshape(4, 5, 6) % 3).astype(np.uint8))
    expected_4d, g4 = _itk_reference(tmp_path / "mr.nii.gz")
    expected_lab, gl = _itk_reference(tmp_path / "lab.nii.gz")
    _without_itk_voxel_reads(monkeypatch)
    image, g = read_volume([tmp_path / "mr.nii.gz"])
    assert np.array_equal(image, expected_4d) and g == g4
    label, g = read_label(tmp_path / "lab.nii.gz")
    assert np.array_equal(label, expected_lab) and g == gl


def _nifti1(array, endian=">", slope=1.0, inter=0.0, vox_offset=352.0):
    """A minimal NIfTI-1 file (int16, sform only) in the given byte order, as bytes."""
    import struct

    header = bytearray(348)
    z, y, x = array.shape
    struct.pack_into(endian + "i", header, 0, 348)
    struct.pack_into(endian + "8h", header, 40, 3, x, y, z, 1, 1, 1, 1)
    struct.pack_into(endian + "2h", header, 70, 4, 16)
    struct.pack_into(endian + "8f", header, 76, 1.0, 0.5, 0.75, 2.0, 1, 1, 1, 1)
    struct.pack_into(endian + "3f", header, 108, vox_offset, slope, inter)
    struct.pack_into(endian + "2h", header, 252, 0, 1)
    for row, s in enumerate((0.5, 0.75, 2.0)):
        struct.pack_into(endian + "4f", header, 280 + 16 * row, *[s if c == row else 0.0 for c in range(3)], 0.0)
    header[344:348] = b"n+1\x00"
    padding = bytes(max(int(vox_offset), 348) - 348)  # the NIfTI library reads data at >= 348
    return bytes(header) + padding + array.astype(endian + "i2").tobytes()


@pytest.mark.parametrize(
    "endian, slope, inter, vox_offset",
    [(">", 1.0, 0.0, 352.0), ("<", 1.0, 0.0, 352.0), (">", 2.0, -5.0, 352.0), ("<", 0.5, 0.0, 352.0),
     ("<", 1.0, 0.0, 0.0), ("<", 0.0, 0.0, 400.0)],
)  # fmt: skip
def test_byte_order_scaling_and_offsets_read_as_simpleitk_does(tmp_path, endian, slope, inter, vox_offset):
    arr = (np.arange(120).reshape(4, 5, 6) - 60).astype(np.int16)
    path = tmp_path / "h.nii.gz"
    path.write_bytes(gzip.compress(_nifti1(arr, endian, slope, inter, vox_offset)))
    expected, geometry = _itk_reference(path)
    assert np.allclose(expected, arr * (slope or 1.0) + inter)  # scaled files go through SimpleITK's own read
    image, g = read_volume([path])
    assert np.array_equal(image[0], expected.astype(np.float32)) and g == geometry


def test_single_pass_read_equals_simpleitk_on_real_files(shared_data, monkeypatch):
    images = sorted((shared_data / "Task04_Hippocampus" / "imagesTr").glob("*.nii.gz"))[:40]
    labels = sorted((shared_data / "Task04_Hippocampus" / "labelsTr").glob("*.nii.gz"))[:40]
    cts = sorted((shared_data / "ct").glob("*.nii.gz"))
    if not images or not cts:
        pytest.skip("real data absent")
    expected = {f: _itk_reference(f) for f in images + labels + cts}
    _without_itk_voxel_reads(monkeypatch)
    for f in images + cts:
        image, g = read_volume([f])
        assert np.array_equal(image[0], expected[f][0].astype(np.float32)) and g == expected[f][1], f
    for f in labels:
        label, g = read_label(f)
        assert np.array_equal(label, expected[f][0]) and g == expected[f][1], f


def test_header_promising_more_than_gzip_can_hold_is_refused_without_allocating_it(tmp_path):
    data = bytearray(_nifti1(np.zeros((4, 5, 6), np.int16), "<"))
    import struct

    struct.pack_into("<8h", data, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # 54 TB of int16
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DatasetError, match=r"huge.nii.gz: truncated NIfTI file \(expected 54000000000352 bytes"):
        read_volume([tmp_path / "huge.nii.gz"])


def test_a_non_utf8_file_name_is_refused_by_name_not_a_process_abort(tmp_path):
    import subprocess
    import sys

    # SimpleITK aborts the interpreter on such a path, so the check runs in a child process.
    code = (
        "import os, sys, numpy as np\n"
        "from monetpipe.errors import DatasetError\n"
        "from monetpipe.io.image import Geometry, read_label, write_label\n"
        "good = os.path.join(sys.argv[1], 'good.nii.gz')\n"
        "geometry = Geometry((4, 3, 2), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))\n"
        "write_label(np.zeros((2, 3, 4), np.uint8), geometry, good)\n"
        "odd = os.fsencode(sys.argv[1]) + b'/odd\\xffname.nii.gz'\n"
        "os.rename(good, odd)\n"
        "try:\n"
        "    read_label(os.fsdecode(odd))\n"
        "except DatasetError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused:" in out.stdout and "odd\\xffname.nii.gz" in out.stdout and "not valid UTF-8" in out.stdout
