import hashlib

import pytest

from pipeline import weights
from pipeline.errors import WeightsError
from pipeline.fetch import verify


@pytest.fixture
def toy(monkeypatch, tmp_path):
    payload = b"toy weights"
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
    (tmp_path / "toy.pth").write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="md5 .* does not match the published"):
        weights.resolve("toy", tmp_path)


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
