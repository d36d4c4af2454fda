"""The command line: validate without torch, clear errors with exit code 2."""

import subprocess
import sys

from edgekd.cli import main


def test_validate_does_not_import_torch():
    code = (
        "import sys; from edgekd.cli import main; "
        "rc = main(['validate', 'tests/data/smoke.yaml']); "
        "assert rc == 0, rc; "
        "assert 'torch' not in sys.modules, 'validate imported torch'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "tests/data/smoke.yaml: ok (teacher → student → qat → prune" in proc.stdout


def test_config_error_exits_2_with_file_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - stage: teacher\n    modle: {arch: tiny_cnn}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"error: {bad}:4: stages[0].modle: unknown key" in err


def test_help_lists_commands():
    proc = subprocess.run(
        [sys.executable, "-m", "edgekd.cli", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for command in ("run", "validate"):
        assert command in proc.stdout
