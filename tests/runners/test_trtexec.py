"""trtexec recipes and parsers, on text in the formats TensorRT prints (performance summary from
samples/common/sampleReporting.cpp, as quoted in NVIDIA/TensorRT#4177 and #3857), and tegrastats
lines from Orin Nano and AGX Orin boards."""

import json
import shlex

import numpy as np
import pytest

from edgekd.runners import trtexec
from edgekd.runners.ssh import parse_tegrastats

# NVIDIA/TensorRT issue #4177 (trtexec output, unchanged apart from the timestamps' prefix)
SUMMARY = """\
[10/03/2024-10:47:59] [I] === Performance summary ===
[10/03/2024-10:47:59] [I] Throughput: 130.298 qps
[10/03/2024-10:47:59] [I] Latency: min = 5.38672 ms, max = 13.3664 ms, mean = 7.60628 ms, median = 7.16092 ms, percentile(90%) = 10.2996 ms, percentile(95%) = 10.8698 ms, percentile(99%) = 12.9675 ms
[10/03/2024-10:47:59] [I] Enqueue Time: min = 2.72876 ms, max = 15.0201 ms, mean = 7.63062 ms, median = 7.86694 ms, percentile(90%) = 10.1792 ms, percentile(95%) = 11.7217 ms, percentile(99%) = 14.1848 ms
[10/03/2024-10:47:59] [I] H2D Latency: min = 0.0065918 ms, max = 0.0698242 ms, mean = 0.0122212 ms, median = 0.00814819 ms, percentile(90%) = 0.0253906 ms, percentile(95%) = 0.0270996 ms, percentile(99%) = 0.0515137 ms
[10/03/2024-10:47:59] [I] GPU Compute Time: min = 5.34595 ms, max = 13.3388 ms, mean = 7.58404 ms, median = 7.14139 ms, percentile(90%) = 10.2881 ms, percentile(95%) = 10.8175 ms, percentile(99%) = 12.9485 ms
[10/03/2024-10:47:59] [I] D2H Latency: min = 0.00390625 ms, max = 0.110596 ms, mean = 0.0100141 ms, median = 0.00439453 ms, percentile(90%) = 0.0254517 ms, percentile(95%) = 0.0319824 ms, percentile(99%) = 0.0994873 ms
[10/03/2024-10:47:59] [I] Total Host Walltime: 3.00082 s
[10/03/2024-10:47:59] [I] Total GPU Compute Time: 2.96536 s
"""  # noqa: E501
ORIN_NANO = "06-18-2025 11:25:24 RAM 3452/7620MB (lfb 25x4MB) SWAP 1518/16384MB (cached 174MB) CPU [1%@1420,2%@1420,0%@1420,2%@1420,2%@729,1%@729] GR3D_FREQ 0% cpu@50.031C soc2@49.031C soc0@50C gpu@49.031C tj@50.25C soc1@50.25C VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW VDD_SOC 1475mW/1475mW"  # noqa: E501
AGX_ORIN = "04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) CPU [0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@44.562C tj@44.343C VDD_GPU_SOC 2340mW/2340mW VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW"  # noqa: E501


def test_performance_summary_is_parsed():
    summary = trtexec.parse_summary("[I] Starting inference\n" + SUMMARY)
    assert summary["Latency"] == {
        "min": 5.38672,
        "max": 13.3664,
        "mean": 7.60628,
        "median": 7.16092,
        "p90": 10.2996,
        "p95": 10.8698,
        "p99": 12.9675,
    }
    assert summary["GPU Compute Time"]["median"] == 7.14139
    assert summary["H2D Latency"]["p99"] == 0.0515137
    assert summary["Throughput"] == {"qps": 130.298}


def test_older_summary_with_one_percentile_and_a_missing_summary():
    # TensorRT 8.4 prints a single percentile(99%)
    text = (
        "[I] Latency: min = 1.5 ms, max = 2.5 ms, mean = 1.75 ms, median = 1.7 ms, "
        "percentile(99%) = 2.4 ms"
    )
    assert trtexec.parse_summary(text)["Latency"] == {
        "min": 1.5, "max": 2.5, "mean": 1.75, "median": 1.7, "p99": 2.4,
    }  # fmt: skip
    with pytest.raises(ValueError, match="Latency"):
        trtexec.parse_summary("[E] Error[1]: engine deserialization failed")


def test_build_facts_from_the_log():
    log = (
        "[I] TensorRT version: 10.3.0\n[I] === Device Information ===\n"
        "[I] Selected Device: Orin\n[I] Compute Capability: 8.7\n[I] SMs: 8\n"
    )
    assert trtexec.parse_build_facts(log) == {
        "tensorrt": "10.3.0",
        "gpu": "Orin",
        "compute_capability": "8.7",
    }


def test_exported_times_and_outputs():
    times = [
        {"count": 2},
        {"latencyMs": 1.25, "computeMs": 1.0},
        {"latencyMs": 1.5, "computeMs": 1.1},
    ]
    assert trtexec.parse_times(json.dumps(times)) == ([1.25, 1.5], [1.0, 1.1])
    outputs = [{"name": "logits", "dimensions": "2x3", "values": [0, 1, 2, 3, 4, 5]}]
    got = trtexec.parse_outputs(json.dumps(outputs), "logits")
    assert got.shape == (2, 3) and got.dtype == np.float32 and got[1, 2] == 5


def test_recipes_quote_every_argument_and_use_explicit_quantization():
    build = trtexec.build_command(
        "/usr/src/tensorrt/bin/trtexec", "model.onnx", "m.engine", "int8", "input",
        [1, 28, 28], 1, 100, "timing.cache",
    )  # fmt: skip
    assert "--int8" in build and "--fp16" in build  # Q/DQ layers INT8, the rest may use FP16
    assert not any(a.startswith("--calib") for a in build)  # scales come from the Q/DQ nodes
    assert "--maxShapes=input:100x1x28x28" in build and "--timingCacheFile=timing.cache" in build
    assert "--fp16" not in trtexec.build_command(
        "trtexec", "m.onnx", "m.engine", "fp32", "input", [3, 224, 224], 1, 1, "c"
    )
    timed = trtexec.time_command(
        "trtexec", "m.engine", "in put", [1, 28, 28], 8, 500, 2.5, 200, "t.json"
    )
    assert "--shapes=in put:8x1x28x28" in timed and "--duration=3" in timed
    assert "--avgRuns=1" in timed and "--exportTimes=t.json" in timed
    script = trtexec.build_script([timed])
    assert shlex.split(script.splitlines()[-1]) == timed  # the shell sees exactly these arguments


def test_tegrastats_power_rails():
    nano = parse_tegrastats([ORIN_NANO, ORIN_NANO.replace("4824mW/4824mW", "5176mW/5000mW")])
    assert nano["samples"] == 2 and nano["module_mw"] == 5000.0
    assert nano["rails_mw"]["VDD_SOC"] == 1475.0
    agx = parse_tegrastats([AGX_ORIN, "garbage line"])
    assert agx["samples"] == 1 and agx["module_mw"] is None  # AGX Orin has no VDD_IN rail
    assert agx["rails_mw"] == {
        "VDD_GPU_SOC": 2340.0,
        "VDD_CPU_CV": 390.0,
        "VIN_SYS_5V0": 4025.0,
        "NC": 0.0,
        "VDDQ_VDD2_1V8AO": 301.0,
    }
    three = parse_tegrastats(["VDD_IN 4548mW/4548mW/4548mW VDD_SOC 1mW/1mW"])
    assert three["module_mw"] == 4548.0
