"""Image embeddings computed once per (image, view, model) and kept on disk and in memory.

With the image encoder frozen, its output for an image never changes, and it is by far the most expensive
part of SAM (ViT-B: ~370 GFLOPs per 1024 px image against ~1 for the decoder). The key is the image file's
SHA-256, the flip view, the model architecture and its checkpoint's SHA-256 (or the seed of a random
init), so a changed image, view or checkpoint can never be served a stale embedding.

Embeddings are stored as float16 (half the disk; the decoder's precision is unaffected). A freshly
computed embedding is rounded to float16 too before it is used, so an embedding served from memory, from
disk or computed just now holds the same numbers: a run's result never depends on whether the cache was
warm, or on which process of a DDP run encoded which image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.training.state import save

VERSION = "pipe-sam-embedding-v1"


def as_stored(embedding: torch.Tensor) -> torch.Tensor:
    """An embedding rounded as the cache stores it (float16), back in float32: what the decoder is given when the
    cache is on, in training, in the evaluation and, to give the same masks, in ``pipe predict``."""
    return embedding.detach().to(torch.float16).float()


class EmbeddingCache:
    def __init__(self, folder: Path | None, model_key: str, enabled: bool = True) -> None:
        self.folder = Path(folder) if folder else None
        self.model_key = model_key
        self.enabled = enabled
        self.memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def key(self, image_digest: str, view: int) -> str:
        return hashlib.sha256(f"{VERSION}|{self.model_key}|{image_digest}|{view}".encode()).hexdigest()[:40]

    def counts(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}

    def get(self, image_digest: str, view: int, compute: Callable[[], torch.Tensor], device: str) -> torch.Tensor:
        """The embedding (1, C, E, E) on ``device``: from memory, else disk, else ``compute()`` (then stored)."""
        if not self.enabled:
            self.misses += 1
            return compute()
        key = self.key(image_digest, view)
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        path = self.folder / f"{key}.pt" if self.folder else None
        if path is not None and path.is_file():
            self.hits += 1
            emb = torch.load(path, map_location=device, weights_only=True).float()
        else:
            self.misses += 1
            emb = as_stored(compute())  # exactly what a later load of the file gives
            if path is not None:
                save(path, emb.to(torch.float16).cpu())
        self.memory[key] = emb.to(device)
        return self.memory[key]
