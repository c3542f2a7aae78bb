"""The SAM predictor: embed once, then prompt; numerically segment-anything's own ``SamPredictor``.

Everything runs on a random-init ``vit_tiny`` (256 px): equality with ``SamPredictor`` is about the path (resize,
normalisation, prompt transforms, upscaling, threshold), which random weights exercise as well as trained ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from pipeline.metrics.coco import load_truth
from pipeline.stages.sam import evaluate
from pipeline.stages.sam.cache import EmbeddingCache
from pipeline.stages.sam.data import embedding, flip, load_split
from pipeline.stages.sam.model import build_tiny
from pipeline.stages.sam.predictor import Predictor, to_input_image


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_tiny().eval()


def _image(h: int, w: int, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise, so masks have edges (pure noise gives a model little to separate)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = (128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0))[..., None] + rng.normal(0, 20, (h, w, 3))
    base[h // 4: h // 2, w // 3: w // 2] = [250, 30, 30]
    img = np.clip(base, 0, 255).astype(np.uint8)
    return img[..., 0] if channels is None else img


def _reference(sam, image: np.ndarray) -> SamPredictor:
    ref = SamPredictor(sam)
    ref.set_image(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))
    return ref


def _ours(sam, image: np.ndarray) -> Predictor:
    p = Predictor(sam)
    p.set_image(image)
    return p


def _assert_same(ours, masks, scores) -> None:
    assert ours.masks.dtype == torch.bool
    assert torch.equal(ours.masks.cpu(), torch.as_tensor(masks)), "masks differ from segment-anything's"
    assert torch.equal(ours.scores.cpu(), torch.as_tensor(scores))


BOXES = np.array([[10, 12, 60, 70], [0, 0, 95, 80], [40.5, 33.25, 41.75, 90.5]], np.float32)


@pytest.mark.parametrize("multimask", [False, True])
def test_box_prompts_equal_sam_predictor(sam, multimask):
    image = _image(96, 96)
    ref, ours = _reference(sam, image), _ours(sam, image)
    batched = torch.as_tensor(ref.transform.apply_boxes(BOXES, image.shape[:2]), dtype=torch.float)  # as predict()
    masks, scores, low = ref.predict_torch(None, None, batched, multimask_output=multimask)
    out = ours.predict(boxes=BOXES, multimask=multimask)
    _assert_same(out, masks, scores)
    assert out.masks.shape == (3, 3 if multimask else 1, 96, 96) and torch.equal(out.low_res_logits, low)
    assert 0 < int(out.masks.sum()) < out.masks.numel()  # the comparison is between non-trivial masks
    one_masks, one_scores, _ = ref.predict(box=BOXES[0], multimask_output=multimask)  # one box, unbatched
    _assert_same(ours.predict(boxes=BOXES[0], multimask=multimask), one_masks[None], one_scores[None])


def test_point_prompts_equal_sam_predictor(sam):
    image = _image(96, 96, seed=1)
    ref, ours = _reference(sam, image), _ours(sam, image)
    coords, labels = np.array([[30.0, 40.0], [70.5, 20.25], [5.0, 90.0]]), np.array([1, 1, 0])
    masks, scores, _ = ref.predict(point_coords=coords, point_labels=labels, multimask_output=True)
    _assert_same(ours.predict(points=coords, labels=labels, multimask=True), masks[None], scores[None])
    # points with a box in one prompt; labels default to foreground
    masks, scores, _ = ref.predict(point_coords=coords[:2], point_labels=np.ones(2), box=BOXES[0],
                                   multimask_output=False)
    _assert_same(ours.predict(boxes=BOXES[0], points=coords[:2]), masks[None], scores[None])


def test_greyscale_and_odd_sized_images_equal_sam_predictor(sam):
    for image in (_image(80, 80, channels=None), _image(37, 91, seed=2), _image(101, 53, channels=None, seed=3)):
        ref, ours = _reference(sam, image), _ours(sam, image)
        h, w = image.shape[:2]
        box = np.array([w * 0.2, h * 0.1, w * 0.7, h * 0.9], np.float32)
        masks, scores, _ = ref.predict(box=box, multimask_output=True)
        out = ours.predict(boxes=box, multimask=True)
        _assert_same(out, masks[None], scores[None])
        assert out.masks.shape[-2:] == (h, w) and ours.original_size == (h, w) == ref.original_size
        assert ours.input_size == ref.input_size


def test_bgr_input_is_the_rgb_image(sam):
    image = _image(64, 64)
    rgb, bgr = _ours(sam, image), Predictor(sam)
    bgr.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    assert torch.equal(rgb.features, bgr.features)


def test_the_image_is_encoded_once_for_any_number_of_prompts(sam):
    calls = []
    hook = sam.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        p = _ours(sam, _image(96, 96))
        first = p.predict(boxes=BOXES)
        again = p.predict(boxes=BOXES)
        p.predict(points=np.array([[10.0, 10.0]]), multimask=True)
        empty = p.predict(boxes=np.zeros((0, 4), np.float32))
    finally:
        hook.remove()
    assert len(calls) == 1
    assert torch.equal(first.masks, again.masks) and torch.equal(first.scores, again.scores)
    assert empty.masks.shape == (0, 1, 96, 96) and empty.scores.shape == (0, 1)


def test_predict_needs_an_image(sam):
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(sam).predict(boxes=BOXES)


def test_a_cached_embedding_prompts_like_the_image_it_came_from(sam, tmp_path):
    image = _image(70, 90, seed=4)
    direct = _ours(sam, image)
    expected = direct.predict(boxes=BOXES, multimask=True)
    same = Predictor(sam)
    same.set_embedding(direct.features, image.shape[:2])  # the embedding and the original size are all it needs
    assert same.input_size == direct.input_size
    out = same.predict(boxes=BOXES, multimask=True)
    assert torch.equal(out.masks, expected.masks) and torch.equal(out.scores, expected.scores)

    # through the cache: stored as float16, so warm (from disk) equals cold exactly, and both are close to direct
    def from_cache(cache: EmbeddingCache):
        p = Predictor(sam)
        p.set_embedding(cache.get("digest", 0, lambda: p.embed(to_input_image(image, p.img_size)), "cpu"),
                        image.shape[:2])
        return p.predict(boxes=BOXES, multimask=True)

    cold, warm = from_cache(EmbeddingCache(tmp_path, "k")), from_cache(EmbeddingCache(tmp_path, "k"))
    assert torch.equal(cold.masks, warm.masks) and torch.equal(cold.scores, warm.scores)
    assert (cold.masks == expected.masks).float().mean() > 0.99
    assert torch.allclose(cold.scores, expected.scores, atol=1e-2)


def test_evaluation_masks_are_the_predictors(sam, converted_dataset):
    """``evaluate.score`` (the stage's metrics) gives, per box, the mask segment-anything's predictor gives."""
    items, names = load_split(converted_dataset, "test")
    predictor = Predictor(sam)
    cache = EmbeddingCache(None, "k", enabled=False)  # unrounded embeddings: exactly set_image's
    gt = load_truth(converted_dataset / "coco/annotations/instances_test.json")
    masks = evaluate.score(predictor, items, cache, names, gt).masks
    scored = [it for it in items if len(it.boxes)]
    assert scored and set(masks) == {it.name for it in scored}
    for item in scored:
        ref = _reference(sam, flip(item, 0)[0])
        boxes = torch.as_tensor(ref.transform.apply_boxes(item.boxes, (item.height, item.width)), dtype=torch.float)
        expected = ref.predict_torch(None, None, boxes, multimask_output=False)[0][:, 0]
        assert np.array_equal(masks[item.name][0], expected.numpy()), item.name
        assert torch.equal(embedding(predictor, cache, item, 0), ref.features)
