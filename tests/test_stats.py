import json

import numpy as np
import pytest

from pipeline.data.layout import load_category
from pipeline.data.stats import card_markdown, dataset_card, write_card
from pipeline.device import environment


def test_card_counts_and_geometry(tiny_root, tmp_path):
    cat = load_category(tiny_root, "bottle")
    card = dataset_card(cat, {"broken_large": ["large rim break"]}, environment=environment("cpu"))
    assert card["counts"] == {"train": {"good": 6},
                              "test": {"good": 2, "broken_large": 3, "broken_small": 3, "contamination": 3}}
    assert card["images"]["sizes"] == {"64x64": 17} and card["images"]["mode"] == "RGB"
    assert card["complete"] is False and card["found"]["test_defective"] == 9
    assert [c["name"] for c in card["classes"]] == ["good", "broken_large", "broken_small", "contamination"]
    assert card["classes"][1]["display"] == "large rim break"
    assert card["environment"]["device"] == "cpu" and card["environment"]["torch"]
    # mask statistics equal an independent count of the mask pixels
    masks = [cat.read_mask(s) for s in cat.samples if s.label == "contamination"]
    assert card["masks"]["contamination"]["area_px"]["sum"] == sum(int(m.sum()) for m in masks)
    assert card["masks"]["contamination"]["area_frac"]["mean"] == pytest.approx(np.mean([m.mean() for m in masks]))
    assert card["masks"]["all"]["area_px"]["n"] == 9
    md_path = write_card(card, tmp_path / "out")[1]
    assert json.loads((tmp_path / "out/card.json").read_text())["total_images"] == 17
    md = md_path.read_text()
    assert "Synthetic stand-in" in md and "| broken_large | large rim break | 0 | 3 |" in md


@pytest.mark.real_data
def test_real_bottle_card(real_root):
    card = dataset_card(load_category(real_root, "bottle"))
    assert card["data"]["kind"] == "real"
    assert card["counts"]["train"] == {"good": 209}
    assert card["counts"]["test"] == {"good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21}
    assert card["images"] == {"sizes": {"900x900": 292}, "channels": {"3": 292}, "mode": "RGB"}
    assert card["complete"] is True and card["masks"]["all"]["area_px"]["n"] == 63
    assert "| **total** | | **209** | **83** |" in card_markdown(card)


def test_fallback_to_synthetic_only_when_asked(tmp_path):
    from pipeline.runner import data_source
    from pipeline.config import load_config
    from pipeline.data.source import open_category
    from pipeline.errors import DataError

    source = data_source(load_config("bottle", profile="tiny", overrides=[f"data.root={tmp_path / 'none'}",
                                                                      f"data.synthetic_root={tmp_path / 'syn'}"]))
    with pytest.raises(DataError, match="no such category folder"):
        open_category(source)
    cat = open_category(source, fallback_synthetic=True)
    assert cat.provenance["kind"] == "synthetic" and len(cat.samples) == 12 + 4 + 3 * 4
    stamp = (tmp_path / "syn/bottle/train/good/000.png").stat().st_mtime_ns
    open_category(source, fallback_synthetic=True)  # same settings: reused, not regenerated
    assert (tmp_path / "syn/bottle/train/good/000.png").stat().st_mtime_ns == stamp
