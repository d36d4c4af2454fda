"""The export stage's parity gate fails with the numbers when outside tolerance."""

import pytest

from edgekd.errors import ParityError
from edgekd.stages.export import Tolerance, _default_tolerances, require_parity


def test_within_tolerance_passes():
    require_parity(
        "m.onnx",
        {"images": 10, "max_abs_diff": 1e-5, "top1_agreement": 100.0},
        _default_tolerances()["fp32"],
    )


@pytest.mark.parametrize(
    "check",
    [
        {"images": 1000, "max_abs_diff": 0.5, "top1_agreement": 100.0},
        {"images": 1000, "max_abs_diff": 1e-6, "top1_agreement": 98.0},
    ],
)
def test_outside_tolerance_fails_with_numbers(check):
    with pytest.raises(ParityError) as exc:
        require_parity("final_int8.onnx", check, Tolerance(max_abs_diff=0.1, top1_agreement=99))
    msg = str(exc.value)
    assert msg.startswith("final_int8.onnx: onnxruntime disagrees with PyTorch on 1000 test")
    assert "(allowed 0.1)" in msg and "(required 99.0%)" in msg
