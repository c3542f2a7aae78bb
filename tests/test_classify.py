"""`pipe classify`: every attempt end to end on tiny data, the long-tail switches numerically, folds, bad configs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_config
from pipeline.convert.instances import ConvertParams
from pipeline.convert.run import run_convert
from pipeline.data.layout import load_category
from pipeline.data.synth import synthesize
from pipeline.errors import ConfigError
from pipeline.fetch import file_digest
from pipeline.io import read_json
from pipeline.stages.classify.attempts import Attempt, load_attempt, load_attempts
from pipeline.stages.classify.data import (ImageCache, MixUpCollate, load_labelled, shared_split, stratified_folds,
                                           train_collate)
from pipeline.stages.classify.losses import build_loss, effective_number_weights, log_prior, soft_targets
from pipeline.stages.classify.models import Member, build, resolve_backbones
from pipeline.stages.classify.run import run_classify
from pipeline.stages.classify.train import Options, fit, open_stages, predict
from pipeline.training import distributed
from pipeline.training.sampling import ShardedSampler, class_balanced_weights
from pipeline.weights import Resolved, get_spec

TINY = ["classify.epochs=1", "classify.imgsz=32", "classify.batch=4", "classify.folds=0", "classify.compare=null"]


def _convert(root: Path, category: str, out: Path) -> Path:
    run_convert(load_category(root, category), out, ConvertParams(), {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    return out


@pytest.fixture(scope="session")
def cls_dataset(tmp_path_factory) -> Path:
    """A converted synthetic bottle with 4 labelled images per class (enough for 3 stratified folds)."""
    root = tmp_path_factory.mktemp("cls-synth")
    synthesize("bottle", root, size=48, train_good=6, test_good=4, test_per_defect=4, seed=1)
    return _convert(root, "bottle", tmp_path_factory.mktemp("cls-converted") / "bottle")


def _cfg(*overrides: str):
    return load_config("bottle", "tiny", overrides=[*TINY, *overrides])


@pytest.mark.parametrize("attempt", ["A", "B", "C", "D"])
def test_each_attempt_trains_and_evaluates_end_to_end(cls_dataset, tmp_path, attempt):
    cfg = _cfg(f"classify.attempts=[{attempt}]")
    m = run_classify(cfg, cls_dataset, tmp_path / "out")
    (entry,) = m["attempts"]
    test = entry["split"]["test"]
    assert entry["id"] == attempt and m["classes"] == ["good", "broken_large", "broken_small", "contamination"]
    assert test["images"] == m["images"]["test"] == 4 and np.sum(test["confusion"]) == 4
    assert 0 <= test["accuracy"] <= 1 and 0 <= test["macro_f1"] <= 1
    assert m["images"]["train"] == 8 + 6  # the split's labelled train images plus MVTec train/good
    assert all(w["source"] == "random-init" and not w["pretrained"] for w in entry["weights"])
    assert any("randomly initialised" in c for c in m["caveats"]) and any("synthetic" in c for c in m["caveats"])
    assert m["caveats"] == m["provenance"]["caveats"] and m["provenance"]["meaningful"] is False  # the shared block's
    # the saved weights are the selected epoch's: reloaded, they give the recorded test predictions
    saved = torch.load(entry["best_weights"]["file"], weights_only=False)
    a = Attempt.model_validate(saved["attempt"])  # the variant that ran (from scratch here: D is a smaller ViT)
    assert a == load_attempt(attempt, cfg.classify, scratch=True)
    model = build(a, 4, resolve_backbones(a.backbones, tmp_path, True))
    model.load_state_dict(saved["state_dict"])
    data = load_labelled(cls_dataset)
    probs, labels = predict(model, data.splits["test"], ImageCache(), a.imgsz, Options("cpu", 0))
    recorded = read_json(tmp_path / "out" / "runs" / attempt / "split.json")["test_predictions"]
    assert probs.argmax(1).tolist() == recorded["pred"] and labels.tolist() == recorded["label"]
    assert (tmp_path / "out" / "confusion" / f"{attempt}.png").stat().st_size > 1000
    table = (tmp_path / "out" / "attempts.md").read_text()
    # random init: the attempt's from-scratch variant ran, and its row says what that changed
    assert f"| {attempt} | scratch (" in table and "| 32×32 |" in table and "Best attempt: " + attempt in table
    assert entry["recipe"]["name"] == "scratch" and entry["hyperparameters"]["recipe"] == "scratch"


def test_folds_compare_and_cli(cls_dataset, tmp_path):
    result = CliRunner().invoke(app, ["classify", "bottle", "--dataset", str(cls_dataset), "--out", str(tmp_path / "o"),
                                      "-p", "tiny", "--attempts", "A", "--folds", "3", "--epochs", "1", "--imgsz", "32"])
    assert result.exit_code == 0, result.output
    m = read_json(tmp_path / "o" / "metrics.json")
    cv = m["attempts"][0]["cv"]
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3
    assert cv["pooled"]["images"] == 16  # every labelled image tested exactly once
    assert cv["accuracy"]["mean"] == pytest.approx(np.mean([f["accuracy"] for f in cv["per_fold"]]), abs=1e-5)
    c = m["compare"]
    assert c["attempt"] == "A" and c["method"] == "balanced_softmax" and c["runs"] == {
        "without": "A", "with": "A+balanced_softmax"}
    assert set(c["with"]["recall"]) == set(m["classes"]) and "out-of-fold" in c["basis"]
    assert (tmp_path / "o" / "runs" / "A+balanced_softmax" / "fold-2.json").is_file()
    best = m["attempts"][0]["best_weights"]  # the long-tail variant keeps its own weights, not over A's
    assert best["sha256"] == file_digest(tmp_path / "o" / "A" / "best.pt")
    assert (tmp_path / "o" / "A+balanced_softmax" / "best.pt").is_file()
    assert (tmp_path / "o" / "confusion" / "A-cv.png").is_file()
    assert "## Long tail: attempt A without and with balanced_softmax" in (tmp_path / "o" / "attempts.md").read_text()


def test_resume_reuses_finished_runs_and_redoes_missing_ones(cls_dataset, tmp_path):
    cfg = _cfg("classify.attempts=[A]", "classify.folds=3")
    out = tmp_path / "out"
    first = run_classify(cfg, cls_dataset, out)
    kept = (out / "runs" / "A" / "fold-0.json").stat().st_mtime_ns
    (out / "runs" / "A" / "fold-1.json").unlink()
    again = run_classify(cfg, cls_dataset, out, resume=True)
    assert (out / "runs" / "A" / "fold-0.json").stat().st_mtime_ns == kept
    assert (out / "runs" / "A" / "fold-1.json").is_file()
    assert again["attempts"][0]["cv"]["per_fold"] == first["attempts"][0]["cv"]["per_fold"]  # seeded: same result


def test_stratified_folds_are_disjoint_and_stratified(cls_dataset):
    data = load_labelled(cls_dataset)
    folds = stratified_folds(data, 3, seed=0, add_train_good=True)
    pool = {s.rel for s in data.pool}
    good = {s.rel for s in data.train_good}
    tests = [{s.rel for s in f.test} for f in folds]
    assert set().union(*tests) == pool and sum(map(len, tests)) == len(pool)  # a partition of the labelled pool
    for f, test in zip(folds, tests):
        train, val = {s.rel for s in f.train}, {s.rel for s in f.val}
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == pool | good and good <= train
        for part in (f.test, f.val):  # 4 per class over 3 folds: 1 or 2 of each class in every part
            counts = np.bincount([s.label for s in part], minlength=4)
            assert counts.min() >= 1 and counts.max() <= 2
    assert [s.rel for s in stratified_folds(data, 3, 0, True)[1].test] == [s.rel for s in folds[1].test]
    with pytest.raises(ConfigError, match=r"classify\.folds: 5 stratified folds need at least 5.*has 4"):
        stratified_folds(data, 5, 0, True)


def test_shared_split_adds_train_good_only_when_asked(cls_dataset):
    data = load_labelled(cls_dataset)
    assert len(shared_split(data, True).train) == len(shared_split(data, False).train) + 6
    assert [s.rel for s in shared_split(data, True).test] == [s.rel for s in data.splits["test"]]


def test_balanced_sampler_draws_classes_equally():
    labels = [0] * 900 + [1] * 90 + [2] * 10
    drawn = np.array(labels)[list(ShardedSampler(len(labels), seed=0, weights=class_balanced_weights(labels)))]
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(share, 1 / 3, atol=0.04)  # vs 0.90 / 0.09 / 0.01 in the data
    plain = list(ShardedSampler(len(labels), seed=0))
    assert sorted(plain) == list(range(1000))  # a permutation: every image once
    shards = [list(ShardedSampler(len(labels), 0, rank=r, world=3)) for r in range(3)]
    assert [len(x) for x in shards] == [334] * 3 and set(sum(shards, [])) == set(range(1000))  # DDP: all covered


def test_mixup_in_the_collate_function_gives_soft_rows_the_losses_accept():
    torch.manual_seed(0)
    batch = [(torch.full((3, 4, 4), float(i)), i) for i in range(4)]
    assert train_collate(0.0, 4) is None  # off: the loader's default collate, class indices
    x, t = train_collate(0.2, 4)(batch)
    assert isinstance(train_collate(0.2, 4), MixUpCollate) and x.shape == (4, 3, 4, 4) and t.shape == (4, 4)
    lam = t[1, 1].item()  # torchvision pairs each image with the previous one: row i mixes labels i and i-1
    assert torch.allclose(t.sum(1), torch.ones(4)) and torch.allclose(t[1], torch.tensor([1 - lam, lam, 0, 0]))
    assert torch.allclose(x[1], torch.full((3, 4, 4), lam * 1 + (1 - lam) * 0))
    smoothed = soft_targets(t, 4, 0.1)  # smoothing after mixing equals mixing smoothed one-hot rows
    mixed = lam * soft_targets(torch.tensor([1]), 4, 0.1) + (1 - lam) * soft_targets(torch.tensor([0]), 4, 0.1)
    assert torch.allclose(smoothed[1], mixed[0])
    logits = torch.randn(4, 4)
    for kind, longtail in (("focal", "balanced_sampling"), ("ce", "effective_number"), ("ce", "balanced_softmax")):
        loss = build_loss(kind, 2.0, longtail, [0, 0, 1, 2, 3], 4, 0.999)(logits, smoothed)
        assert torch.isfinite(loss) and loss > 0


def test_effective_number_weights_follow_cui_et_al():
    counts = np.array([230, 12, 12, 3])
    w = effective_number_weights(counts, 0.999).numpy()
    raw = (1 - 0.999) / (1 - 0.999 ** counts)
    assert np.allclose(w, raw / raw.mean(), rtol=1e-5) and w.mean() == pytest.approx(1.0)
    assert w[3] > w[1] > w[0] and w[1] / w[0] == pytest.approx((1 - 0.999**230) / (1 - 0.999**12), rel=1e-5)


def test_losses_match_their_definitions():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    labels = [0] * 20 + [1] * 5 + [2] * 3 + [3] * 2
    t = soft_targets(y, 4)
    plain = build_loss("ce", 2.0, "none", labels, 4, 0.999)
    assert plain(logits, t) == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    smoothed = soft_targets(y, 4, 0.1)
    assert plain(logits, smoothed) == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-5)
    weighted = build_loss("ce", 0.0, "effective_number", labels, 4, 0.999)
    w = effective_number_weights(np.bincount(labels), 0.999)
    assert weighted(logits, t) == pytest.approx(F.cross_entropy(logits, y, weight=w).item(), rel=1e-5)
    balanced = build_loss("ce", 0.0, "balanced_softmax", labels, 4, 0.999)
    prior = torch.log(torch.tensor([20, 5, 3, 2]) / 30.0)
    assert torch.allclose(balanced.prior, prior)
    assert balanced(logits, t) == pytest.approx(F.cross_entropy(logits + prior, y).item(), rel=1e-5)
    assert balanced(logits, t) != pytest.approx(plain(logits, t).item(), rel=1e-3)
    focal = build_loss("focal", 2.0, "none", labels, 4, 0.999)
    p = logits.softmax(1)[torch.arange(16), y]
    assert focal(logits, t) == pytest.approx((-(1 - p) ** 2 * p.log()).mean().item(), rel=1e-5)
    assert focal(logits, t) < plain(logits, t)  # confident examples are down-weighted
    assert torch.allclose(log_prior(np.array([1, 3])), torch.log(torch.tensor([0.25, 0.75])))


def test_two_stage_schedule_opens_backbone_stages_from_the_top(tmp_path):
    a = load_attempt("A", load_config("bottle").classify)
    assert (a.epochs, a.freeze_epochs, a.unfreeze_every) == (30, 5, 3)
    short = load_attempt("A", load_config("bottle", overrides=["classify.epochs=6"]).classify)
    assert (short.epochs, short.freeze_epochs, short.unfreeze_every) == (6, 1, 1)  # the schedule scales with it
    assert [open_stages(a, e, 5) for e in (0, 4, 5, 7, 8, 11, 14, 17, 29)] == [0, 0, 1, 1, 2, 3, 4, 5, 5]
    model = build(a, 4, resolve_backbones(["resnet18"], tmp_path, True))
    model.open_stages(0)
    net = model.members[0].net
    assert all(p.requires_grad for p in net.fc.parameters())
    assert not any(p.requires_grad for p in net.layer4.parameters()) and not net.layer4.training
    model.open_stages(1)
    assert all(p.requires_grad for p in net.layer4.parameters()) and net.layer4.training
    assert not any(p.requires_grad for p in net.layer3.parameters()) and not net.bn1.training
    model.open_stages(5)
    assert all(p.requires_grad for p in net.parameters())
    groups = model.param_groups(1e-4, 1e-3)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3] and len(groups[1]["params"]) == 2  # fc weight and bias


def test_custom_head_and_ensemble_shapes(tmp_path):
    c = load_config("bottle", "tiny").classify
    b = load_attempt("B", c)
    head = build(b, 4, resolve_backbones(b.backbones, tmp_path, True)).members[0].net.fc
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    ens = load_attempt("C", c)
    model = build(ens, 4, resolve_backbones(ens.backbones, tmp_path, True)).eval()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 2, 4)  # (members, batch, classes)
    probs = model.probs(logits)
    assert torch.allclose(probs, (logits[0].softmax(-1) + logits[1].softmax(-1)) / 2) and torch.allclose(
        probs.sum(1), torch.ones(2))


def test_vit_loads_imagenet_state_at_another_image_size(tmp_path):
    import torchvision

    file = tmp_path / "vit.pth"
    torch.manual_seed(0)
    reference = torchvision.models.vit_b_16()
    torch.save(reference.state_dict(), file)
    member = Member("vit_b_16", Resolved(get_spec("vit_b_16"), file, "local", None), load_attempt(
        "D", load_config("bottle", "tiny").classify).head, 4, 32)
    assert member.net.encoder.pos_embedding.shape == (1, 1 + 4, 768)  # 2x2 patches + class token
    assert torch.equal(member.net.encoder.layers[0].mlp[0].weight, reference.encoder.layers[0].mlp[0].weight)


def test_greyscale_images_are_replicated_to_three_channels(tmp_path):
    root = tmp_path / "grey"
    synthesize("grid", root, size=40, train_good=1, test_good=1, test_per_defect=1, seed=0)
    image = next((root / "grid" / "train" / "good").glob("*.png"))
    x = ImageCache().get(image, 24)
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_cache_decodes_each_image_once(cls_dataset):
    data = load_labelled(cls_dataset)
    cache = ImageCache()
    for _ in range(3):
        for s in data.pool:
            cache.get(s.path, 32)
    assert (cache.misses, cache.hits) == (16, 32)


def test_unknown_backbone_names_the_file_and_key(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("backbones: [resnet19]\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: backbones: unknown backbone 'resnet19'.*resnet18"):
        load_attempts(_cfg(f"classify.attempts=[{bad}]").classify)
    bad.write_text("backbones: [resnet18]\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: learning_rate: unknown key"):
        load_attempts(_cfg(f"classify.attempts=[{bad}]").classify)
    with pytest.raises(ConfigError, match=r"no attempt 'Z' \(known: A, B, C, D"):
        load_attempts(_cfg("classify.attempts=[Z]").classify)


def test_unknown_class_and_bad_folds_fail_clearly():
    with pytest.raises(ConfigError, match=r"classify\.classes: bottle has no class 'scratch'"):
        _cfg("classify.classes=[good,scratch]")
    with pytest.raises(ConfigError, match=r"--set classify\.folds=2: classify\.folds: .*K >= 3"):
        _cfg("classify.folds=2")
    with pytest.raises(ConfigError, match=r"classify\.compare\.attempt: 'D' is not one of"):
        load_attempts(_cfg("classify.attempts=[A]", "classify.compare={attempt: D, longtail: balanced_softmax}").classify)


def test_class_subset_drops_other_images(cls_dataset, tmp_path):
    m = run_classify(_cfg("classify.attempts=[A]", "classify.classes=[good,contamination]"), cls_dataset, tmp_path / "o")
    assert m["classes"] == ["good", "contamination"] and m["images"]["labelled"] == 8
    assert np.array(m["attempts"][0]["split"]["test"]["confusion"]).shape == (2, 2)


def _ddp_worker(rank: int, world: int, port: int, dataset: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), PIPE_OFFLINE="1")
    torch.set_num_threads(1)
    d = distributed.init("cpu")
    a = load_attempt("A", load_config("bottle", "tiny", overrides=["classify.epochs=2", "classify.imgsz=32"]).classify)
    a = a.model_copy(update={"freeze_epochs": 1, "unfreeze_every": 1})  # re-wraps DDP when stages open
    data = load_labelled(Path(dataset))
    torch.manual_seed(0)
    model = build(a, 4, resolve_backbones(a.backbones, Path(out), True))
    fit(model, a, shared_split(data, True), data.classes, ImageCache(), Options("cpu", 0), d)
    torch.save(model.state_dict(), Path(out) / f"final{rank}.pt")
    distributed.shutdown(d)


def test_ddp_two_gloo_processes_end_identical(cls_dataset, tmp_path, free_port):
    mp.spawn(_ddp_worker, args=(2, free_port, str(cls_dataset), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"final{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    att = load_attempt("A", load_config("bottle", "tiny").classify)
    init = build(att, 4, resolve_backbones(att.backbones, tmp_path, True)).state_dict()
    assert not torch.equal(a["members.0.net.fc.weight"], init["members.0.net.fc.weight"])  # trained, in step
