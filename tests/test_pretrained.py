"""The pretrained path end to end: every stage loads weight files in the publishers' own formats from ``weights/``.

The files come from ``weights_factory`` (the released formats, random values, built once per session) with the
verification stamp the registry writes, and nothing may fall back to a random initialisation
(``allow_random_init=false``). Each stage then runs on a tiny converted category and its ``metrics.json`` must
say that it loaded them: source ``local``, ``pretrained: true``, no untrained-weights caveat. The YOLO stage's
class prompts must go through ``clip.load`` itself, from the TorchScript release and from a plain state_dict.

SAM ViT-B encodes 1024 px images (seconds each on a CPU), so its case runs on a one-defect-class synthetic
category (toothbrush: one image per split) and shares its embedding cache with the no-network run below, which
uses the same images and the same checkpoint: the session encodes each image once.

No network at run time: with every weight file in ``weights/``, ``pipe all`` never opens a socket. That run is a
fresh ``pipe`` process, as a user starts it: no ``PIPE_OFFLINE``, not under pytest (ultralytics behaves
differently when it sees pytest), an empty ultralytics config folder (no font downloaded yet). A guard installed
before anything is imported makes every DNS lookup and every internet connection fail with an error naming the
host and records it, so whatever tries to reach the network -- ultralytics' import-time online check, its font
download, a weight download -- shows up, even where the caller swallows the error.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import load_config
from pipeline.io import read_json
from pipeline.provenance import STAND_IN_TEXT_EMBEDDINGS, UNTRAINED
from pipeline.weights import REGISTRY, resolve
from weights_factory import WeightStore

# The tiny profile, made to need pretrained weights, and cut to one epoch of each stage.
SETS = ("allow_random_init=false", "yolo.epochs=1", "sam.model=vit_b", "sam.epochs=1", "sam.views=1",
        "sam.overlays=1", "classify.attempts=[A]", "classify.folds=0", "classify.compare=null", "classify.epochs=1")
# The SAM case's category: one defect class, three defect images, so each split holds one.
SAM_SYNTH = dict(size=64, train_good=2, test_good=1, test_per_defect=3, seed=0)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> WeightStore:
    """The publisher-format files, each built on first use and then shared by every test of the session."""
    return WeightStore(tmp_path_factory.mktemp("pretrained-store"))


@pytest.fixture(scope="session")
def sam_cache(tmp_path_factory) -> Path:
    """SAM's image-embedding cache, shared by the SAM case and the no-network run (keyed by image and checkpoint
    content, so sharing changes no number, only how often ViT-B encodes an image)."""
    return tmp_path_factory.mktemp("sam-cache")


@pytest.fixture(scope="session")
def toothbrush_dataset(tmp_path_factory) -> Path:
    """The synthetic toothbrush (``SAM_SYNTH``) converted as ``pipe convert`` does (shared: do not modify)."""
    from pipeline.convert.instances import ConvertParams
    from pipeline.convert.run import run_convert
    from pipeline.data.layout import load_category
    from pipeline.data.synth import synthesize
    from pipeline.device import environment

    root = tmp_path_factory.mktemp("toothbrush")
    synthesize("toothbrush", root / "synthetic", **SAM_SYNTH)
    out = root / "datasets" / "toothbrush"
    run_convert(load_category(root / "synthetic", "toothbrush"), out, ConvertParams(),
                {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0, environment=environment("cpu"))
    return out


@pytest.fixture
def clip_calls(monkeypatch) -> list[tuple[str, dict[str, Any]]]:
    """Every ``clip.load(name, **kwargs)`` call during the test (the real one still runs)."""
    import clip

    calls: list[tuple[str, dict[str, Any]]] = []
    real = clip.load

    def spy(name, *args, **kwargs):
        calls.append((str(name), kwargs))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(clip, "load", spy)
    return calls


@pytest.fixture
def reads(monkeypatch) -> set[Path]:
    """Every path this process opens through ``open`` during the test: torch.load of a path, and segment-anything's
    own ``open(checkpoint)``, go through it (``torch.jit.load`` does not: CLIP is seen through ``clip_calls``)."""
    seen: set[Path] = set()
    real = builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            seen.add(Path(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    return seen


def pretrained_config(category: str, root: Path, weights: Path, *sets: str):
    return load_config(category, "tiny", overrides=[f"paths.runs={root / 'runs'}", f"paths.weights={weights}",
                                                    *SETS, *sets])


def assert_pretrained(metrics: dict[str, Any], records: list[dict[str, Any]], names: list[str], weights: Path) -> None:
    """The stage's own weights records and its provenance block both say: these files, loaded from weights/."""
    assert sorted(r["name"] for r in records) == sorted(names)
    for r in records:
        assert r["source"] == "local" and r["pretrained"] is True, r
        assert Path(r["file"]).parent == weights and r["sha256"], r
    block = metrics["provenance"]
    assert sorted(w["name"] for w in block["weights"]) == sorted(names)
    assert all(w["pretrained"] is True and w["source"] == "local" for w in block["weights"]), block
    assert not [c for c in block["caveats"] if c.startswith(UNTRAINED)], block["caveats"]
    assert STAND_IN_TEXT_EMBEDDINGS not in block["caveats"]


# --- one case per stage -------------------------------------------------------------------------------------


def _yolo(cfg, dataset: Path, out: Path) -> dict[str, Any]:
    from pipeline.stages.yolo.run import run_finetune_yolo

    return run_finetune_yolo(cfg, dataset, out)


def _sam(cfg, dataset: Path, out: Path) -> dict[str, Any]:
    from pipeline.stages.sam.run import run_finetune_sam

    return run_finetune_sam(cfg, dataset, out)


def _classify(cfg, dataset: Path, out: Path) -> dict[str, Any]:
    from pipeline.stages.classify.run import run_classify

    return run_classify(cfg, dataset, out)


def _anomaly(cfg, dataset: Path, out: Path) -> dict[str, Any]:
    from pipeline.stages.anomaly.run import run_anomaly

    return run_anomaly(cfg, dataset, out)


@dataclass(frozen=True)
class Case:
    """One stage: what it needs in weights/, how to run it, and where its metrics record its weights.

    ``recipe``: what a training stage must choose with its pretrained weights present (the anomaly stage trains
    nothing, so it has none).
    """

    stage: str
    files: tuple[str, ...]  # registry names placed in weights/
    run: Callable[[Any, Path, Path], dict[str, Any]]
    records: Callable[[dict[str, Any]], list[dict[str, Any]]]  # the stage's own weights records
    text_path: bool = False  # the YOLO-World class prompts go through CLIP
    dataset: str = "converted_dataset"  # the fixture holding its converted category
    recipe: str | None = "finetune"


CASES = [
    Case("yolo", ("yolov8s-worldv2", "clip_vit_b32"), _yolo, lambda m: [m["weights"]], text_path=True),
    Case("sam", ("sam_vit_b",), _sam, lambda m: [m["weights"]], dataset="toothbrush_dataset"),
    Case("classify", ("resnet18",), _classify, lambda m: [w for a in m["attempts"] for w in a["weights"]]),
    Case("anomaly", ("resnet18",), _anomaly, lambda m: [m["weights"]], recipe=None),
]


@pytest.mark.parametrize("case", CASES, ids=[c.stage for c in CASES])
def test_stage_loads_the_published_files(case, store, clip_calls, reads, sam_cache, request, tmp_path):
    """The stage reads the files from weights/ (nothing falls back: random init is not allowed) and its metrics
    say so: source local, pretrained, no untrained-weights caveat; YOLO's prompts went through ``clip.load``."""
    dataset = request.getfixturevalue(case.dataset)
    weights = store.place(tmp_path / "weights", *case.files)
    cfg = pretrained_config(dataset.name, tmp_path, weights, f"sam.cache_dir={sam_cache}")
    metrics = case.run(cfg, dataset, tmp_path / "runs" / dataset.name / case.stage)
    model_files = [n for n in case.files if n != "clip_vit_b32"]  # CLIP only encodes the prompts
    assert {weights / REGISTRY[n].filename for n in model_files} <= reads  # loaded, not only recorded
    assert_pretrained(metrics, case.records(metrics), model_files, weights)
    if case.recipe:  # chosen from the weights' provenance, not forced
        assert (metrics["recipe"]["name"], metrics["recipe"]["why"]) == (case.recipe, "auto: pretrained weights present")
        assert all(a["recipe"]["name"] == case.recipe for a in metrics.get("attempts", []))
    else:
        assert "recipe" not in metrics
    if case.text_path:
        text = metrics["text_embeddings"]
        assert text["source"] == "clip" and text["meaningful"] is True
        assert Path(text["file"]) == weights / REGISTRY["clip_vit_b32"].filename
        assert [(name, kwargs.get("jit")) for name, kwargs in clip_calls] == [(text["file"], False)]
    else:
        assert clip_calls == []


def test_clip_text_path_reads_a_plain_state_dict_as_the_torchscript_release(store, clip_calls, tmp_path):
    """``clip.load`` takes OpenAI's TorchScript archive and a plain state_dict of the same weights: both give the
    same prompt embeddings, through ``clip`` itself."""
    from pipeline.stages.yolo.prompts import load_text_embeddings

    phrases = ["broken bottle rim", "chipped glass"]
    script = load_text_embeddings(phrases, store.place(tmp_path / "script", "clip_vit_b32"))
    plain = load_text_embeddings(phrases, store.place(tmp_path / "plain", "clip_vit_b32", variant="state_dict"))
    assert script.source == plain.source == "clip"
    assert [Path(name).parent.name for name, _ in clip_calls] == ["script", "plain"]
    assert all(kwargs.get("jit") is False for _, kwargs in clip_calls)
    for p in phrases:
        assert torch.equal(script.phrases[p], plain.phrases[p])
        assert abs(float(script.phrases[p].norm()) - 1) < 1e-4


def test_factory_writes_what_the_publishers_release(store):
    """The files the stages were given have the released shapes (the random values are the only difference)."""
    from ultralytics.utils.patches import torch_load

    from pipeline.weights import archive_format, get_spec
    from weights_factory import YOLO_RELEASE_KEYS

    ckpt = torch_load(store.get("yolov8s-worldv2")[0], map_location="cpu")
    assert tuple(ckpt) == YOLO_RELEASE_KEYS
    assert (ckpt["epoch"], ckpt["optimizer"], ckpt["ema"], ckpt["updates"]) == (-1, None, None, None)
    model = ckpt["model"]
    assert type(model).__name__ == "WorldModel" and isinstance(model.args, dict) and len(model.names) == 80
    assert all(p.dtype == torch.float16 and not p.requires_grad for p in model.parameters())
    for name, variant, kind in (("yolov8s-worldv2", None, "torch.save zip"), ("sam_vit_b", None, "torch.save zip"),
                                ("clip_vit_b32", None, "torchscript zip"),
                                ("clip_vit_b32", "state_dict", "torch.save zip"), ("resnet18", None, "torch.save zip")):
        assert archive_format(get_spec(name), store.get(name, variant)[0]) == kind, (name, variant)


TORCHVISION = sorted(n for n, s in REGISTRY.items() if s.family == "torchvision")


@pytest.mark.parametrize("name", TORCHVISION)
def test_every_torchvision_backbone_loads_its_published_state_dict(name, store, tmp_path):
    """Each torchvision entry of the registry, in download.pytorch.org's format, loads into the builder of every
    stage that names it (the classifier's members and PatchCore's extractor), strictly."""
    from pipeline.stages.anomaly.model import BACKBONES as ANOMALY, build_backbone
    from pipeline.stages.classify.attempts import Head
    from pipeline.stages.classify.models import BACKBONES as CLASSIFY, Member

    users = [n for n in (name in CLASSIFY and "classify", name in ANOMALY and "anomaly") if n]
    assert users, f"{name}: in the registry but no stage builds it"
    weights = store.place(tmp_path / "weights", name)
    r = resolve(name, weights)
    assert r.source == "local" and r.provenance["pretrained"] is True
    saved = torch.load(r.path, map_location="cpu", weights_only=True)
    if "classify" in users:
        member = Member(name, r, Head(kind="linear", hidden=8, dropout=0.0), classes=3, imgsz=224)
        head = CLASSIFY[name].head
        for key, value in member.net.state_dict().items():
            if not key.startswith(head + "."):
                assert torch.equal(value, saved[key]), key
    if "anomaly" in users:
        net = build_backbone(name, r.path, seed=1)
        assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())


# --- no network at run time ---------------------------------------------------------------------------------

# Runs in the child before the CLI is imported: every attempt is appended to $PIPE_TEST_SOCKETS, then refused.
GUARD = r"""
import json, os, socket, sys, traceback

LOG = os.environ["PIPE_TEST_SOCKETS"]
INET = {socket.AF_INET, socket.AF_INET6}

def _refuse(kind, host):
    with open(LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"kind": kind, "host": str(host),
                             "stack": traceback.format_stack(limit=40)[:-2]}) + "\n")
    raise OSError(f"network blocked by the test: {kind} {host}")

def connect(self, address, _real=socket.socket.connect):
    if self.family in INET:
        _refuse("connect", address)
    return _real(self, address)

def connect_ex(self, address, _real=socket.socket.connect_ex):
    if self.family in INET:
        _refuse("connect_ex", address)
    return _real(self, address)

def create_connection(address, *args, **kwargs):
    _refuse("create_connection", address)

def getaddrinfo(host, *args, **kwargs):
    _refuse("getaddrinfo", host)

socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
socket.create_connection, socket.getaddrinfo = create_connection, getaddrinfo

sys.argv = ["pipe", *sys.argv[1:]]
from pipeline.cli import main
main()
"""


def test_ultralytics_downloads_nothing_while_offline(monkeypatch, tmp_path):
    """``pipeline.stages.yolo.offline`` in this process: ultralytics' font fetch (its dataset check) and asset
    download (its AMP check on CUDA) give up without a connection while YOLO_OFFLINE is set, and go back to the
    network when the user sets YOLO_OFFLINE=0."""
    from pipeline.stages.yolo import offline

    offline.no_downloads()
    from ultralytics import YOLO
    from ultralytics.utils import checks, downloads

    tried: list[Any] = []

    def refuse(*args, **kwargs):
        tried.append(args[:2])
        raise OSError("network blocked by the test")

    for owner, name in ((socket, "getaddrinfo"), (socket, "create_connection"), (socket.socket, "connect")):
        monkeypatch.setattr(owner, name, refuse)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    assert checks.check_font("pipe-no-such-font.ttf") is None  # ultralytics would ask github.com for it
    with pytest.raises(ConnectionError, match="YOLO_OFFLINE"):  # check_amp (CUDA) takes it for "offline": AMP on
        YOLO(tmp_path / "yolo26n.pt")  # what check_amp loads on CUDA
    assert not tried and not (tmp_path / "yolo26n.pt").exists()
    monkeypatch.setenv("YOLO_OFFLINE", "0")
    assert downloads.is_url("https://github.com/ultralytics/assets", check=True) is False  # asked, and refused
    assert tried


def test_pipe_all_opens_no_socket_with_every_weight_local(store, sam_cache, tmp_path):
    """``pipe all`` in a fresh process, as a user runs it, with every weight file local and every socket refused:
    it succeeds, tried no connection and no DNS lookup, and every stage used the local pretrained files."""
    weights = store.place(tmp_path / "weights", "yolov8s-worldv2", "clip_vit_b32", "sam_vit_b", "resnet18")
    runs, attempts = tmp_path / "runs", tmp_path / "sockets.jsonl"
    sets = [f"paths.runs={runs}", f"paths.datasets={tmp_path / 'ds'}", f"paths.weights={weights}",
            f"data.synthetic_root={tmp_path / 'synth'}", f"data.root={tmp_path / 'mvtec'}",
            f"sam.cache_dir={sam_cache}", *SETS, *(f"synth.{k}={v}" for k, v in SAM_SYNTH.items())]
    env = {k: v for k, v in os.environ.items()
           if k not in {"PIPE_OFFLINE", "PYTEST_CURRENT_TEST", "MVTEC_ROOT", "YOLO_OFFLINE"}}
    env.update(PIPE_TEST_SOCKETS=str(attempts), YOLO_CONFIG_DIR=str(tmp_path / "ultralytics-config"),
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    args = ["all", "toothbrush", "--fallback-synthetic", "-p", "tiny", *(a for s in sets for a in ("--set", s))]
    run = subprocess.run([sys.executable, "-c", GUARD, *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    (tmp_path / "pipe.log").write_text(run.stdout + run.stderr)
    tried = [json.loads(line) for line in attempts.read_text().splitlines()] if attempts.exists() else []
    assert not tried, "\n".join(f"{t['kind']} {t['host']}\n{''.join(t['stack'])}" for t in tried)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    stage = runs / "toothbrush"
    for name, files in (("yolo", ["yolov8s-worldv2"]), ("sam", ["sam_vit_b"]), ("classify", ["resnet18"]),
                        ("anomaly", ["resnet18"])):
        block = read_json(stage / name / "metrics.json")["provenance"]
        assert [(w["name"], w["source"], w["pretrained"]) for w in block["weights"]] == \
            [(f, "local", True) for f in files], (name, block)
    assert read_json(stage / "yolo" / "metrics.json")["text_embeddings"]["source"] == "clip"
    assert (stage / "report.md").is_file()
