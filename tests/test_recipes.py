"""Two recipes per training stage (fine-tuning, from scratch), chosen from the weights' provenance."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import trained_config
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.io import read_json
from pipeline.stages.classify import report as cls_report
from pipeline.stages.classify.attempts import load_attempt, load_attempts
from pipeline.stages.sam import run as sam_run
from pipeline.stages.sam.model import SamSource
from pipeline.stages.yolo import model as world
from pipeline.training import recipes
from pipeline.training.recipes import AUTO_PRETRAINED, AUTO_RANDOM, choose, with_scratch
from pipeline.weights import Resolved, get_spec


# --- the choice ---------------------------------------------------------------------------------------------

def test_auto_follows_the_weights_provenance():
    cfg = load_config("bottle")
    tuned = choose(cfg.yolo, pretrained=True)
    assert (tuned.name, tuned.why, tuned.changes) == ("finetune", AUTO_PRETRAINED, {})
    assert tuned.section is cfg.yolo and not tuned.random_init
    scratch = choose(cfg.yolo, pretrained=False)
    assert (scratch.name, scratch.why) == ("scratch", AUTO_RANDOM) and scratch.random_init
    y = scratch.section
    assert (y.scale, y.optimizer, y.lr0, y.cos_lr, y.weight_decay, y.patience) == ("n", "SGD", 0.01, False, 0.0005, 0)
    assert y.epochs > cfg.yolo.epochs and y.augment.close_mosaic == 10 and y.augment.mosaic == 1.0
    assert scratch.changes["lr0"] == [0.0002, 0.01] and scratch.changes["scale"] == [None, "n"]
    assert "augment.mosaic" not in scratch.changes  # unchanged keys are not listed
    assert scratch.record == {"name": "scratch", "why": AUTO_RANDOM, "changes": scratch.changes}
    assert scratch.line().startswith("yolo: scratch recipe (auto: random initialisation): ")
    sam = choose(cfg.sam, pretrained=False).section
    assert (sam.model, sam.lr, sam.loss.focal, sam.loss.dice, sam.loss.iou) == ("vit_tiny", 0.001, 1.0, 1.0, 1.0)


def test_forced_recipes_say_so_and_warn(said):
    heard = said("test.recipes")
    import logging

    log = logging.getLogger("test.recipes")
    forced = choose(load_config("bottle", overrides=["yolo.recipe=scratch"]).yolo, pretrained=True)
    assert (forced.name, forced.why) == ("scratch", "forced by yolo.recipe") and forced.unused_weights
    forced.announce(log)
    assert "NOT USED" in heard[-1] and "forced by yolo.recipe" in heard[-1]
    tuned = choose(load_config("bottle", overrides=["sam.recipe=finetune"]).sam, pretrained=False)
    assert (tuned.name, tuned.why, tuned.random_init) == ("finetune", "forced by sam.recipe", True)
    assert tuned.section.model == "vit_b" and tuned.section.lr == 0.0001  # the fine-tuning values, as asked
    tuned.announce(log)
    assert "RANDOMLY INITIALISED" in heard[-1] and "sam.recipe=auto" in heard[-1]


# --- the config ---------------------------------------------------------------------------------------------

def test_set_into_scratch_and_the_latest_layer_wins():
    cfg = load_config("bottle", overrides=["yolo.scratch.epochs=5"])
    assert cfg.yolo.epochs == 100 and with_scratch(cfg.yolo).epochs == 5
    # a key set in the section after the layer that set it in the scratch block holds for both recipes
    cfg = load_config("bottle", overrides=["yolo.epochs=7", "sam.loss.focal=3"])
    assert "epochs" not in cfg.yolo.scratch and with_scratch(cfg.yolo).epochs == 7
    assert with_scratch(cfg.sam).loss.model_dump() == {"focal": 3.0, "dice": 1.0, "iou": 1.0}
    both = load_config("bottle", overrides=["yolo.epochs=7", "yolo.scratch.epochs=5"])
    assert (both.yolo.epochs, with_scratch(both.yolo).epochs) == (7, 5)
    # a profile that sizes both recipes in one layer: its scratch values hold for the from-scratch one
    cpu = load_config("bottle", "cpu")
    assert (cpu.yolo.epochs, with_scratch(cpu.yolo).epochs, with_scratch(cpu.yolo).augment.close_mosaic) == (10, 30, 8)
    assert (cpu.sam.model, with_scratch(cpu.sam).model, with_scratch(cpu.sam).loss.focal) == ("vit_b", "vit_tiny", 1.0)
    assert (cpu.classify.epochs, with_scratch(cpu.classify).epochs, with_scratch(cpu.classify).imgsz) == (4, 12, 48)
    assert (cpu.sam.unfreeze_blocks, with_scratch(cpu.sam).unfreeze_blocks) == (0, 2)
    assert with_scratch(load_config("bottle", "full").sam).model == "vit_tiny"
    tiny = load_config("bottle", "tiny")  # test-sized whatever the recipe
    assert with_scratch(tiny.yolo).epochs == tiny.yolo.epochs == 2 and with_scratch(tiny.sam).model == "vit_tiny"


@pytest.mark.parametrize("override, where", [
    ("yolo.scratch.lr0=-1", "yolo.scratch.lr0: "),
    ("yolo.scratch.lrr=0.1", "yolo.scratch.lrr: unknown key"),
    ("yolo.scratch.scale=q", "yolo.scratch.scale: "),
    ("yolo.scratch.augment.mosaic=2", "yolo.scratch.augment.mosaic: "),
    ("sam.scratch.model=vit_q", "sam.scratch.model: "),
    ("classify.scratch.folds=3", "classify.scratch.folds: the from-scratch recipe changes only epochs, imgsz,"),
    ("classify.scratch.epochs=0", "classify.scratch.epochs: "),
    ("yolo.scratch.recipe=finetune", "yolo.scratch.recipe: a scratch block holds the section's own settings"),
    ("sam.scratch.scratch={lr: 1}", "sam.scratch.scratch: "),
    ("yolo.recipe=maybe", "yolo.recipe: "),
])
def test_bad_scratch_keys_are_one_line_errors_naming_the_key(override, where):
    with pytest.raises(ConfigError) as e:
        load_config("bottle", overrides=[override])
    msg = str(e.value)
    assert msg.startswith(f"--set {override}: {where}") and "\n" not in msg


def test_bad_scratch_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sam:\n  scratch:\n    lr: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: sam\.scratch\.lr: .*greater than 0"):
        load_config("bottle", files=[bad])


# --- YOLO: the scale actually built -------------------------------------------------------------------------

def test_yolo_scratch_builds_the_smaller_scale_from_its_yaml(tmp_path):
    spec = get_spec("yolov8s-worldv2")
    absent = Resolved(spec, None, "random-init", None)
    built, record = world.start(absent, True, "n")
    assert world.source(built) == "yolov8n-worldv2.yaml" and built.spec.name == "yolov8n-worldv2"
    assert record["scale"] == "n" and record["built_from"] == "yolov8n-worldv2.yaml" and record["pretrained"] is False
    assert record["name"] == "yolov8n-worldv2" and "note" not in record
    own, record = world.start(absent, True, None)
    assert world.source(own) == "yolov8s-worldv2.yaml" and record["scale"] == "s"
    present = Resolved(spec, tmp_path / spec.filename, "local", "ab" * 32)
    kept, record = world.start(present, False, None)
    assert kept is present and record["scale"] == "s" and record["pretrained"] is True
    unused, record = world.start(present, True, "n", "forced by yolo.recipe")
    assert unused.path is None and record["source"] == "random-init" and "not used: forced by yolo.recipe" in record["note"]
    model = world.load("yolov8n-worldv2.yaml")  # ultralytics reads the scale from the file name
    assert model.yaml["scale"] == "n" and model.model[0].conv.out_channels == 16  # 64 x width 0.25


def test_yolo_scratch_reaches_the_trainer(converted_dataset, tmp_path):
    from pipeline.stages.yolo.data import prepare
    from pipeline.stages.yolo.prompts import TextEmbeddings, class_prompts, fallback_vector
    from pipeline.stages.yolo.run import train_overrides

    cfg = load_config("bottle", "tiny")
    recipe = choose(cfg.yolo, pretrained=False)
    cfg = cfg.model_copy(update={"yolo": recipe.section})
    prompts = class_prompts(cfg.classes, ("broken_large", "broken_small", "contamination"))
    emb = TextEmbeddings({p: fallback_vector(p) for ps in prompts.values() for p in ps}, "deterministic-fallback",
                         None, None)
    det = prepare(converted_dataset, tmp_path, prompts, emb)
    built, _ = world.start(Resolved(get_spec(cfg.yolo.model), None, "random-init", None), True, cfg.yolo.scale)
    args = train_overrides(cfg, det, built, tmp_path, "cpu")
    assert (args["model"], args["pretrained"], args["optimizer"], args["lr0"], args["cos_lr"]) == (
        "yolov8n-worldv2.yaml", False, "SGD", 0.01, False)
    assert args["epochs"] == 2  # the tiny profile's, set after the defaults: it holds for both recipes


# --- SAM: the configured model is asked first ---------------------------------------------------------------

def _found(pretrained: bool) -> SamSource:
    return SamSource("vit_b", Path("weights/sam_vit_b_01ec64.pth") if pretrained else None,
                     {"name": "sam_vit_b", "source": "local" if pretrained else "random-init", "pretrained": pretrained,
                      "sha256": "cd" * 32 if pretrained else None, "seed": 0})


def test_sam_without_its_checkpoint_trains_the_tiny_model_from_scratch(monkeypatch):
    asked = []
    monkeypatch.setattr(sam_run, "locate", lambda arch, *a: asked.append(arch) or _found(False))
    recipe, source = sam_run.starting_point(load_config("bottle", overrides=["allow_random_init=true"]))
    assert asked == ["vit_b"] and recipe.name == "scratch" and recipe.changes["model"] == ["vit_b", "vit_tiny"]
    assert source.arch == "vit_tiny" and source.checkpoint is None and source.provenance["name"] == "sam_vit_tiny"


def test_sam_with_its_checkpoint_fine_tunes_it_unless_scratch_is_forced(monkeypatch):
    monkeypatch.setattr(sam_run, "locate", lambda arch, *a: _found(True))
    recipe, source = sam_run.starting_point(load_config("bottle"))
    assert recipe.name == "finetune" and source.checkpoint is not None and recipe.section.model == "vit_b"
    recipe, source = sam_run.starting_point(load_config("bottle", overrides=["sam.recipe=scratch"]))
    assert recipe.unused_weights and source.arch == "vit_tiny" and source.checkpoint is None
    assert "not used: forced by sam.recipe" in source.provenance["note"]
    recipe, source = sam_run.starting_point(load_config("bottle", overrides=["sam.recipe=scratch",
                                                                            "sam.scratch.model=vit_b"]))
    assert source.arch == "vit_b" and source.checkpoint is None and source.provenance["pretrained"] is False
    assert source.key != _found(True).key  # random vit_b embeddings are cached apart from pretrained ones


# --- classification: each attempt's from-scratch variant ----------------------------------------------------

def test_attempts_keep_their_identity_from_scratch():
    c = load_config("bottle").classify
    for name in ("A", "B", "C", "D"):
        tuned, scratch = load_attempt(name, c), load_attempt(name, c, scratch=True)
        assert (tuned.recipe, scratch.recipe) == ("finetune", "scratch")
        same = ("backbones", "head", "scheduler", "loss", "augment", "mixup", "longtail", "name", "id")
        assert all(getattr(tuned, k) == getattr(scratch, k) for k in same), name
        assert (scratch.freeze_epochs, scratch.unfreeze_every) == (0, 0) and scratch.epochs > tuned.epochs
        assert scratch.lr_backbone == scratch.lr_head
    assert load_attempt("A", c, scratch=True).lr_head == 0.001 and load_attempt("D", c, scratch=True).lr_head == 0.0005
    r = choose(load_attempt("A", c), False, key="classify", mode=c.recipe, scratch=load_attempt("A", c, scratch=True))
    assert r.changes["freeze_epochs"] == [5, 0] and r.changes["lr_backbone"] == [0.0001, 0.001]
    assert "recipe" not in r.changes and r.section.hyperparameters()["recipe"] == "scratch"
    # an attempt's own ``recipe`` says which variant it is, not how to choose: without a mode, auto
    assert choose(load_attempt("A", c), True, key="classify").why == AUTO_PRETRAINED
    # run-wide overrides come after the scratch block; classify.scratch sizes the from-scratch runs
    cpu = load_config("bottle", "cpu").classify
    assert (load_attempt("A", cpu).epochs, load_attempt("A", cpu, scratch=True).epochs) == (4, 12)


def test_vit_attempt_from_scratch_is_a_smaller_vit_and_the_table_says_so(tmp_path):
    import torch
    from torchvision.models.vision_transformer import VisionTransformer

    from pipeline.stages.classify.models import build

    c = load_config("bottle", "cpu").classify
    tuned, scratch = load_attempt("D", c), load_attempt("D", c, scratch=True)
    assert tuned.vit is None and tuned.hyperparameters()["backbone"] == "vit_b_16"
    assert scratch.hyperparameters()["backbone"] == "ViT/8 (6 layers, width 192)"
    r = choose(tuned, False, key="classify", mode="auto", scratch=scratch)
    assert r.changes["vit.patch_size"] == [None, 8] and r.changes["vit.num_layers"] == [None, 6]
    random = {"vit_b_16": Resolved(get_spec("vit_b_16"), None, "random-init", None)}
    model = build(scratch, 4, random)
    net = model.members[0].net
    assert isinstance(net, VisionTransformer) and len(net.encoder.layers) == 6 and net.hidden_dim == 192
    assert model(torch.zeros(2, 3, scratch.imgsz, scratch.imgsz)).shape == (1, 2, 4)
    # ImageNet weights exist for ViT-B/16 only: a scale outside a scratch block, on another backbone, or at a size
    # that is not a multiple of its patch is refused before training, naming the file
    for text, where in (("backbones: [vit_b_16]\nvit: {patch_size: 8, num_layers: 1, num_heads: 1, hidden_dim: 8, "
                         "mlp_dim: 8}\n", "vit: a scaled ViT has no ImageNet weights"),
                        ("backbones: [resnet18]\nscratch: {vit: {patch_size: 8, num_layers: 1, num_heads: 1, "
                         "hidden_dim: 8, mlp_dim: 8}}\n", "scratch: vit: scales vit_b_16"),
                        ("backbones: [vit_b_16]\nimgsz: 64\nscratch: {imgsz: 60, vit: {patch_size: 8, num_layers: 1, "
                         "num_heads: 1, hidden_dim: 8, mlp_dim: 8}}\n",
                         "scratch: imgsz 60: vit_b_16 needs a multiple of its patch size 8")):
        f = tmp_path / "vit.yaml"
        f.write_text("name: mine\n" + text)
        with pytest.raises(ConfigError) as e:
            cfg = load_config("bottle", overrides=[f"classify.attempts=[{f}]", "classify.compare=null"])
            load_attempts(cfg.classify)
        assert str(e.value).startswith(f"{f}: ") and where in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_bad_attempt_scratch_blocks_are_one_line_errors(tmp_path):
    for block, where in (("{lr_head: -1}", "scratch.lr_head: "), ("{backbones: [resnet50]}", "scratch.backbones: "),
                         ("{lr_hed: 1}", "scratch.lr_hed: unknown key")):
        f = tmp_path / "mine.yaml"
        f.write_text(f"name: mine\nscratch: {block}\n")
        with pytest.raises(ConfigError) as e:
            load_attempts(load_config("bottle", overrides=[f"classify.attempts=[{f}]"]).classify)
        assert str(e.value).startswith(f"{f}: {where}") and "\n" not in str(e.value)


def test_attempts_table_shows_the_recipe_and_what_it_changed():
    hyper = {"imgsz": 32, "epochs": 2, "lr_backbone": 0.001, "lr_head": 0.001, "optimizer": "AdamW", "batch": 4,
             "backbone": "resnet18"}
    split = {"best_epoch": 1, "train": {"epoch_loss": 1.0, "epoch_acc": 0.5}, "val": {"loss": 1.0, "accuracy": 0.5},
             "test": {"accuracy": 0.5, "macro_f1": 0.4}}
    weights = [{"pretrained": False, "enum": "ResNet18_Weights.IMAGENET1K_V1"}]
    rows = cls_report.attempts_rows([
        {"id": "A", "hyperparameters": hyper, "split": split, "weights": weights,
         "recipe": {"name": "scratch", "why": AUTO_RANDOM, "changes": {"freeze_epochs": [5, 0], "lr_backbone": [0.0001, 0.001]}}},
        {"id": "B", "hyperparameters": hyper, "split": split, "weights": weights,
         "recipe": {"name": "finetune", "why": AUTO_PRETRAINED, "changes": {}}}])
    header, (a, b) = rows
    assert header[1] == "recipe" and a[1] == "scratch (freeze_epochs 5 → 0, lr_backbone 0.0001 → 0.001)"
    assert b[1] == "finetune"


# --- the stages record it, the report shows it ----------------------------------------------------------------

def test_every_training_stage_records_its_recipe_and_the_report_shows_it(trained_runs, tmp_path):
    runs = trained_runs / "runs" / "bottle"
    for stage in ("yolo", "sam", "classify"):
        m = read_json(runs / stage / "metrics.json")
        assert m["recipe"]["name"] == "scratch" and m["recipe"]["why"] == AUTO_RANDOM, stage
        assert m["config"][stage]["recipe"] == "auto"
    y = read_json(runs / "yolo" / "metrics.json")
    assert y["weights"]["name"] == "yolov8n-worldv2" and y["weights"]["scale"] == "n"
    assert y["config"]["yolo"]["optimizer"] == "SGD"  # the settings that trained, as recorded
    assert [r["epoch"] for r in y["train"]["history"]] == [1, 2] and "val_map50" in y["train"]["history"][0]
    s = read_json(runs / "sam" / "metrics.json")
    assert s["config"]["sam"]["model"] == s["weights"]["name"].removeprefix("sam_") == "vit_tiny"
    c = read_json(runs / "classify" / "metrics.json")
    assert set(c["recipe"]["changes"]) == {a["id"] for a in c["attempts"]}
    assert all(a["recipe"]["name"] == "scratch" for a in c["attempts"])

    from pipeline.report.build import build_report

    root = tmp_path / "copy"
    shutil.copytree(trained_runs, root)
    summary = build_report(trained_config(root), tmp_path / "report")
    assert summary["recipes"] == {"yolo": "scratch", "sam": "scratch", "classify": "scratch"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.count("Recipe: **from scratch** (auto: random initialisation)") == 3
    assert "built from `yolov8n-worldv2.yaml`" in md and "| recipe |" in md
    for stage in ("yolo", "sam", "classify"):
        figure = tmp_path / "report" / "figures" / f"curves_{stage}.png"
        assert figure.stat().st_size > 1000 and f"figures/curves_{stage}.png" in md


def test_recipe_names_the_config_key_of_each_section():
    cfg = load_config("bottle")
    assert [recipes.choose(s, False).key for s in (cfg.yolo, cfg.sam, cfg.classify)] == ["yolo", "sam", "classify"]
