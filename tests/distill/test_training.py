"""The training loop: it learns, it resumes exactly, and cached teacher logits are exact."""

import pytest
import torch

from edgekd.config.schema import AugmentConfig, TrainConfig
from edgekd.data.datasets import batches
from edgekd.distill.distiller import Distiller
from edgekd.distill.losses.ce import CEConfig
from edgekd.distill.losses.kd import KDConfig
from edgekd.distill.teacher import Teacher, cache_logits, fastest_logits
from edgekd.distill.trainer import evaluate, fit
from edgekd.models import zoo
from edgekd.models.specs import ModelSpec

CPU = torch.device("cpu")
CE = Distiller([("ce", 1.0, CEConfig())])


def train(model, splits, cfg, distiller=CE, teacher=None, **kwargs):
    """fit() with this file's defaults: no augmentation, CPU, seed 0."""
    return fit(
        model,
        splits.train,
        splits,
        cfg,
        distiller,
        teacher=teacher,
        augment=AugmentConfig(),
        device=CPU,
        seed=0,
        **kwargs,
    )


def tiny(seed=0):
    torch.manual_seed(seed)
    return zoo.build(ModelSpec(arch="tiny_cnn", widths=[8, 16]), 1, 10)


def test_training_learns(splits):
    model = tiny()
    before = evaluate(model, splits.val, splits, CPU)
    train(model, splits, TrainConfig(epochs=2, lr=0.2, batch_size=32))
    after = evaluate(model, splits.val, splits, CPU)
    assert after > before + 30 and after > 50  # chance is 10 %


class Interrupting(Distiller):
    """CE loss that raises KeyboardInterrupt at call number `at`, like a Ctrl-C mid-epoch."""

    def __init__(self, at: int) -> None:
        super().__init__([("ce", 1.0, CEConfig())])
        self.calls, self.at = 0, at

    def forward(self, *args):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return super().forward(*args)


def test_resume_after_interruption_matches_an_uninterrupted_run(splits, tmp_path):
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=100)  # 20 steps per epoch
    straight = tiny()
    train(straight, splits, cfg)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 2
        train(tiny(), splits, cfg, distiller=Interrupting(at=27), checkpoint=ckpt, key="k")
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = tiny(seed=123)  # another init: everything must come from the checkpoint
    history = train(resumed, splits, cfg, checkpoint=ckpt, key="k")
    assert [h["epoch"] for h in history] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_checkpoint_of_another_config_is_not_resumed(splits, tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    cfg = TrainConfig(epochs=1, lr=0.05)
    old = tiny(seed=7)  # another start and rate: its finished checkpoint is not the reference
    train(old, splits, TrainConfig(epochs=1, lr=0.2), checkpoint=ckpt, key="old")
    fresh, reference = tiny(), tiny()
    train(fresh, splits, cfg, checkpoint=ckpt, key="new")
    train(reference, splits, cfg)
    for a, b in zip(fresh.state_dict().values(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    # Had the old checkpoint been resumed (its one epoch done), `fresh` would be `old`.
    assert not torch.equal(old.state_dict()["0.0.weight"], reference.state_dict()["0.0.weight"])


def test_cached_teacher_logits_equal_live_ones(splits, tmp_path):
    model = tiny().eval()
    said = []
    cached = cache_logits(
        model, splits.train, splits, CPU, tmp_path / "cache.npy", "k", log=said.append
    )
    assert said and "in onnxruntime" in said[0]  # on a CPU the cache is computed there
    live, from_cache = Teacher(model, CPU), Teacher(model, CPU, cached)
    gen = torch.Generator().manual_seed(1)
    batch = next(
        batches(
            splits.train,
            splits,
            256,
            augment=AugmentConfig(hflip=True),
            generator=gen,
            shuffle=True,
        )
    )
    assert batch.flipped.any()
    torch.testing.assert_close(from_cache.logits(batch), live.logits(batch), atol=1e-5, rtol=0)
    # The second call reads the file instead of recomputing.
    again = cache_logits(None, splits.train, splits, CPU, tmp_path / "cache.npy", "k")
    torch.testing.assert_close(again, cached)


def test_teacher_is_frozen(splits):
    model = tiny()
    teacher = Teacher(model, CPU)
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert not teacher.model.training
    kd = Distiller([("kd", 1.0, KDConfig())])
    student = tiny(1)
    before = [p.clone() for p in model.parameters()]
    train(student, splits, TrainConfig(epochs=0.2, lr=0.05), distiller=kd, teacher=teacher)
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("epochs", [0.5, 1.5])
def test_fractional_epochs_take_the_right_number_of_steps(splits, epochs):
    history = train(tiny(), splits, TrainConfig(epochs=epochs, batch_size=100))
    assert len(history) == (1 if epochs < 1 else 2)


def test_bf16_autocast_runs_the_forward_in_bf16_and_keeps_fp32_weights(splits):
    model = tiny()
    dtypes = []
    model[1].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    cfg = TrainConfig(epochs=2, lr=0.2, batch_size=32, amp="bf16")
    history = train(model, splits, cfg, val=splits.val)
    assert dtypes[0] == torch.bfloat16  # training steps: autocast
    assert dtypes[-1] == torch.float32  # validation: FP32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history[-1]["val_acc"] > 50  # it learns, as test_training_learns does in FP32


def test_compile_trains_through_inductor_and_steps_as_eager_does(splits):
    """One SGD step (epochs 0.05 of 20 batches) compiled and eager from the same weights: the
    same loss and weights to float rounding, and dynamo really captured a graph."""
    from torch._dynamo.utils import counters

    eager, compiled = tiny(), tiny()
    cfg = TrainConfig(epochs=0.05, lr=0.2, batch_size=100)
    torch._dynamo.reset()
    counters.clear()
    want = train(eager, splits, cfg)
    got = train(compiled, splits, cfg.model_copy(update={"compile": True}))
    assert counters["stats"]["unique_graphs"] >= 1
    assert got[0]["loss"] == pytest.approx(want[0]["loss"], rel=1e-5)
    for (name, a), b in zip(
        eager.state_dict().items(), compiled.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)


def test_fp16_needs_a_gpu(splits):
    from edgekd.errors import EdgeKDError

    with pytest.raises(EdgeKDError, match="fp16 needs a CUDA device"):
        train(tiny(), splits, TrainConfig(epochs=1, amp="fp16"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_on_a_gpu(splits, amp):
    model = tiny()
    cuda = torch.device("cuda")
    before = evaluate(model, splits.val, splits, cuda)
    fit(
        model,
        splits.train,
        splits,
        TrainConfig(epochs=2, lr=0.2, batch_size=32, amp=amp),
        CE,
        teacher=None,
        augment=AugmentConfig(),
        device=cuda,
        seed=0,
    )
    after = evaluate(model, splits.val, splits, cuda)
    assert after > before + 30 and after > 50


class _Unexportable(torch.nn.Module):
    """A teacher no ONNX exporter takes: its forward leaves torch for NumPy."""

    def forward(self, x):
        return torch.from_numpy(x.detach().numpy().reshape(len(x), -1)[:, :10].copy())


class _TracesWrong(torch.nn.Module):
    """Exports, but wrongly: the traced branch depends on the example's values."""

    def forward(self, x):
        flat = x.reshape(len(x), -1)[:, :10]
        return flat * 2 if float(x.mean()) > 0 else flat


@pytest.mark.parametrize(
    ("model", "why"), [(_Unexportable(), "failed"), (_TracesWrong(), "differ from PyTorch")]
)
def test_a_teacher_onnxruntime_cannot_run_right_falls_back_to_pytorch(model, why, tmp_path):
    example = torch.cat([torch.ones(4, 1, 8, 8), -torch.ones(4, 1, 8, 8)])
    said = []
    run = fastest_logits(model, CPU, example, tmp_path, said.append)
    assert why in said[0] and "in PyTorch" in said[0]
    torch.testing.assert_close(run(example), model(example))
