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


def test_help_lists_commands_through_python_dash_m_edgekd():
    # `python -m edgekd` is what `torchrun -m edgekd run PIPELINE` starts on every rank.
    for module in ("edgekd", "edgekd.cli"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        for command in ("run", "validate"):
            assert command in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "edgekd", "validate", "no-such.yaml"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no-such.yaml" in proc.stderr


def test_every_command_prints_its_help(capsys):
    # argparse formats help strings with %: an unescaped "%" in one crashed `check --help`.
    from edgekd.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    helped = []
    for name, sub in commands.items():
        nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        argvs = [[name, "--help"]] + [[name, n, "--help"] for a in nested for n in a.choices]
        for argv in argvs:
            try:
                main(argv)
            except SystemExit as stop:
                assert stop.code == 0, argv
            assert "usage: edgekd " + " ".join(argv[:-1]) in capsys.readouterr().out, argv
            helped.append(argv[:-1])
    assert ["check"] in helped and ["baseline", "update"] in helped


def test_targets_lists_every_profile_and_why_it_is_not_reachable(capsys):
    assert main(["targets", "--no-probe"]) == 0
    out = capsys.readouterr().out
    for name in ("cpu-x86", "gpu", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"):
        assert f"{name} (targets/{name}.yaml)" in out
    assert "cpu-x86 (targets/cpu-x86.yaml): ready" in out and "openvino: available" in out
    assert (
        "jetson-orin-nx (targets/jetson-orin-nx.yaml): not reachable: no device configured" in out
    )


def test_bench_refuses_a_runtime_the_profile_does_not_list(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert (
        main(["bench", str(model), "--target", "targets/cpu-x86.yaml", "--runtime", "tensorrt"])
        == 2
    )
    assert "targets/cpu-x86.yaml does not list runtimes tensorrt" in capsys.readouterr().err


def test_deploy_of_a_folder_without_a_run_says_what_to_do(tmp_path, capsys):
    assert main(["deploy", str(tmp_path), "--target", "targets/jetson-orin-nano.yaml"]) == 2
    assert "run the pipeline first" in capsys.readouterr().err
