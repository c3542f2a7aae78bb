"""The graphs that ``pipe export`` writes, as plain modules: each takes and returns tensors only, so ONNX and
TorchScript trace them as they are, and the runtime's pre- and post-processing is a few lines of NumPy.

SAM is split where its predictor splits it: the image encoder runs once per image, the prompt encoder with
the mask decoder once per set of boxes on that image (segment-anything's own ONNX decoder, fed box corners).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel
from torch import nn

from pipeline.stages.classify.models import Classifier

# segment-anything's point labels for the two corners of a box prompt (its prompt encoder's embeddings 2 and 3)
BOX_LABELS = (2.0, 3.0)


class SamEncoder(nn.Module):
    """Image (1, 3, h, w) float 0..255, long side already ``img_size`` (``predictor.to_input_image``), any h and
    w -> the image embedding (1, C, E, E): normalised and padded inside, as ``Sam.preprocess``.

    ``rounded``: the embedding rounded through float16 and back, as the stage's embedding cache stores it; a
    decoder trained and evaluated on such embeddings gets them from the file too (``sam.cache.as_stored``)."""

    def __init__(self, sam: Sam, rounded: bool = False) -> None:
        super().__init__()
        self.image_encoder = sam.image_encoder  # only what preprocessing and encoding read: not the decoder too
        self.register_buffer("pixel_mean", sam.pixel_mean.clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.clone(), persistent=False)
        self.rounded = rounded

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        embedding = self.image_encoder(Sam.preprocess(self, image))  # type: ignore[arg-type]  # reads only the above
        return embedding.to(torch.float16).float() if self.rounded else embedding


class SamDecoder(SamOnnxModel):
    """segment-anything's ONNX decoder (prompt encoder, mask decoder, upscaling to the original size) for B box
    prompts on one embedding, each box as its two corners (labels 2 and 3) in SAM's input frame.

    Inputs: ``image_embeddings`` (1, C, E, E), ``point_coords`` (B, 2, 2), ``point_labels`` (B, 2),
    ``mask_input`` (1, 1, 4E, 4E) zeros with ``has_mask_input`` (1,) 0, ``orig_im_size`` (2,) (H, W).
    Outputs: mask logits (B, 1, H, W) and predicted IoUs (B, 1). Only the first of the decoder's masks is kept
    (what ``multimask_output=False`` returns, the predictor's mask), and before upscaling, so the other three
    are never brought to full size; ``return_single_mask`` would instead pick by score for two points."""

    def __init__(self, sam: Sam) -> None:
        super().__init__(sam, return_single_mask=False)

    @torch.no_grad()
    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor,
                orig_im_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks, scores = self.model.mask_decoder.predict_masks(
            image_embeddings=image_embeddings, image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self._embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self._embed_masks(mask_input, has_mask_input))
        return self.mask_postprocessing(masks[:, :1], orig_im_size), scores[:, :1]

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """``Sam.postprocess_masks`` with the sizes as tensors: segment-anything's version crops at
        ``int(...)``, which tracing freezes to the example image's size (every other aspect ratio then came
        out wrong). The crop is computed in float64, as ``ResizeLongestSide`` does in Python."""
        masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        size = orig_im_size.to(torch.float64)
        h, w = torch.floor(size * (self.img_size / size.max()) + 0.5).to(torch.int64)
        masks = masks[..., :h, :w]
        orig = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(orig[0], orig[1]), mode="bilinear", align_corners=False)


class ClassifierProbs(nn.Module):
    """Normalised images (N, 3, S, S) -> the ensemble's mean softmax (N, C), as ``Classifier.probs``."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Classifier.probs(self.classifier(x))
