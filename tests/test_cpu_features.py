"""CPU capability detection and the ``--precision auto`` choice, on simulated CPUs of every kind."""

from __future__ import annotations

import pytest

from monetpipe.cpu_features import auto_precision, cpu_features, parse_flags, supported_precisions

EPYC_AVX2 = ["sse4_2", "avx", "avx2", "fma"]
CASCADE_LAKE = EPYC_AVX2 + ["avx512f", "avx512bw", "avx512_vnni"]
GENOA = CASCADE_LAKE + ["avx512_bf16"]
SAPPHIRE_RAPIDS = GENOA + ["amx_tile", "amx_bf16", "amx_int8"]
OLD_CPU = ["sse4_2"]


@pytest.mark.parametrize(
    ("flags", "bf16", "vnni", "expected"),
    [
        (OLD_CPU, False, False, ["fp32"]),
        (EPYC_AVX2, False, False, ["fp32", "int8"]),
        (CASCADE_LAKE, False, True, ["fp32", "int8"]),
        (GENOA, True, True, ["fp32", "bf16", "int8"]),
        (SAPPHIRE_RAPIDS, True, True, ["fp32", "bf16", "int8"]),
    ],
)
def test_features_and_supported_precisions(flags, bf16, vnni, expected):
    f = cpu_features(flags)
    assert (f.bf16, f.vnni) == (bf16, vnni)
    assert supported_precisions(f) == expected


def test_auto_is_fp32_unless_the_model_was_validated_in_a_native_precision():
    genoa, avx2, old = cpu_features(GENOA), cpu_features(EPYC_AVX2), cpu_features(OLD_CPU)
    assert auto_precision(["fp32"], genoa) == "fp32"  # nothing validated: nothing changes
    assert auto_precision(["fp32", "bf16"], genoa) == "bf16"
    assert auto_precision(["fp32", "bf16", "int8"], genoa) == "int8"  # VNNI: int8 is the fastest
    assert auto_precision(["fp32", "bf16"], avx2) == "fp32"  # bf16 would be emulated: slower than fp32
    assert auto_precision(["fp32", "bf16"], cpu_features(CASCADE_LAKE)) == "fp32"
    assert auto_precision(["fp32", "bf16", "int8"], old) == "fp32"
    assert auto_precision(["fp32", "bf16", "int8"], genoa, device_type="cuda") == "fp32"


def test_env_override_simulates_another_cpu(monkeypatch):
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "avx2, avx512_bf16")
    assert cpu_features().bf16
    monkeypatch.setenv("MONETPIPE_CPU_FLAGS", "")
    f = cpu_features()
    assert not f.bf16 and not f.int8 and supported_precisions() == ["fp32"]
    assert "no bf16" in f.summary()


def test_parse_flags():
    assert parse_flags("AVX2,avx512_bf16 ,, amx_tile") == {"avx2", "avx512_bf16", "amx_tile"}


def test_this_machine_is_described(monkeypatch):
    monkeypatch.delenv("MONETPIPE_CPU_FLAGS")  # the suite's plain-CPU default (conftest) off: the real flags
    f = cpu_features()
    assert f.summary()
    assert supported_precisions(f)[0] == "fp32"
