"""train.precision "auto" trains in bf16 on a CPU only where the CPU computes in bf16 natively."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from everylabel.engine import trainer
from everylabel.engine.trainer import autocast_dtype, cpu_has_native_bf16

CPU = torch.device("cpu")
X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_native_bf16_on_cpu(monkeypatch, native):
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype("auto", CPU) is (torch.bfloat16 if native else None)


def test_explicit_settings_are_kept(monkeypatch):
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype("bf16", CPU) is torch.bfloat16  # asked for: given, even where it is slow
    assert autocast_dtype("fp32", CPU) is None
    with pytest.raises(ValueError, match="needs CUDA"):
        autocast_dtype("fp16", CPU)
    with pytest.raises(ValueError, match="precision must be"):
        autocast_dtype("half", CPU)


@pytest.mark.skipif(not X86, reason="x86 instruction-set checks")
def test_x86_without_avx512_bf16_or_amx_is_not_native(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_has_native_bf16() is torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.parametrize("isa", ["AVX2", "avx512_core"])
def test_onednn_capped_below_bf16_means_fp32(monkeypatch, isa):
    """oneDNN capped below AVX512_CORE_BF16 emulates bf16 (2-10x slower steps, benchmarks/cpu_precision.py)."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert cpu_has_native_bf16() is False and autocast_dtype("auto", CPU) is None


@pytest.mark.skipif(not X86, reason="oneDNN's x86 instruction-set cap")
def test_onednn_avx2_cap_has_no_bf16_kernels():
    """The cap as oneDNN itself applies it, in a fresh process: its own bf16 check says no."""
    code = ("import json, torch; from everylabel.engine.trainer import autocast_dtype, cpu_has_native_bf16; "
            "print(json.dumps([torch.ops.mkldnn._is_mkldnn_bf16_supported(), cpu_has_native_bf16(), "
            "str(autocast_dtype('auto', torch.device('cpu')))]))")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, False, "None"]


@pytest.mark.parametrize("precision, native, expected", [("bf16", False, "bf16"), ("auto", False, "fp32")])
def test_run_records_its_precision_and_warns_of_emulated_bf16(tmp_path, monkeypatch, precision, native, expected):
    from everylabel.data.synthetic import make_dataset
    from everylabel.engine.trainer import train
    from everylabel.experiments.config import load_config

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native)
    data = make_dataset(tmp_path / "data", n_train=2, n_test=1, shape=(32, 32), seed=0)
    cfg = load_config(None, ["network.features=[4, 8]", "data.patch_size=[32, 32]", "data.batch_size=2",
                             "data.val_fraction=0", "train.steps=1", f"train.precision={precision}"])
    train(data, tmp_path / "run", cfg, progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["precision"] == expected
    log = (tmp_path / "run" / "train.log").read_text()
    assert ("without native bf16" in log) is (expected == "bf16")
