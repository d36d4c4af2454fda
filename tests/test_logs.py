"""The libraries' warnings and log records go to the stage's log file, not the console."""

import logging
import warnings

from edgekd import logs


class LibraryWarning(Warning):
    """A warning class the suite's filters do not ignore (they ignore UserWarning)."""


def test_library_noise_goes_to_the_log_file_and_the_console_stays_clean(tmp_path, capfd):
    nncf = logging.getLogger("nncf")
    before = list(nncf.handlers)
    log = tmp_path / "stage" / "stage.log"
    with logs.third_party_to(log):
        warnings.simplefilter("always")
        warnings.warn("Converting a tensor to a Python boolean", LibraryWarning, stacklevel=1)
        nncf.warning("Compiling and loading torch extension")
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found")
    text = log.read_text()
    assert "LibraryWarning: Converting a tensor to a Python boolean" in text
    assert "nncf WARNING Compiling and loading torch extension" in text
    assert "torch.utils.cpp_extension WARNING No CUDA runtime is found" in text
    out, err = capfd.readouterr()
    assert "No CUDA" not in out + err and "Converting" not in out + err
    assert nncf.handlers == before  # restored after the stage


def test_verbose_leaves_it_where_the_libraries_send_it(tmp_path, caplog):
    logs.set_verbose(True)
    try:
        with logs.third_party_to(tmp_path / "stage.log"):
            logging.getLogger("torch.x").warning("shown")
    finally:
        logs.set_verbose(False)
    assert not (tmp_path / "stage.log").exists()
    assert [r.getMessage() for r in caplog.records] == ["shown"]
