import dataclasses
import hashlib
import io
import json
import warnings
import zipfile

import pytest
import torch

from pipeline import weights
from pipeline.errors import WeightsError
from pipeline.fetch import FetchError, verify

# one registry entry per family, and the archive format its official file has
FAMILIES = {"yolo-world": ("yolov8s-worldv2", "torch.save zip"), "sam": ("sam_vit_b", "torch.save zip"),
            "clip": ("clip_vit_b32", "torchscript zip"), "torchvision": ("resnet50", "torch.save zip")}


def checkpoint(family: str, legacy: bool = False) -> bytes:
    """A small valid file in the format the family's official weights come in."""
    torch.manual_seed(0)
    net = torch.nn.Linear(32, 32)
    buf = io.BytesIO()
    if family == "clip":  # OpenAI ships a TorchScript archive
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.script(net), buf)
    elif family == "yolo-world":  # shaped like an Ultralytics release checkpoint
        torch.save({"model": net, "ema": None, "epoch": -1, "train_args": {"imgsz": 640}, "date": "2024-01-01"}, buf)
    else:
        torch.save(net.state_dict(), buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def unchecked(monkeypatch, name: str) -> weights.WeightSpec:
    """The registry entry ``name`` without its published checksum, so that generated files can pass."""
    spec = dataclasses.replace(weights.REGISTRY[name], sha256=None, md5=None, sha256_prefix=None)
    monkeypatch.setitem(weights.REGISTRY, name, spec)
    return spec


def stamp_of(path) -> dict:
    return json.loads(path.with_name(f".{path.name}.verified.json").read_text())


@pytest.fixture
def toy(monkeypatch, tmp_path):
    payload = checkpoint("sam")
    spec = weights.WeightSpec("toy", "sam", "toy.pth", "http://pipe-test.invalid/toy.pth",
                              md5=hashlib.md5(payload).hexdigest(), arch="vit_b")
    monkeypatch.setitem(weights.REGISTRY, "toy", spec)
    return spec, payload


def test_registry_knows_the_official_models():
    for name in ["yolov8s-worldv2", "yolov8x-worldv2", "sam_vit_b", "sam_vit_h", "resnet50", "vit_b_16", "clip_vit_b32"]:
        assert name in weights.REGISTRY
    assert weights.REGISTRY["sam_vit_b"].md5 == "01ec64d29a2fca3f0661936605ae66f8"
    assert weights.REGISTRY["resnet50"].enum == "ResNet50_Weights.IMAGENET1K_V2"
    assert weights.REGISTRY["resnet50"].sha256_prefix == "11ad3fa6"


def test_torchvision_entries_match_torchvision():
    from torchvision.models import get_weight

    for spec in weights.REGISTRY.values():
        if spec.family == "torchvision":
            assert get_weight(spec.enum).url == spec.url


def test_local_file_is_verified(toy, tmp_path):
    spec, payload = toy
    (tmp_path / "toy.pth").write_bytes(payload)
    r = weights.resolve("toy", tmp_path)
    assert r.source == "local" and r.sha256 == hashlib.sha256(payload).hexdigest()
    assert r.provenance["pretrained"] is True and r.provenance["published_checksum"].startswith("md5:")


def test_corrupt_local_file_is_refused(toy, tmp_path):
    (tmp_path / "toy.pth").write_bytes(checkpoint("yolo-world"))  # loadable, but not the published file
    with pytest.raises(WeightsError, match="md5 .* does not match the published") as exc:
        weights.resolve("toy", tmp_path)
    assert "\n" not in str(exc.value) and "pipe weights fetch toy" in str(exc.value)
    assert not (tmp_path / ".toy.pth.verified.json").exists()


def test_missing_without_permission_is_an_error(toy, tmp_path):
    with pytest.raises(WeightsError) as exc:
        weights.resolve("toy", tmp_path)
    msg = str(exc.value)
    assert "toy.pth" in msg and "--allow-random-init" in msg and "pipe-test.invalid" in msg


def test_random_init_only_when_allowed_and_recorded(toy, tmp_path, capsys):
    r = weights.resolve("toy", tmp_path, allow_random_init=True)
    assert r.random_init and r.provenance == {**r.provenance, "source": "random-init", "pretrained": False, "file": None}
    assert "RANDOM INITIALISATION" in capsys.readouterr().err


def test_unknown_model():
    with pytest.raises(WeightsError, match="unknown model 'yolo9000'"):
        weights.resolve("yolo9000")


def test_verify_prefix(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    assert verify(f, sha256_prefix=digest[:8]) == digest
    with pytest.raises(Exception, match="does not start with"):
        verify(f, sha256_prefix="00000000")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("damage", ["empty", "truncated", "html"])
def test_unloadable_file_is_one_line_for_every_family(family, damage, tmp_path):
    """Run on the real registry entries: the archive check comes before (and without) any checksum."""
    name, _ = FAMILIES[family]
    spec = weights.REGISTRY[name]
    path = tmp_path / spec.filename
    good = checkpoint(family)
    content = {"empty": b"", "truncated": good[: len(good) // 2],
               "html": b"<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n"}[damage]
    path.write_bytes(content)
    with pytest.raises(WeightsError) as exc:
        weights.resolve(name, tmp_path, download=False)
    msg = str(exc.value)
    reason = {"empty": "empty file", "truncated": "truncated or corrupt archive",
              "html": "not a PyTorch file (an HTML page?)"}
    assert msg.startswith(f"{path}: {reason[damage]}") and "\n" not in msg
    assert f"pipe weights fetch {name}" in msg and spec.url in msg
    assert not (tmp_path / f".{spec.filename}.verified.json").exists()
    assert path.read_bytes() == content  # refused, never deleted: the user put it there


@pytest.mark.parametrize("family", FAMILIES)
def test_loadable_file_is_stamped_with_its_checksum_and_format(family, monkeypatch, tmp_path):
    name, fmt = FAMILIES[family]
    spec = unchecked(monkeypatch, name) if family != "yolo-world" else weights.REGISTRY[name]
    payload = checkpoint(family)
    path = tmp_path / spec.filename
    path.write_bytes(payload)
    r = weights.resolve(name, tmp_path, download=False)
    assert r.source == "local" and r.sha256 == hashlib.sha256(payload).hexdigest()
    stamp = stamp_of(path)
    assert stamp["checksum"] == spec.checksum == "none published" and stamp["format"] == fmt
    assert stamp["sha256"] == r.sha256 and stamp["size"] == len(payload)


def test_legacy_torch_format_is_accepted(monkeypatch, tmp_path):
    spec = unchecked(monkeypatch, "resnet18")
    (tmp_path / spec.filename).write_bytes(checkpoint("torchvision", legacy=True))
    weights.resolve("resnet18", tmp_path, download=False)
    assert stamp_of(tmp_path / spec.filename)["format"] == "torch.save legacy"


def test_archive_check_refuses_what_the_family_cannot_load(tmp_path):
    sam, clip = weights.REGISTRY["sam_vit_b"], weights.REGISTRY["clip_vit_b32"]
    script = tmp_path / "script.pt"
    script.write_bytes(checkpoint("clip"))
    assert weights.archive_format(clip, script) == "torchscript zip"
    with pytest.raises(FetchError, match="torchscript zip file, which the sam loader cannot read"):
        weights.archive_format(sam, script)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("readme.txt", "not a model")
    with pytest.raises(FetchError, match="without data.pkl"):
        weights.archive_format(sam, other)
    for junk in (b"\x80\x02}q\x00.", b"just text"):  # a plain pickle is not a torch file either
        other.write_bytes(junk)
        with pytest.raises(FetchError, match="not a PyTorch file$"):
            weights.archive_format(sam, other)


def test_flipped_byte_inside_an_archive_fails_its_crc(tmp_path):
    path = tmp_path / "flipped.pth"
    buf = io.BytesIO()
    torch.save({"w": torch.full((256,), 7.0)}, buf)
    data = bytearray(buf.getvalue())
    at = data.index(torch.full((4,), 7.0).numpy().tobytes())  # inside the tensor's bytes: same size, same layout
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FetchError, match="fails its CRC check"):
        weights.archive_format(weights.REGISTRY["sam_vit_b"], path)


def test_stamp_for_another_checksum_is_ignored(monkeypatch, tmp_path):
    """Stamped while Ultralytics published no checksum; once the registry has one, the file is checked again."""
    spec = weights.REGISTRY["yolov8s-worldv2"]
    (tmp_path / spec.filename).write_bytes(checkpoint("yolo-world"))
    weights.resolve(spec.name, tmp_path, download=False)
    assert stamp_of(tmp_path / spec.filename)["checksum"] == "none published"
    monkeypatch.setitem(weights.REGISTRY, spec.name, dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(WeightsError, match="does not match the published 0000"):
        weights.resolve(spec.name, tmp_path, download=False)


def test_valid_stamp_spares_the_hashing_and_a_broken_one_is_ignored(toy, monkeypatch, tmp_path):
    spec, payload = toy
    path = tmp_path / spec.filename
    path.write_bytes(payload)
    weights.resolve("toy", tmp_path)
    calls = []
    real_verify = weights.verify
    monkeypatch.setattr(weights, "verify", lambda *a, **k: calls.append(a) or real_verify(*a, **k))
    assert weights.resolve("toy", tmp_path).sha256 == hashlib.sha256(payload).hexdigest() and calls == []
    path.with_name(f".{path.name}.verified.json").write_text("{not json")
    assert weights.resolve("toy", tmp_path).sha256 == hashlib.sha256(payload).hexdigest() and len(calls) == 1
    assert stamp_of(path)["checksum"] == spec.checksum  # rewritten
    path.write_bytes(payload[: len(payload) // 2])  # the file changed under its stamp
    with pytest.raises(WeightsError, match="truncated or corrupt archive"):
        weights.resolve("toy", tmp_path)
