"""The SAM fine-tuning loop: plain PyTorch, readable top to bottom, the same alone or under ``torchrun``.

One step takes ``batch`` images; each image's instances are prompted together (box with jitter, optional
points), so the decoder sees every defect of an image against the same embedding. Images without
instances teach nothing to a box-prompted decoder and are left out of training (they are evaluated).
``last.pt`` holds everything needed to resume; ``decoder.pt`` the trainable weights of the best epoch
(by val IoU) under stock SAM key names.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam
from torch import nn

from pipeline.config import SamConfig
from pipeline.errors import PipeError
from pipeline.stages.sam.cache import EmbeddingCache
from pipeline.stages.sam.data import Item, embedding, prepare
from pipeline.stages.sam.loss import mask_iou, sam_loss
from pipeline.stages.sam.model import set_trainable, trainable_state
from pipeline.stages.sam.predictor import Points, Predictor
from pipeline.training import distributed
from pipeline.training.optim import adamw, warmup_cosine
from pipeline.training.sampling import ShardedSampler
from pipeline.training.state import rng_state, save, seed_everything, set_rng_state
from pipeline.workspace import SamFiles

log = logging.getLogger(__name__)


class PromptedSam(nn.Module):
    """The predictor's differentiable path as one module, so that DDP wraps a single forward per step.

    Embeddings (or input-frame images, when encoder blocks train) and input-frame prompts in, one low-res mask
    logit map and IoU prediction per prompt out, per image."""

    def __init__(self, sam: Sam, encode: bool, amp: bool = False) -> None:
        super().__init__()
        self.sam = sam
        self.encode = encode
        self.predictor = Predictor(sam, amp)

    def forward(self, inputs: list[torch.Tensor], boxes: list[torch.Tensor],
                points: list[Points | None]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        p = self.predictor
        return [p.decode(p.encode(x) if self.encode else x, b, pts) for x, b, pts in zip(inputs, boxes, points)]


def jitter(boxes: torch.Tensor, fraction: float, limit: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Move each side by up to ``fraction`` of the box's width/height, clipped to the input frame."""
    if fraction <= 0 or not len(boxes):
        return boxes
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    moved = boxes + (torch.rand(boxes.shape, generator=gen) * 2 - 1) * fraction * wh
    h, w = limit
    return torch.stack([moved[:, 0].clamp(0, w), moved[:, 1].clamp(0, h), moved[:, 2].clamp(0, w),
                        moved[:, 3].clamp(0, h)], 1)


def sample_points(masks: Any, scale: float, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``k`` positive points per instance, drawn uniformly from its mask, in input pixels."""
    if k <= 0 or not len(masks):
        return None
    coords = []
    for m in masks:
        ys, xs = torch.nonzero(torch.as_tensor(m), as_tuple=True)
        pick = torch.randint(len(xs), (k,), generator=gen)
        coords.append(torch.stack([xs[pick], ys[pick]], 1).float() * scale)
    pts = torch.stack(coords)
    return pts, torch.ones(pts.shape[:2], dtype=torch.int)


def _shard(n: int, epoch: int, seed: int, d: distributed.Dist) -> list[int]:
    """This process's share of the epoch's seeded permutation (``ShardedSampler``: padded so every rank steps equally)."""
    sampler = ShardedSampler(n, seed, d.rank, d.world)
    sampler.set_epoch(epoch)
    return list(sampler)


@torch.no_grad()
def val_iou(model: PromptedSam, items: list[Item], cache: EmbeddingCache) -> float:
    """Mean instance IoU on val with exact ground-truth boxes, in the low-res frame (for model selection)."""
    p = model.predictor
    scores = []
    for item in (it for it in items if len(it.boxes)):
        prep = prepare(item, 0, p.img_size)
        x = prepare(item, 0, p.img_size, True)["image"] if model.encode else embedding(p, cache, item, 0)
        low, _ = model([x], [prep["boxes"].to(p.device)], [None])[0]
        scores += mask_iou(low.float(), prep["target"].to(p.device)).tolist()
    return sum(scores) / len(scores) if scores else 0.0


def fit(sam: Sam, train_items: list[Item], val_items: list[Item], cfg: SamConfig, device: str, seed: int,
        cache: EmbeddingCache, out: Path, d: distributed.Dist, resume: bool = False,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train, validate each epoch, keep ``last.pt`` and the best ``decoder.pt``; return the history."""
    img_size = sam.image_encoder.img_size
    set_trainable(sam, cfg.unfreeze_blocks)
    use_cache = cfg.cache and cfg.unfreeze_blocks == 0
    cache.enabled = cache.enabled and use_cache
    model = PromptedSam(sam, encode=not use_cache, amp=cfg.amp).to(device)
    predictor = model.predictor
    # single-mask output leaves SAM's other mask tokens (and point embeddings, without points) without gradient
    net = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device.startswith("cuda") else None,
                                              find_unused_parameters=True) if d.enabled else model
    train_items = [it for it in train_items if len(it.boxes)]
    steps = math.ceil(math.ceil(len(train_items) / d.world) / cfg.batch / cfg.accumulate)
    optimizer = adamw([p for p in sam.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, round(cfg.warmup_epochs * steps), cfg.epochs * steps)
    state: dict[str, Any] = {"epoch": 0, "best_iou": -1.0, "best_epoch": None, "history": []}
    files = SamFiles(out)
    last = files.last
    if resume and last.is_file():
        try:
            ckpt = torch.load(last, map_location="cpu", weights_only=False)
            sam.load_state_dict(ckpt["trainable"], strict=False)
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])
            state = ckpt["state"]
        except Exception as exc:  # damaged, or written by a pipe whose schedule or layout differed
            raise PipeError(f"{last}: cannot resume from this checkpoint ({type(exc).__name__}: {exc}); it is damaged "
                            f"or from another pipe version: run without --resume to start afresh") from None
        log.info(f"resuming SAM fine-tuning from epoch {state['epoch'] + 1} of {cfg.epochs}")
    else:  # the same random state whether or not this process ran the zero-shot phase first (a resumed one skips it)
        seed_everything(seed)

    t0 = time.perf_counter()
    if use_cache:  # the embedding pass: each process encodes its share, then everyone reads the files
        views = range(cfg.views)
        work = [(it, v) for it in train_items for v in views] + [(it, 0) for it in val_items if len(it.boxes)]
        for it, v in work[d.rank :: d.world]:
            embedding(predictor, cache, it, v)
        distributed.barrier(d)
    embed_s = time.perf_counter() - t0
    embed_counts = cache.counts()

    for epoch in range(state["epoch"], cfg.epochs):
        t_epoch = time.perf_counter()
        hits0, misses0 = cache.hits, cache.misses
        model.train()
        gen = torch.Generator().manual_seed(seed * 1000 + epoch * 10 + d.rank)
        order = _shard(len(train_items), epoch, seed, d)
        sums: dict[str, float] = {}
        n = 0
        for step, start in enumerate(range(0, len(order), cfg.batch)):
            chunk = [train_items[i] for i in order[start:start + cfg.batch]]
            views = torch.randint(cfg.views, (len(chunk),), generator=gen).tolist()
            preps = [prepare(it, v, img_size) for it, v in zip(chunk, views)]
            inputs = [prepare(it, v, img_size, True)["image"] if model.encode else embedding(predictor, cache, it, v)
                      for it, v in zip(chunk, views)]
            boxes = [jitter(p["boxes"], cfg.box_jitter, p["input_size"], gen).to(device) for p in preps]
            points = [sample_points(p["masks"], p["scale"], cfg.points, gen) for p in preps]
            points = [None if p is None else (p[0].to(device), p[1].to(device)) for p in points]
            outs = net(inputs, boxes, points)  # under the predictor's autocast
            losses = [sam_loss(low, iou, p["target"].to(device), cfg.loss.focal, cfg.loss.dice, cfg.loss.iou,
                               cfg.focal_gamma, cfg.focal_alpha) for (low, iou), p in zip(outs, preps)]
            loss = torch.stack([l for l, _ in losses]).mean()
            (loss / cfg.accumulate).backward()
            if (step + 1) % cfg.accumulate == 0 or start + cfg.batch >= len(order):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            for _, parts in losses:
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * len(losses)
            n += len(losses)
        model.eval()
        score = val_iou(model, val_items, cache)
        row = {"epoch": epoch + 1, **{k: round(distributed.mean(d, v / max(n, 1)), 5) for k, v in sums.items()},
               "val_iou": round(score, 5), "cache_hits": cache.hits - hits0, "cache_misses": cache.misses - misses0,
               "seconds": round(time.perf_counter() - t_epoch, 3), "lr": scheduler.get_last_lr()[0]}
        state["history"].append(row)
        state["epoch"] = epoch + 1
        if score > state["best_iou"]:
            state["best_iou"], state["best_epoch"] = score, epoch + 1
            if d.main:
                save(files.decoder, trainable_state(sam))
        if d.main:
            save(last, {"trainable": trainable_state(sam), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "rng": rng_state(), "state": state})
        log.info(f"SAM epoch {epoch + 1}/{cfg.epochs}: loss {row.get('loss', 0):.4f}, val IoU {score:.4f}, "
                 f"{row['seconds']} s, cache {row['cache_hits']} hits / {row['cache_misses']} misses")
        if on_epoch_end:
            on_epoch_end(row)
    distributed.barrier(d)
    return {**state, "embedding_pass_s": round(embed_s, 3), "embedding_pass_cache": embed_counts,
            "train_images": len(train_items), "steps_per_epoch": steps}
