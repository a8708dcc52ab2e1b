"""scripts/label_layout.py: finds the axis along which one label always lies on the same side of another."""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk


def test_an_ordered_axis_is_reported_as_ordered_and_a_mirrored_one_as_mixed(tmp_path, caplog, load_script):
    # label 1 is always 4 rows (axis 1, y) above label 2; along x it sits left in half the cases, right in the rest
    for case in range(6):
        seg = np.zeros((5, 12, 12), np.uint8)
        x1, x2 = (2, 8) if case % 2 else (8, 2)
        seg[2, 2:4, x1 : x1 + 2] = 1
        seg[2, 6:8, x2 : x2 + 2] = 2
        sitk.WriteImage(sitk.GetImageFromArray(seg), str(tmp_path / f"case_{case}.nii.gz"))
    module = load_script("label_layout")
    offsets = module.centroid_offsets(sorted(tmp_path.glob("*.nii.gz")))
    np.testing.assert_allclose(offsets[(1, 2)][:, 1], -4.0)
    with caplog.at_level(logging.INFO, logger="label_layout"):
        assert module.main(["--labels", str(tmp_path)]) == 0
    assert "axis 1 (y): median offset -4.0 voxels, same sign in 6 of 6 cases (100 %)" in caplog.text
    assert "axis 2 (x): median offset +0.0 voxels, same sign in 3 of 6 cases (50 %)" in caplog.text
