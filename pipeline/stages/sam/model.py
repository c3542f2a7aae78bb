"""A registry of SAM builders, as in segment-anything itself, plus a tiny ViT for tests and CPU runs.

Official models come with their checkpoints through the weights registry. ``vit_tiny`` is built from the
same segment-anything modules at 256 px with a narrow decoder; it has no published weights, so it is
always a (seeded, recorded) random initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pipeline.weights import Resolved, get_spec, resolve

REGISTRY_NAMES = {"vit_b": "sam_vit_b", "vit_l": "sam_vit_l", "vit_h": "sam_vit_h"}


def build_tiny() -> Sam:
    """Two encoder blocks of width 64 at 256 px (16x16 embeddings), a 64-wide two-way decoder."""
    dim, size, patch = 64, 256, 16
    return Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=64, depth=2, num_heads=2,
                                      mlp_ratio=2, out_chans=dim, qkv_bias=True,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                      window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=8),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=128, num_heads=2),
                                 transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=64),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )


@dataclass(frozen=True)
class SamSource:
    arch: str
    checkpoint: Path | None
    provenance: dict[str, Any]

    @property
    def key(self) -> str:
        """What the image embeddings depend on besides the image: the cache key's model part."""
        return f"{self.arch}|{self.provenance.get('sha256') or 'random-init-seed-' + str(self.provenance['seed'])}"


def locate(arch: str, weights_dir: Path, allow_random_init: bool, seed: int) -> SamSource:
    """The checkpoint for ``arch`` (verified against its published md5), or a recorded random init."""
    if arch == "vit_tiny":
        return SamSource(arch, None, {"name": "sam_vit_tiny", "source": "random-init", "pretrained": False,
                                      "sha256": None, "seed": seed, "note": "test-sized SAM; no published weights"})
    r = resolve(REGISTRY_NAMES[arch], weights_dir, allow_random_init)
    return SamSource(arch, r.path, {**r.provenance, "seed": seed})


def from_scratch(arch: str, seed: int, note: str = "") -> SamSource:
    """``arch`` with seeded random weights, whether or not its checkpoint is present (a from-scratch recipe)."""
    if arch == "vit_tiny":
        record = locate(arch, Path("."), True, seed).provenance
    else:
        record = {**Resolved(get_spec(REGISTRY_NAMES[arch]), None, "random-init", None).provenance, "seed": seed}
    if note:
        record["note"] = "; ".join(n for n in (record.get("note"), note) if n)
    return SamSource(arch, None, record)


def build(source: SamSource, seed: int = 0) -> Sam:
    """A stock ``Sam``: loaded from the official checkpoint, or seeded random weights."""
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    if source.arch == "vit_tiny":
        return build_tiny()
    return sam_model_registry[source.arch](checkpoint=str(source.checkpoint) if source.checkpoint else None)


def trainable_state(sam: Sam) -> dict[str, torch.Tensor]:
    """The parameters that training changes, under stock SAM key names: loads with ``load_state_dict(strict=False)``."""
    names = {n for n, p in sam.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in sam.state_dict().items() if k in names}


def set_trainable(sam: Sam, unfreeze_blocks: int) -> None:
    """Prompt encoder and mask decoder train; the image encoder is frozen except its last N blocks (and neck)."""
    for p in sam.parameters():
        p.requires_grad = False
    for module in (sam.prompt_encoder, sam.mask_decoder):
        for p in module.parameters():
            p.requires_grad = True
    if unfreeze_blocks:
        for block in list(sam.image_encoder.blocks)[-unfreeze_blocks:]:
            for p in block.parameters():
                p.requires_grad = True
        for p in sam.image_encoder.neck.parameters():
            p.requires_grad = True
