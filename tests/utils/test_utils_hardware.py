"""The hardware facts every speed figure is recorded with."""
from __future__ import annotations

from pathlib import Path

import agg2exp_lightning.utils.hardware as hardware

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def test_hardware_line_names_cpu_vector_units_and_bf16():
    line = hardware.hardware_line({"cpu": "AMD EPYC 7B13", "cores": 2, "vector": "AVX2", "cpu_flags": ["avx2"],
                                   "native_bf16_cpu": False, "onednn_max_cpu_isa": None, "gpu": [], "torch": "2.13.0"})
    assert line == ("Hardware: AMD EPYC 7B13 (2 cores; torch CPU kernels AVX2; flags avx2; native bf16: no); "
                    "GPU: none; torch 2.13.0")
    live = hardware.hardware_line()
    assert hardware.cpu_model() in live and "native bf16:" in live


def test_every_benchmark_records_the_hardware():
    """Each benchmark script writes or prints utils.hardware's line beside its figures."""
    scripts = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
    assert len(scripts) >= 10
    missing = [p.name for p in scripts if "hardware_line(" not in p.read_text()]
    assert missing == []
