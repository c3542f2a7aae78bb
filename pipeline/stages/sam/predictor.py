"""SAM behind one object: embed an image once, then prompt it with boxes or points as often as needed.

In the spirit of segment-anything's ``SamPredictor``, and numerically the same (``tests/test_sam_predictor.py``
checks masks and scores pixel for pixel): the same resize, normalisation, prompt transforms, upscaling and
threshold. Training (``train.PromptedSam``, through :meth:`Predictor.decode`), evaluation (``evaluate.score``,
through :meth:`Predictor.predict`) and the data preparation (the module's transforms) all go through here, so
a mask that ``pipe predict`` gives for a box is the mask the evaluation scored for it.

Three frames: *original* (the image's pixels; what ``predict`` takes and returns), *input* (resized so the
long side is the encoder's size, before padding; what ``decode`` takes) and *low-res* (the decoder's output,
a quarter of the padded input). An embedding can come from :meth:`Predictor.set_image` or, already computed,
from the embedding cache through :meth:`Predictor.set_embedding`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Literal, NamedTuple

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from pipeline.training.state import autocast

Size = tuple[int, int]
Array = np.ndarray | torch.Tensor
Points = tuple[torch.Tensor, torch.Tensor]  # input-frame coords (B, N, 2) and labels (B, N): 1 foreground, 0 background


class Prediction(NamedTuple):
    masks: torch.Tensor  # (B, C, H, W) bool at the original size; C is 3 with multimask, else 1
    scores: torch.Tensor  # (B, C) the IoU head's estimate of each mask's quality
    low_res_logits: torch.Tensor  # (B, C, S/4, S/4) float, before upscaling


def input_size(original_size: Size, img_size: int) -> Size:
    """The (h, w) an image of ``original_size`` is resized to (long side ``img_size``), without reading it."""
    h, w = ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1], img_size)
    return h, w


def to_input_image(image: np.ndarray, img_size: int) -> torch.Tensor:
    """(3, h, w) uint8: an RGB (H, W, 3) or greyscale (H, W) image resized so its long side is ``img_size``."""
    if image.ndim == 2 or image.shape[2] == 1:  # grey as three equal channels, as cv2.COLOR_GRAY2RGB
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    resized = ResizeLongestSide(img_size).apply_image(np.ascontiguousarray(image))
    return torch.as_tensor(resized).permute(2, 0, 1).contiguous()


def decoded_to_input(image: np.ndarray, img_size: int) -> torch.Tensor:
    """:func:`to_input_image` of an image as OpenCV decodes it (BGR (H, W, 3) or greyscale (H, W), what
    ``data.images.read_image`` and ``pipe predict`` read): the one place the channel order is turned, for
    ``Predictor.set_image`` and both backends' segmenters alike."""
    return to_input_image(image[..., ::-1] if image.ndim == 3 else image, img_size)


def _numpy(values: Array) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def to_input_coords(coords: Array, original_size: Size, img_size: int) -> torch.Tensor:
    """Points (..., 2) as (x, y) in original pixels to float32 input-frame pixels (scaled in float64 first, as SAM)."""
    return torch.as_tensor(ResizeLongestSide(img_size).apply_coords(_numpy(coords), original_size), dtype=torch.float32)


def to_input_boxes(boxes: Array, original_size: Size, img_size: int) -> torch.Tensor:
    """Boxes (B, 4) as xyxy in original pixels to float32 input-frame pixels."""
    return to_input_coords(_numpy(boxes).reshape(-1, 2, 2), original_size, img_size).reshape(-1, 4)


class Predictor:
    """One ``Sam`` model, one image at a time: ``set_image`` (or ``set_embedding``), then ``predict`` any number of
    times without running the image encoder again. ``amp`` runs encoder and decoder under bf16 autocast on CUDA."""

    def __init__(self, sam: Sam, amp: bool = False) -> None:
        self.model = sam
        self.amp = amp
        self.img_size: int = sam.image_encoder.img_size
        self.features: torch.Tensor | None = None
        self.original_size: Size | None = None
        self.input_size: Size | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _autocast(self) -> AbstractContextManager:
        return autocast(str(self.device), self.amp)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The image encoder's output (1, C, E, E) for an input-frame uint8 image (3, h, w).

        Keeps the graph: training with unfrozen encoder blocks back-propagates through it."""
        with self._autocast():
            return self.model.image_encoder(self.model.preprocess(image.to(self.device).float())[None])

    @torch.no_grad()
    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """``encode`` without a graph, as float32: what the embedding cache stores."""
        return self.encode(image).float()

    def set_image(self, image: np.ndarray, image_format: Literal["RGB", "BGR"] = "RGB") -> None:
        """Encode ``image`` (uint8 (H, W, 3) in ``image_format``, or greyscale (H, W)) once for the coming prompts."""
        x = decoded_to_input(image, self.img_size) if image_format == "BGR" else to_input_image(image, self.img_size)
        self.set_embedding(self.embed(x), image.shape[:2])

    def set_embedding(self, embedding: torch.Tensor, original_size: Size) -> None:
        """Prompt an embedding computed before (e.g. from the cache) of an image of ``original_size`` (H, W).

        The input size follows from the original one, so an embedding needs nothing else to be used."""
        self.features = embedding.to(self.device)
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = input_size(self.original_size, self.img_size)

    def decode(self, embedding: torch.Tensor, boxes: torch.Tensor | None = None, points: Points | None = None,
               multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (B, C, S/4, S/4) and IoU predictions (B, C) for input-frame prompts, with gradient:
        the training step's forward pass (and ``predict``'s, without gradient)."""
        with self._autocast():  # the positional encoding too: under autocast, as training has always had it
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
            pe = self.model.prompt_encoder.get_dense_pe()
            return self.model.mask_decoder(image_embeddings=embedding, image_pe=pe, sparse_prompt_embeddings=sparse,
                                           dense_prompt_embeddings=dense, multimask_output=multimask)

    @torch.no_grad()
    def predict(self, boxes: Array | None = None, points: Array | None = None, labels: Array | None = None,
                multimask: bool = False) -> Prediction:
        """Masks for prompts in original pixels on the current image: boxes (B, 4) xyxy and/or points (B, N, 2)
        (x, y) with ``labels`` (B, N) (default: all foreground). One box (4,) or one point set (N, 2) is a batch
        of one. Box k and point set k together prompt mask k; an empty batch gives empty results."""
        if self.features is None or self.original_size is None or self.input_size is None:
            raise RuntimeError("set an image (set_image) or an embedding (set_embedding) before predict")
        box_t, pts = self._to_input(boxes, points, labels)
        if (box_t is not None and not len(box_t)) or (pts is not None and not len(pts[0])):
            return self._empty(3 if multimask else 1)
        low, scores = self.decode(self.features, box_t, pts, multimask)
        low = low.float()
        masks = self.model.postprocess_masks(low, self.input_size, self.original_size) > self.model.mask_threshold
        return Prediction(masks, scores.float(), low)

    def _to_input(self, boxes: Array | None, points: Array | None,
                  labels: Array | None) -> tuple[torch.Tensor | None, Points | None]:
        """Original-pixel prompts as the decoder takes them: input-frame boxes (B, 4) and points ((B, N, 2), (B, N))."""
        assert self.original_size is not None
        box_t = None if boxes is None else to_input_boxes(boxes, self.original_size, self.img_size).to(self.device)
        if points is None:
            return box_t, None
        coords = to_input_coords(points, self.original_size, self.img_size)
        coords = coords[None] if coords.ndim == 2 else coords
        lab = torch.ones(coords.shape[:2]) if labels is None else torch.as_tensor(_numpy(labels))
        return box_t, (coords.to(self.device), lab.to(torch.int).reshape(coords.shape[:2]).to(self.device))

    def _empty(self, c: int) -> Prediction:
        assert self.features is not None and self.original_size is not None
        low = 4 * self.features.shape[-1]  # the decoder upscales the embedding 4x
        return Prediction(torch.zeros((0, c, *self.original_size), dtype=torch.bool, device=self.device),
                          torch.zeros((0, c), device=self.device), torch.zeros((0, c, low, low), device=self.device))
