import pytest

from edgekd.errors import UnknownNameError
from edgekd.registry import Registry


def test_register_twice_is_an_error():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(2)


def test_unknown_name_suggests_the_closest_and_lists_all():
    reg: Registry[int] = Registry("stage")
    for i, name in enumerate(["teacher", "student", "qat"]):
        reg.register(name)(i)
    with pytest.raises(UnknownNameError) as exc:
        reg.get("studnet")
    assert 'did you mean "student"?' in str(exc.value)
    assert "valid stage names: qat, student, teacher" in str(exc.value)
    assert reg.get("qat") == 2
