"""torchrun with two real processes (gloo on this CPU): training in DDP matches the single-
process run on the same global batches, the ranks end with the same weights, a run whose rank
is killed resumes from its last epoch, and a pipeline writes its artifacts once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT

FIT = """
import hashlib, json, sys, torch
from edgekd import distributed
from edgekd.config.schema import AugmentConfig, DataConfig, TrainConfig
from edgekd.data.datasets import load_splits, sample
from edgekd.distill.distiller import Distiller
from edgekd.distill.losses.ce import CEConfig
from edgekd.distill import trainer
from edgekd.distill.trainer import fit

distributed.init("cpu")
seen = []  # how many validation images this rank scored, per epoch
_predict = trainer.predict
def counting(model, data, *args, **kwargs):
    seen.append(len(data))
    return _predict(model, data, *args, **kwargs)
trainer.predict = counting
splits = load_splits(DataConfig(train_subset=512, val_size=100, test_subset=100), seed=0)
def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(  # no BatchNorm: its per-rank statistics would differ
        torch.nn.Conv2d(1, 8, 3, 2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32, 10))
def train(model):
    return fit(model, splits.train, splits, TrainConfig(epochs=2, lr=0.05, batch_size=64),
               Distiller([("ce", 1.0, CEConfig())]), teacher=None,
               augment=AugmentConfig(hflip=True), device=torch.device("cpu"), seed=0,
               val=splits.val)
model = make()
history = train(model)
solo = None
if distributed.rank() == 0:  # as a search stage's proxies train: rank 0 alone, the rest wait
    with distributed.alone():
        solo = train(make())
distributed.barrier()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
out = {"rank": distributed.rank(), "world": distributed.world(), "history": history,
       "weights": digest.hexdigest(), "first": model[0].weight.flatten()[:8].tolist(),
       "val_seen": seen, "solo": solo}
with open(f"{sys.argv[1]}/rank{distributed.rank()}.json", "w") as fh:
    json.dump(out, fh)
distributed.close()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _tail(stderr: str) -> str:
    """The end of a run's stderr without DDP's per-model find_unused_parameters notices."""
    return "\n".join(line for line in stderr.splitlines() if "reducer.cpp" not in line)[-3000:]


def _torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]


def test_two_ranks_train_as_one_process_on_the_same_global_batch(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(FIT)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one")], check=True, env=_env(), cwd=ROOT
    )
    proc = subprocess.run(
        _torchrun(str(script), str(tmp_path / "two")), env=_env(), cwd=ROOT, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and one["world"] == 1
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the ranks identical
    # Each rank took half of each 64-image batch and DDP averaged the gradients: the same
    # step as one process on the whole batch, up to float summation order.
    for single, double in zip(one["history"], ranks[0]["history"], strict=True):
        assert double["loss"] == pytest.approx(single["loss"], rel=1e-6)
        assert double["val_acc"] == pytest.approx(single["val_acc"], abs=1.0)  # 1 image in 100
    # validation sharded: each rank scored half of the 100 images, the counts summed
    assert one["val_seen"] == [100, 100, 100, 100]
    assert [r["val_seen"][:2] for r in ranks] == [[50, 50], [50, 50]]
    assert ranks[0]["history"] == ranks[1]["history"]  # the ranks report the same numbers
    # rank 0 training alone (`distributed.alone`) is the one-process run: whole batches, no
    # collectives (the other rank, waiting at a barrier, would never answer one)
    assert one["solo"] == one["history"] and ranks[1]["solo"] is None
    for single, alone in zip(one["history"], ranks[0]["solo"], strict=True):
        assert alone["loss"] == pytest.approx(single["loss"], rel=1e-6)
        assert alone["val_acc"] == single["val_acc"]
    assert ranks[0]["val_seen"][2:] == [100, 100]
    assert ranks[0]["first"] == pytest.approx(one["first"], abs=1e-5)


PIPELINE = """name: ddp
seed: 0
device: cpu
data: {{dataset: fashion-mnist, val_size: 200, train_subset: {train}, test_subset: 200}}
distill:
  losses:
    - {{name: ce, weight: 0.5}}
    - {{name: kd, weight: 0.5, temperature: 4}}
stages:
  - stage: teacher
    model: {{arch: tiny_cnn, widths: [8, 16]}}
    weights: null
    train: {{epochs: 1, lr: 0.1, batch_size: 64}}
  - stage: student
    model: {{arch: tiny_cnn, widths: [8, 16]}}
    train: {{epochs: {epochs}, lr: 0.1, batch_size: 64}}
  - stage: qat
    calibration: {calibration}
    qat: always
    timing: null
    train: {{epochs: 0.2, batch_size: 64}}
  - stage: prune
    ratio: 0.5
    round_to: 2
    require_speedup: false
    timing: null
    calibration: {calibration}
    train: {{epochs: 0.2, batch_size: 64}}
"""
CALIBRATION = ROOT / "calibration" / "fashion-mnist-train-1024.yaml"


def _rank_process(launcher: int, rank: str) -> psutil.Process:
    for child in psutil.Process(launcher).children(recursive=True):
        try:
            if child.environ().get("RANK") == rank:
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no rank {rank} under {launcher}")


def test_killing_one_rank_stops_the_run_and_the_rerun_resumes_its_stage(tmp_path):
    yaml_path = tmp_path / "ddp.yaml"
    yaml_path.write_text(PIPELINE.format(train=6000, epochs=4, calibration=CALIBRATION))
    out = tmp_path / "runs"
    command = _torchrun("-m", "edgekd", "run", str(yaml_path), "--out", str(out))
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(command, env=_env(), cwd=ROOT, stdout=log, stderr=log)
    checkpoint = out / "ddp" / "01_student" / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), (tmp_path / "first.log").read_text()[-3000:]
    os.kill(_rank_process(proc.pid, "1").pid, signal.SIGKILL)  # rank 1 dies mid-stage
    assert proc.wait(timeout=120) != 0  # torchrun ends the other rank and fails
    log.close()
    manifest = json.loads((out / "ddp" / "01_student" / "manifest.json").read_text())
    assert manifest["status"] == "running"
    again = subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + _tail(again.stderr)
    assert "00_teacher unchanged" in again.stdout
    assert "resuming an interrupted run" in again.stdout
    assert "resuming student after epoch" in again.stdout
    manifest = json.loads((out / "ddp" / "01_student" / "manifest.json").read_text())
    assert manifest["status"] == "done"
    assert [h["epoch"] for h in manifest["metrics"]["history"]] == [1, 2, 3, 4]
    # QAT (rank 0 calibrates, the other rank takes its quantizers) and pruning (rank 0 runs
    # DepGraph, the other rank takes its weights) then train on both ranks
    qat = json.loads((out / "ddp" / "02_qat" / "manifest.json").read_text())["metrics"]
    prune = json.loads((out / "ddp" / "03_prune" / "manifest.json").read_text())["metrics"]
    assert qat["test_acc"] > 30 and prune["params"] < prune["params_before"]
    assert again.stdout.count("training on 2 processes") == 1  # rank 0 alone prints
    run = out / "ddp"
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "00_teacher",
        "01_student",
        "02_qat",
        "03_prune",
        "cache",
        "run.json",
    ]
    assert not list((run / ".ranks").rglob("*.safetensors"))  # rank 1 kept nothing
    assert len(list((run / "cache").glob("*.npy"))) == 1  # the teacher's logits, once
    # a third run reuses every stage on both ranks
    third = subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True)
    assert third.returncode == 0, third.stdout[-3000:] + _tail(third.stderr)
    assert third.stdout.count("unchanged, reusing") == 4
