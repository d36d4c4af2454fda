"""The distiller: connectors, multi-teacher modes, FitNets' stages, DML, BYOT, FT, CRD."""

import copy

import pytest
import torch
from torch import nn

from edgekd.config.schema import AugmentConfig, TrainConfig
from edgekd.data.datasets import Batch
from edgekd.distill import functional
from edgekd.distill.distiller import Distiller, DistillSetupError
from edgekd.distill.loss import LOSSES
from edgekd.distill.scheme import SCHEMES
from edgekd.distill.teacher import Teacher
from edgekd.distill.terms import Outputs, build
from edgekd.distill.trainer import fit
from edgekd.models import zoo
from edgekd.models.specs import ModelSpec

CPU = torch.device("cpu")
X = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def tiny(widths=(8, 16), seed=0):
    torch.manual_seed(seed)
    return zoo.build(ModelSpec(arch="tiny_cnn", widths=list(widths)), 1, 10)


def term(name, weight=1.0, **cfg):
    return (name, weight, LOSSES.get(name).Config.model_validate(cfg))


def scheme(name, **cfg):
    cls = SCHEMES.get(name)
    return build(cls, cls.Config.model_validate(cfg))


def batch(n=6, labels=None):
    labels = torch.arange(n) % 10 if labels is None else labels
    return Batch(X[:n], labels, torch.arange(n), torch.zeros(n, dtype=torch.bool))


def pair(student, teacher, capture="output"):
    return {"student": student, "teacher": teacher, "capture": capture}


def built(terms, student, teachers, arrangement=None, num_data=6, **modes):
    distiller = Distiller(terms, arrangement, **modes)
    distiller.build(student, teachers, X[:2], 10, num_data)
    return distiller


def step(distiller, student, teachers, b=None):
    b = b or batch()
    with distiller.tap(student) as feats:
        out = Outputs(student(b.images), feats)
    t_out = {
        i: Teacher(teachers[i], CPU).outputs(b, distiller.teacher_keys(i))
        for i in distiller.teachers_for_step()
    }
    return distiller(out, t_out, b, b.images)


def test_connectors_map_student_widths_onto_the_teachers():
    s, t = tiny((8, 16)), tiny((12, 24))
    d = built([term("fitnet", pairs=[pair("0.5", "0.5")])], s, [t])  # 16 vs 24 channels
    conv = d.losses["fitnet"].connectors[0]
    assert isinstance(conv[0], nn.Conv2d) and (conv[0].in_channels, conv[0].out_channels) == (
        16,
        24,
    )
    vec = built([term("fitnet", pairs=[pair("1.2", "1.2", "input")])], s, [t])  # embeddings
    linear = vec.losses["fitnet"].connectors[0]
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (16, 24)
    same = built([term("fitnet", pairs=[pair("0.5", "0.5")])], s, [tiny((8, 16), seed=1)])
    assert isinstance(same.losses["fitnet"].connectors[0], nn.Identity)


def test_unpairable_shapes_and_wrong_names_are_located():
    s, t = tiny(), tiny((12, 24))
    with pytest.raises(DistillSetupError) as err:  # a vector cannot be mapped onto a feature map
        built([term("fitnet", pairs=[pair("1.2", "0.5", "input")])], s, [t])
    assert err.value.loc == ("losses", 0, "pairs", 0) and "cannot pair" in str(err.value)
    with pytest.raises(DistillSetupError) as err:
        built([term("ce"), term("at", pairs=[pair("0.5", "layer9")])], s, [t])
    assert err.value.loc == ("losses", 1, "pairs", 0, "teacher")
    assert "no module 'layer9'" in str(err.value) and "0.5" in str(err.value)


def test_feature_loss_gradients_reach_the_student_and_connector_only():
    s, t = tiny(), tiny((12, 24))
    d = built([term("fitnet", pairs=[pair("0.5", "0.5")])], s, [t])
    loss, logged = step(d, s, [t])
    loss.backward()
    assert logged["fitnet"] > 0
    assert s[0][0].weight.grad.abs().sum() > 0
    assert d.losses["fitnet"].connectors[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in t.parameters())
    assert s[1][2].weight.grad is None  # the classifier is not on the hint's path


def test_average_of_kd_over_teachers_is_kd_to_the_averaged_soft_targets():
    s = tiny()
    t1, t2 = tiny((8, 16), seed=1), tiny((12, 24), seed=2)
    d = built(
        [term("kd", temperature=2.0)], s, [t1, t2], multi_teacher="average",
        teacher_weights=[3.0, 1.0],
    )  # fmt: skip
    loss, _ = step(d, s, [t1, t2])
    grad = torch.autograd.grad(loss, s[1][2].weight)[0]
    # Reference: cross-entropy to 0.75·p1 + 0.25·p2 at T = 2, times T² (same gradient as KL).
    with torch.no_grad():
        p = 0.75 * (t1(X) / 2).softmax(1) + 0.25 * (t2(X) / 2).softmax(1)
    ref = -(p * (s(X) / 2).log_softmax(1)).sum(1).mean() * 4
    ref_grad = torch.autograd.grad(ref, s[1][2].weight)[0]
    torch.testing.assert_close(grad, ref_grad)


def test_random_mode_reads_one_teacher_per_batch_and_both_over_time():
    s, t1, t2 = tiny(), tiny(seed=1), tiny(seed=2)
    d = built([term("kd")], s, [t1, t2], multi_teacher="random")
    chosen = [d.teachers_for_step() for _ in range(20)]
    assert all(len(c) == 1 for c in chosen)
    assert {c[0] for c in chosen} == {0, 1}


def test_split_mode_gives_logits_to_teacher_0_and_features_to_teacher_1():
    s, t1, t2 = tiny(), tiny((8, 16), seed=1), tiny((12, 24), seed=2)
    terms = [term("kd"), term("fitnet", pairs=[pair("0.5", "0.5")])]
    d = built(terms, s, [t1, t2], multi_teacher="split")
    assert [x.reads for x in d.teacher_terms(0)] == ["response"]
    assert [x.reads for x in d.teacher_terms(1)] == ["feature"]
    assert d.teacher_keys(0) == [] and d.teacher_keys(1) == ["0.5"]
    # The connector was sized for teacher 1 (24 channels), not teacher 0 (16).
    assert d.losses["fitnet"].connectors[0][0].out_channels == 24
    with pytest.raises(DistillSetupError, match="split needs exactly two teachers"):
        built(terms, s, [t1], multi_teacher="split")


def test_logits_only_teacher_cannot_feed_feature_losses():
    with pytest.raises(DistillSetupError, match="is an ONNX model that gives logits only"):
        built([term("at", pairs=[pair("0.5", "0.5")])], tiny(), [None])


def test_fitnets_first_stage_trains_the_hint_alone():
    s, t = tiny(), tiny((12, 24))
    d = built([term("ce"), term("fitnet", pairs=[pair("0.5", "0.5")], stage1=0.5)], s, [t])
    d.progress = 0.2
    _, logged = step(d, s, [t])
    assert set(logged) == {"fitnet"}
    d.progress = 0.6
    _, logged = step(d, s, [t])
    assert set(logged) == {"ce", "fitnet"}


def test_dkd_warmup_ramps_linearly():
    s, t = tiny(), tiny(seed=3)
    d = built([term("dkd", warmup=0.5)], s, [t])
    d.progress = 0.25
    quarter, _ = step(d, s, [t])
    d.progress = 0.9
    full, _ = step(d, s, [t])
    assert float(quarter) == pytest.approx(0.5 * float(full), rel=1e-5)


def test_cross_entropy_and_dkd_handle_unlabeled_images():
    s, t = tiny(), tiny(seed=3)
    unlabeled = batch(labels=torch.full((6,), -1))
    ce = built([term("ce")], s, [])
    loss, _ = ce(Outputs(s(X)), None, unlabeled)
    assert float(loss) == 0.0
    mixed = batch(labels=torch.tensor([1, -1, 2, -1, 3, -1]))
    loss, _ = ce(Outputs(s(X)), None, mixed)
    keep = torch.tensor([0, 2, 4])
    expected = nn.functional.cross_entropy(s(X)[keep], torch.tensor([1, 2, 3]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # DKD: the teacher's top class stands in for a missing label.
    d = built([term("dkd")], s, [t])
    loss, _ = d(Outputs(s(X)), {0: Outputs(t(X))}, unlabeled)
    expected = functional.dkd_loss(s(X), t(X), t(X).argmax(1))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def train_briefly(model, splits, distiller, teachers, epochs=0.5):
    return fit(
        model,
        splits.train,
        splits,
        TrainConfig(epochs=epochs, lr=0.05, batch_size=64),
        distiller,
        teacher=teachers,
        augment=AugmentConfig(hflip=True),
        device=CPU,
        seed=0,
    )


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return all(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_dml_trains_every_peer_and_peers_start_different(splits):
    s = tiny()
    d = Distiller([term("ce")], scheme("dml", peers=3))
    d.build(s, [], X[:2], 10, len(splits.train), fresh_student=True)
    peers = d.scheme.peers
    assert len(peers) == 2
    assert not torch.equal(peers[0][0][0].weight, s[0][0].weight)  # own initialisation
    before_s, before_p = snapshot(s), [snapshot(p) for p in peers]
    history = train_briefly(s, splits, d, [])
    assert history[0]["dml"] > 0
    assert changed(before_s, s)
    assert all(changed(b, p) for b, p in zip(before_p, peers, strict=True))


def test_dml_peers_copied_from_a_trained_student_see_their_own_flips():
    s = tiny()
    d = Distiller([term("ce")], scheme("dml"))
    d.build(s, [], X[:2], 10, 6, fresh_student=False, hflip=True)
    assert torch.equal(d.scheme.peers[0][0][0].weight, s[0][0].weight) and d.scheme.peer_flips
    _, logged = step(d, s, [])
    assert logged["dml"] > 0  # identical weights, different views: the peers disagree


def test_byot_exits_are_trained_and_stay_out_of_the_student(splits):
    s = tiny((8, 16, 32))
    d = Distiller([term("ce")], scheme("byot", exits=["0.2", "0.5"]))
    d.build(s, [], X[:2], 10, len(splits.train))
    exits = d.scheme.exits
    assert [e.fc.in_features for e in exits] == [32, 32]  # the deepest embedding's width
    before = [snapshot(e) for e in exits]
    keys_before = set(s.state_dict())
    history = train_briefly(s, splits, d, [])
    assert history[0]["byot"] > 0
    assert all(changed(b, e) for b, e in zip(before, exits, strict=True))
    assert set(s.state_dict()) == keys_before


def test_ft_pretrains_then_freezes_the_paraphraser(splits):
    s, t = tiny(), tiny((12, 24), seed=4)
    d = Distiller(
        [
            term("ce"),
            term("ft", pairs=[pair("0.5", "0.5")], paraphraser_epochs=3, paraphraser_lr=0.01),
        ]
    )
    d.build(s, [t], X[:2], 10, len(splits.train))
    ft = d.losses["ft"]
    teacher = Teacher(t, CPU)
    feats = teacher.outputs(batch(), ["0.5"]).features["0.5"]

    def reconstruction():
        with torch.no_grad():
            ft.encoders.eval(), ft.decoders.eval()
            return float(nn.functional.mse_loss(ft.decoders[0](ft.encoders[0](feats)), feats))

    before = reconstruction()
    encoder = snapshot(ft.encoders)
    train_briefly(s, splits, d, [teacher], epochs=0.2)
    assert reconstruction() < 0.7 * before
    assert bool(ft.paraphraser_ready)
    assert all(not p.requires_grad for p in ft.encoders.parameters())
    after_pretrain = snapshot(ft.encoders)
    train_briefly(s, splits, d, [teacher], epochs=0.2)  # ready: not trained again
    assert changed(encoder, ft.encoders)
    assert all(
        torch.equal(a, b) for a, b in zip(after_pretrain, ft.encoders.parameters(), strict=True)
    )


def test_crd_updates_the_memory_of_the_batch_only_and_fixes_z():
    s, t = tiny(), tiny((12, 24), seed=5)
    d = built([term("crd", negatives=8, feat_dim=16)], s, [t], num_data=50)
    crd = d.losses["crd"]
    memory = crd.memory_s.clone()
    b = Batch(
        X[:4], torch.arange(4), torch.tensor([3, 7, 11, 40]), torch.zeros(4, dtype=torch.bool)
    )
    loss, _ = step(d, s, [t], b)
    assert torch.isfinite(loss) and float(loss) > 0
    moved = (crd.memory_s != memory).any(1).nonzero().flatten().tolist()
    assert moved == [3, 7, 11, 40]
    torch.testing.assert_close(crd.memory_s[moved].norm(dim=1), torch.ones(4))
    z = crd.z.clone()
    step(d, s, [t], b)
    assert torch.equal(z, crd.z) and bool((z > 0).all())


def test_checkpointed_distiller_state_round_trips():
    s, t = tiny(), tiny((12, 24))
    d = built([term("fitnet", pairs=[pair("0.5", "0.5")])], s, [t])
    other = built([term("fitnet", pairs=[pair("0.5", "0.5")])], copy.deepcopy(s), [t])
    other.load_state_dict(d.state_dict())
    for a, b in zip(d.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_crd_negatives_come_from_other_classes_and_never_the_anchor():
    s, t = tiny(), tiny((12, 24), seed=5)
    labels = torch.arange(200) % 10
    d = Distiller([term("crd", negatives=64, feat_dim=8)])
    d.build(s, [t], X[:2], 10, 200, labels=labels)
    index = torch.tensor([0, 5, 17, 199])
    neg = d.losses["crd"].negatives(index)
    assert neg.shape == (4, 64)
    assert not bool((labels[neg] == labels[index][:, None]).any())
    assert not bool((neg == index[:, None]).any()) and int(neg.max()) < 200


def test_random_draws_and_crd_sampling_resume_exactly_from_a_checkpoint():
    s, t1, t2 = tiny(), tiny(seed=1), tiny((12, 24), seed=2)
    pairs = [pair("1.2", "1.2", "input")]

    def make():
        d = Distiller([term("kd")], multi_teacher="random")
        d.build(s, [t1, t2], X[:2], 10, 50)
        c = Distiller([term("crd", negatives=8, feat_dim=8, pairs=pairs)])
        c.build(s, [t1], X[:2], 10, 50, labels=torch.arange(50) % 10)
        return d, c

    d, c = make()
    for _ in range(3):
        d.teachers_for_step()
        c.losses["crd"].negatives(torch.tensor([1, 2]))
    state_d, state_c = copy.deepcopy(d.state_dict()), copy.deepcopy(c.state_dict())
    expected = [d.teachers_for_step() for _ in range(10)]
    expected_neg = c.losses["crd"].negatives(torch.tensor([1, 2]))
    d2, c2 = make()
    d2.load_state_dict(state_d)
    c2.load_state_dict(state_c)
    assert [d2.teachers_for_step() for _ in range(10)] == expected
    assert torch.equal(c2.losses["crd"].negatives(torch.tensor([1, 2])), expected_neg)
