"""The remote path against a real OpenSSH server started on 127.0.0.1 with throwaway keys: the
"device" runs edgekd's measuring entry point with onnxruntime, host keys are checked, values are
never interpreted by the remote shell, and an unreachable device is a row with its reason."""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.config.schema import Connection, Power, TargetProfile
from edgekd.export.onnx import export_onnx
from edgekd.models import zoo
from edgekd.models.specs import ModelSpec
from edgekd.runners.base import MeasureProtocol
from edgekd.runners.ssh import Remote, RemoteError
from edgekd.runners.targets import BenchModel, BenchPlan, Reference, measure_target, unreachable

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(
    not Path(SSHD).exists() or shutil.which("ssh") is None,
    reason="OpenSSH server/client not installed (scripts/setup.sh installs openssh-server)",
)
PLAN = BenchPlan(protocol=MeasureProtocol(warmup=2, iterations=20, min_seconds=0.0), batches=[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 accepting one throwaway client key; yields a Connection."""
    d = tmp_path_factory.mktemp("sshd")
    host_pub = keygen(d / "host_key")
    client_pub = keygen(d / "client_key")
    (d / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    server = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if server.poll() is not None:
                pytest.skip(f"sshd did not start: {server.stderr.read().decode()[-300:]}")
            time.sleep(0.1)
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    other = keygen(d / "other_host_key")
    (d / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {other}\n")
    yield Connection(
        host="127.0.0.1",
        port=port,
        user=subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
        key_file=str(d / "client_key"),
        known_hosts=str(d / "known_hosts"),
        workdir=str(d / "device"),
        connect_timeout_s=5,
        python=sys.executable,  # the "device" runs edgekd from this environment
    )
    server.terminate()
    server.wait(timeout=10)


def device(conn: Connection, **update) -> TargetProfile:
    return TargetProfile(
        name="fake-device",
        kind="remote-ssh",
        runtimes=["onnxruntime"],
        precisions=["fp32", "int8"],
        threads=1,
        connection=conn.model_copy(update=update),
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch="tiny_cnn"), 1, 10).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_onnx(model, torch.zeros(1, 1, 28, 28), path)
    images = np.random.default_rng(0).standard_normal((30, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(images)).numpy()
    return path, images, logits


def measure_fp32(target: TargetProfile, tiny) -> list[dict]:
    """The rows of the tiny FP32 model on `target`, checked against its PyTorch logits."""
    path, images, logits = tiny
    ref = {"final": Reference(logits, "torch")}
    return measure_target(
        target, "device.yaml", [BenchModel("final", path, "fp32")], PLAN, images, ref
    )


def test_remote_onnxruntime_measures_on_the_device(sshd, tiny):
    rows = measure_fp32(device(sshd), tiny)
    (row,) = rows
    assert row["status"] == "ok", row
    assert row["check"]["passed"] and row["check"]["top1_agreement"] == 100.0
    assert row["check"]["max_abs_diff"] < 1e-4 and row["iterations"] >= 20
    assert row["machine"] == "fake-device (127.0.0.1)" and row["chosen"]
    # the files went through SSH into the profile's work folder on the "device"
    assert list(Path(sshd.workdir).glob("*/model.onnx")) and list(
        Path(sshd.workdir).glob("*/result.json")
    )


def test_values_never_reach_the_remote_shell_unquoted(sshd, tmp_path):
    remote = Remote(sshd)
    marker = tmp_path / "pwned"
    text = f"a b; touch {marker} $(touch {marker}) `touch {marker}` 'q' \"d\""
    out = remote.run(["printf", "%s", text], timeout=20).stdout.decode()
    assert out == text and not marker.exists()
    remote.put(Path(__file__), str(tmp_path / "odd name; x.py"))
    assert (tmp_path / "odd name; x.py").read_bytes() == Path(__file__).read_bytes()


def test_changed_host_key_is_refused(sshd, tiny):
    wrong = sshd.known_hosts.replace("known_hosts", "wrong_known_hosts")
    before = Path(wrong).read_text()
    reason = unreachable(device(sshd, known_hosts=wrong), "device.yaml")
    assert "host key" in reason and "does not accept unknown keys" in reason
    assert Path(wrong).read_text() == before  # nothing was added to the file


def test_host_missing_from_known_hosts_is_refused_not_added(sshd, tiny, tmp_path):
    # What StrictHostKeyChecking=accept-new would let through (and write down): a host the
    # known_hosts file does not list at all.
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    reason = unreachable(device(sshd, known_hosts=str(empty)), "device.yaml")
    assert "host key" in reason and "does not accept unknown keys" in reason
    assert empty.read_text() == ""
    rows = measure_fp32(device(sshd, known_hosts=str(empty)), tiny)
    assert rows[0]["status"] == "skipped" and "host key" in rows[0]["reason"]


def test_unreachable_device_is_a_row_with_its_reason(sshd, tiny):
    closed = device(sshd, port=free_port())
    rows = measure_fp32(closed, tiny)
    assert rows[0]["status"] == "skipped" and "connection refused" in rows[0]["reason"]


def test_refused_key_and_failing_command_say_why(sshd, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    assert (
        "key authentication refused"
        in Remote(sshd.model_copy(update={"key_file": str(stranger)})).probe()
    )
    with pytest.raises(RemoteError, match="exit 3"):
        Remote(sshd).run(["sh", "-c", "exit 3"], timeout=20)


def test_power_setup_failure_skips_the_target_with_reason(sshd, tiny):
    target = device(sshd).model_copy(update={"power": Power(nvpmodel=0)})
    rows = measure_fp32(target, tiny)
    assert rows[0]["status"] == "skipped" and "power set-up failed" in rows[0]["reason"]
    assert "nvpmodel" in rows[0]["reason"]


@pytest.fixture()
def trtexec_device(sshd, tmp_path):
    """The SSH "device" with a stand-in trtexec (tests/runners/fake_trtexec.py): the real one
    needs an NVIDIA GPU. It writes trtexec's formats, with outputs from onnxruntime."""
    tool = tmp_path / "trtexec"
    tool.write_text(
        f"#!{sys.executable}\n" + (Path(__file__).parent / "fake_trtexec.py").read_text()
    )
    tool.chmod(0o755)
    conn = sshd.model_copy(update={"trtexec": str(tool), "workdir": str(tmp_path / "device")})
    target = device(conn).model_copy(update={"runtimes": ["tensorrt"]})
    return target, tmp_path


def test_remote_tensorrt_builds_on_the_device_checks_and_times(trtexec_device, tiny):
    target, folder = trtexec_device
    path, images, logits = tiny
    plan = BenchPlan(protocol=MeasureProtocol(warmup=1, iterations=30, min_seconds=0), batches=[1])
    ref = {"final": Reference(logits, "torch")}
    (row,) = measure_target(
        target, "d.yaml", [BenchModel("final", path, "int8")], plan, images, ref
    )
    assert row["status"] == "ok", row
    assert row["check"]["passed"] and row["check"]["images"] == len(images)  # 30 = 1 chunk
    assert row["iterations"] == 30 and row["copies_included"]
    engine = row["extra"]["engine"]
    assert engine["tensorrt"] == "10.3.0" and engine["gpu"] == "Orin"
    assert engine["builder_flags"] == ["INT8", "FP16"]
    assert row["extra"]["trtexec_summary"]["Latency"]["median"] > 0
    (built,) = (folder / "device").glob("*/build.sh")
    assert "--int8" in built.read_text()

    # the same engine on a "device" whose TensorRT was upgraded is refused, not run
    (folder / "FAKE_TRT_VERSION").write_text("10.7.0")
    (row,) = measure_target(
        target, "d.yaml", [BenchModel("final", path, "int8")], plan, images, ref
    )
    assert row["status"] == "failed" and "tensorrt '10.3.0' (device now '10.7.0')" in row["reason"]


def test_remote_tensorrt_checks_in_chunks_the_engine_accepts(trtexec_device, tiny):
    target, _ = trtexec_device
    target = target.model_copy(update={"precisions": ["fp16"]})  # FP16 built from an FP32 file
    path, images, logits = tiny
    many = np.concatenate([images] * 5)  # 150 images > the engine's largest batch (100)
    plan = BenchPlan(protocol=MeasureProtocol(warmup=1, iterations=10, min_seconds=0), batches=[1])
    ref = {"final": Reference(np.concatenate([logits] * 5), "torch")}
    (row,) = measure_target(target, "d.yaml", [BenchModel("final", path, "fp32")], plan, many, ref)
    assert row["status"] == "ok" and row["precision"] == "fp16" and row["check"]["images"] == 150


def test_remote_tensorrt_times_each_dla_core_beside_the_gpu(trtexec_device, tiny):
    target, folder = trtexec_device
    target = target.model_copy(update={"dla_cores": 2, "dla_rows": "each"})
    path, images, logits = tiny
    many = np.concatenate([images] * 5)  # 150: a DLA engine of batch 100 checks 100 + 50 (+ 50)
    plan = BenchPlan(protocol=MeasureProtocol(warmup=1, iterations=10, min_seconds=0), batches=[1])
    ref = {"final": Reference(np.concatenate([logits] * 5), "torch")}
    gpu, *dla = measure_target(
        target, "d.yaml", [BenchModel("final", path, "int8")], plan, many, ref
    )
    assert gpu["status"] == "ok" and gpu["device"] == "cuda (Orin)" and "dla_core" not in gpu
    for core, row in enumerate(dla):
        assert row["status"] == "ok", row
        assert row["device"] == f"dla{core}" and row["dla_core"] == core  # labelled rows
        assert row["check"]["passed"] and row["check"]["images"] == 150
        facts = row["extra"]["dla"]
        assert facts == {"core": core, "gpu_fallback": True, "layers": {"dla": 1, "gpu": 1}}
    calls = [json.loads(line) for line in (folder / "calls.jsonl").read_text().splitlines()]
    builds = [c for c in calls if any(a.startswith("--onnx=") for a in c)]
    assert len(builds) == 5  # the GPU engine; per core one to check (batch 100), one to time (1)
    for core in (0, 1):
        mine = [c for c in builds if f"--useDLACore={core}" in c]
        assert all("--allowGPUFallback" in c and "--int8" in c for c in mine)
        assert sorted(next(a for a in c if a.startswith("--minShapes")) for c in mine) == [
            "--minShapes=input:100x1x28x28",
            "--minShapes=input:1x1x28x28",
        ]
    checks = [c for c in calls if any(a.startswith("--loadInputs") for a in c)]
    assert [a for c in checks for a in c if a.startswith("--shapes")] == [
        "--shapes=input:100x1x28x28", "--shapes=input:50x1x28x28",  # GPU: any batch to 100
        *["--shapes=input:100x1x28x28"] * 4,  # DLA: only its own, the last chunk filled up
    ]  # fmt: skip
    timed = [c for c in calls if any(a.startswith("--exportTimes") for a in c)]
    cores = [next((a for a in c if a.startswith("--useDLACore")), None) for c in timed]
    assert cores == [None, "--useDLACore=0", "--useDLACore=1"]


def test_deploy_pushes_the_bundle_and_builds_it_on_the_device(trtexec_device, tiny):
    from edgekd.artifacts import Artifact, sha256_path, write_json
    from edgekd.contracts import ExportedModel, ModelsIndex, Role
    from edgekd.deploy import deploy

    target, folder = trtexec_device
    path, _, _ = tiny
    # A run whose export stage is not named *_export: deploy finds it through the manifests.
    onnx_dir = folder / "run" / "03_convert" / "onnx"
    onnx_dir.mkdir(parents=True)
    (onnx_dir / "final_fp32.onnx").write_bytes(path.read_bytes())
    pre = {"layout": "NCHW", "channels": 1, "size": [28, 28], "scale": 1 / 255}
    final = ExportedModel(
        role=Role.FINAL, file="final_fp32.onnx", precision="fp32", params=None, macs=None,
        bytes=path.stat().st_size, test_acc=50.0, test_images=10,
        preprocessing={**pre, "mean": [0.5], "std": [0.5]},
    )  # fmt: skip
    ModelsIndex(models=[final], classes=[str(i) for i in range(10)]).write(onnx_dir)
    output = Artifact("onnx", "03_convert/onnx", sha256_path(onnx_dir))
    write_json(
        onnx_dir.parent / "manifest.json",
        {"stage": "export", "status": "done", "outputs": {"onnx": output.to_json()}},
    )
    target = target.model_copy(update={"precisions": ["fp16"], "dla_cores": 1})
    result = deploy(folder / "run", target, "d.yaml", None)
    assert result["pushed"] and result["engine"]["tensorrt"] == "10.3.0"
    on_device = Path(result["remote_dir"])
    assert (on_device / "model.onnx").read_bytes() == path.read_bytes()
    assert (on_device / "model.fp16.engine").exists()  # build.sh ran there
    assert (on_device / "model.fp16.dla0.engine").exists()  # and built the DLA engine beside it
    assert "--fp16" in (on_device / "build.sh").read_text()
    manifest = json.loads((on_device / "manifest.json").read_text())["model"]
    assert manifest["precision"] == "fp32"
    assert manifest["dla"] == {
        "cores": [0], "gpu_fallback": True, "engines": ["model.fp16.dla0.engine"]
    }  # fmt: skip
