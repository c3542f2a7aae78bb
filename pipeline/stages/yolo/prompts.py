"""Class prompts and their CLIP text embeddings, with no network at run time.

YOLO-World detects whatever its text embeddings describe, so the embeddings decide what a class *is*.
Sources, in order: CLIP ViT-B/32 weights in ``weights/``; an ultralytics ``text_embeddings_*.pt`` cache
holding every prompt; the official CLIP download; and only when random init is allowed, a deterministic
stand-in (one seeded unit vector per phrase). The stand-in keeps the classes apart, so training still
works, but it carries no language: a zero-shot number measured with it means nothing, and the metrics say so.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.console import LOUD
from pipeline.errors import WeightsError
from pipeline.fetch import file_digest

log = logging.getLogger(__name__)

ULTRALYTICS_CACHE = "text_embeddings_clip_ViT-B_32.pt"  # the name WorldTrainer reads beside its images
DIM = 512  # CLIP ViT-B/32 text width, which YOLO-World's heads expect


def class_prompts(classes: Mapping[str, Sequence[str]], defects: Sequence[str]) -> dict[str, list[str]]:
    """Phrases per defect class: the configured ones, else the folder name in words (``broken_large`` -> ``broken large``)."""
    return {d: list(classes.get(d) or [d.replace("_", " ")]) for d in defects}


@dataclass(frozen=True)
class TextEmbeddings:
    phrases: dict[str, torch.Tensor]  # phrase -> unit vector (DIM,)
    source: str  # clip | cache | deterministic-fallback
    file: str | None
    sha256: str | None

    @property
    def meaningful(self) -> bool:
        """Whether the vectors encode language (so zero-shot detection can mean something)."""
        return self.source != "deterministic-fallback"

    @property
    def provenance(self) -> dict[str, Any]:
        return {"source": self.source, "file": self.file, "sha256": self.sha256, "meaningful": self.meaningful,
                "phrases": sorted(self.phrases)}

    def classes(self, prompts: Mapping[str, Sequence[str]]) -> torch.Tensor:
        """One embedding per class, shape (1, nc, DIM): the normalised mean of its phrases (prompt ensembling)."""
        rows = [torch.stack([self.phrases[p] for p in phrases]).float().mean(0) for phrases in prompts.values()]
        feats = torch.stack(rows)
        return (feats / feats.norm(dim=-1, keepdim=True))[None]

    def save_ultralytics_cache(self, folder: Path) -> Path:
        """Write the cache WorldTrainer looks for, so its training never calls CLIP."""
        path = Path(folder) / ULTRALYTICS_CACHE
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({p: v.float().cpu() for p, v in self.phrases.items()}, path)
        return path


def fallback_vector(phrase: str) -> torch.Tensor:
    """A unit vector seeded by the phrase's SHA-256: the same phrase gives the same vector on every machine."""
    seed = int(hashlib.sha256(phrase.encode("utf-8")).hexdigest()[:15], 16)
    v = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def clip_vectors(weights: Path, phrases: Sequence[str], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Encode phrases with a local CLIP checkpoint exactly as ultralytics does (tokenise, encode, L2-normalise)."""
    import clip  # clip-anytorch

    model, _ = clip.load(str(weights), device=device, jit=False)
    model.eval()
    with torch.no_grad():
        feats = model.encode_text(clip.tokenize(list(phrases)).to(device)).float()
    feats = feats / feats.norm(dim=-1, keepdim=True)
    return {p: f.cpu() for p, f in zip(phrases, feats)}


def _from_cache(path: Path, phrases: Sequence[str]) -> dict[str, torch.Tensor]:
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise WeightsError(f"{path}: not a readable text-embeddings cache ({exc.__class__.__name__}); delete it "
                           f"or point yolo.text_embeddings at a file written by ultralytics") from None
    missing = [p for p in phrases if p not in cached]
    if missing:
        raise WeightsError(f"{path}: has no embedding for {', '.join(map(repr, missing))}; regenerate it with CLIP "
                           f"weights present, or use only the phrases it holds in configs/")
    for p in phrases:
        if tuple(cached[p].shape) != (DIM,):
            raise WeightsError(f"{path}: embedding for {p!r} has shape {tuple(cached[p].shape)}, expected ({DIM},)")
    return {p: cached[p].float() for p in phrases}


def load_text_embeddings(phrases: Sequence[str], weights_dir: Path, cache_file: str | Path | None = None,
                         allow_random_init: bool = False, device: str = "cpu") -> TextEmbeddings:
    """The embeddings for ``phrases`` from the best source present; see the module docstring for the order."""
    from pipeline.weights import get_spec, resolve

    phrases = sorted(set(phrases))
    spec = get_spec("clip_vit_b32")
    local = Path(weights_dir) / spec.filename
    cache = Path(cache_file) if cache_file else Path(weights_dir) / ULTRALYTICS_CACHE
    if local.is_file():
        r = resolve(spec.name, weights_dir)
        return TextEmbeddings(clip_vectors(r.path, phrases, device), "clip", str(r.path), r.sha256)
    if cache.is_file():
        return TextEmbeddings(_from_cache(cache, phrases), "cache", str(cache), file_digest(cache))
    if cache_file:
        raise WeightsError(f"{cache}: text-embeddings cache not found (yolo.text_embeddings); fix the path or set it "
                           f"to null")
    try:
        r = resolve(spec.name, weights_dir)
        return TextEmbeddings(clip_vectors(r.path, phrases, device), "clip", str(r.path), r.sha256)
    except WeightsError as exc:
        if not allow_random_init:
            raise WeightsError(f"no CLIP text encoder for the class prompts: put {spec.filename} or {ULTRALYTICS_CACHE} "
                               f"in {weights_dir}/, or pass --allow-random-init for a deterministic stand-in "
                               f"({exc})") from None
    log.warning("No CLIP weights and no text-embeddings cache: class prompts get DETERMINISTIC STAND-IN "
                "embeddings. Fine-tuning still separates the classes, but zero-shot detection is meaningless.",
                extra=LOUD)
    return TextEmbeddings({p: fallback_vector(p) for p in phrases}, "deterministic-fallback", None, None)
