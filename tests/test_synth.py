import hashlib

import cv2
import numpy as np

from pipeline.data.layout import load_category
from pipeline.data.masks import components
from pipeline.data.synth import synthesize


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_exact_mvtec_layout(tiny_root):
    cat = tiny_root / "bottle"
    assert sorted(p.name for p in (cat / "test").iterdir()) == ["broken_large", "broken_small", "contamination", "good"]
    assert len(list((cat / "train/good").glob("*.png"))) == 6
    for defect in ["broken_large", "broken_small", "contamination"]:
        images = sorted(p.stem for p in (cat / "test" / defect).glob("*.png"))
        masks = sorted(p.stem for p in (cat / "ground_truth" / defect).glob("*.png"))
        assert masks == [f"{s}_mask" for s in images]
    assert not (cat / "ground_truth/good").exists()


def test_deterministic_and_seed_sensitive(tmp_path):
    a = synthesize("bottle", tmp_path / "a", size=48, train_good=2, test_good=1, test_per_defect=2, seed=3)
    b = synthesize("bottle", tmp_path / "b", size=48, train_good=2, test_good=1, test_per_defect=2, seed=3)
    c = synthesize("bottle", tmp_path / "c", size=48, train_good=2, test_good=1, test_per_defect=2, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_bottle_defects_have_the_promised_geometry(tmp_path):
    root = tmp_path / "r"
    synthesize("bottle", root, size=128, train_good=1, test_good=1, test_per_defect=12, seed=1)
    cat = load_category(root, "bottle")
    counts = {"broken_large": [], "broken_small": [], "contamination": []}
    areas = {k: [] for k in counts}
    for s in cat.samples:
        if s.mask is None:
            continue
        raw = cv2.imread(str(s.mask), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(raw)) <= {0, 255}
        m = cat.read_mask(s)
        counts[s.label].append(len(components(m)[1]))
        areas[s.label].append(m.mean())
    assert set(counts["broken_large"]) == {1} and set(counts["contamination"]) == {1}
    assert set(counts["broken_small"]) <= {1, 2, 3} and len(set(counts["broken_small"])) > 1
    # a chunk off the rim is much bigger than a chip
    assert np.mean(areas["broken_large"]) > 3 * np.mean(areas["broken_small"])
    # good images look like a bottle mouth: dark centre, light corners
    good = cv2.imread(str(root / "bottle/test/good/000.png"), cv2.IMREAD_GRAYSCALE)
    assert good[64, 64] < 60 and good[2, 2] > 180


def test_greyscale_category_is_single_channel(tmp_path):
    synthesize("screw", tmp_path, size=64, train_good=2, test_good=1, test_per_defect=1)
    img = cv2.imread(str(tmp_path / "screw/test/scratch_head/000.png"), cv2.IMREAD_UNCHANGED)
    assert img.ndim == 2
    cat = load_category(tmp_path, "screw")
    assert {i.channels for i in cat.info.values()} == {1}
    assert len(cat.by_label("test")) == 6  # good + five screw defects


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    import pipeline.data.synth as synth

    calls = {"n": 0}
    real = synth.cv2.imwrite

    def flaky(path, img):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(path, img)

    monkeypatch.setattr(synth.cv2, "imwrite", flaky)
    try:
        synthesize("bottle", tmp_path, size=32, train_good=4, test_good=1, test_per_defect=1)
    except KeyboardInterrupt:
        pass
    assert list(tmp_path.iterdir()) == []
