"""One training run of one attempt on one fold: a plain loop in the style of torchvision's references.

Per epoch: open the backbone stages the schedule allows (two-stage fine-tuning, gradual unfreezing),
train on the (possibly class-balanced, possibly MixUp-ed) train images, score val, step the scheduler
(``ReduceLROnPlateau`` on val loss). The epoch with the best val score is kept; the test part is scored
once, with those weights, after training. Under ``torchrun`` the train images are sharded across
processes (DDP) and every process scores val and test in full, so all reach the same selection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from pipeline.console import progress
from pipeline.metrics.classification import classification_metrics
from pipeline.stages.classify.attempts import Attempt
from pipeline.stages.classify.data import Example, Fold, ImageCache, Images, train_collate
from pipeline.stages.classify.losses import build_loss, soft_targets
from pipeline.stages.classify.models import Classifier
from pipeline.training import distributed
from pipeline.training.optim import adamw
from pipeline.training.sampling import ShardedSampler, class_balanced_weights
from pipeline.training.state import autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """Run-wide settings (the ``classify`` config section), the same for every attempt."""

    device: str
    seed: int
    select: str = "macro_f1"
    amp: bool = True
    channels_last: bool = True
    workers: int = 0


def open_stages(a: Attempt, epoch: int, depth: int) -> int:
    """How many backbone stages train in ``epoch``: 0 during stage one, then one more every ``unfreeze_every``."""
    if epoch < a.freeze_epochs:
        return 0
    if a.unfreeze_every <= 0:
        return depth
    return min(depth, 1 + (epoch - a.freeze_epochs) // a.unfreeze_every)


def scheduler(a: Attempt, optimizer: torch.optim.Optimizer) -> Any:
    s = a.scheduler
    if s.kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=a.epochs, eta_min=s.eta_min)
    if s.kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=s.factor, patience=s.patience)
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=s.t0, T_mult=s.t_mult, eta_min=s.eta_min)


def _inputs(x: torch.Tensor, o: Options) -> torch.Tensor:
    x = x.to(o.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if o.channels_last and o.device.startswith("cuda") else x


@torch.no_grad()
def predict(model: Classifier, samples: list[Example], cache: ImageCache, size: int, o: Options,
            batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Mean-of-members probabilities (N, C) and the labels, without augmentation."""
    model.eval()
    loader = DataLoader(Images(samples, cache, size, "eval"), batch_size=batch, num_workers=o.workers)
    probs, labels = [], []
    for x, y in loader:
        with autocast(o.device, o.amp):
            logits = model(_inputs(x, o))
        probs.append(Classifier.probs(logits).cpu())
        labels.append(y)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def score(probs: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Metrics of one part plus its loss (mean negative log-likelihood of the true class)."""
    m = classification_metrics(labels, probs.argmax(1), names)
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))
    return {"loss": round(float(nll.mean()), 5) if len(labels) else None, **m}


def _selection(m: dict[str, Any], select: str) -> tuple[float, float]:
    """Higher is better; ties go to the lower loss."""
    loss = m["loss"] if m["loss"] is not None else float("inf")
    main = -loss if select == "loss" else (m[select] or 0.0)
    return main, -loss


def fit(model: Classifier, a: Attempt, fold: Fold, names: list[str], cache: ImageCache, o: Options,
        d: distributed.Dist = distributed.Dist(), label: str = "") -> dict[str, Any]:
    """Train, select the best val epoch, score train/val/test with it; the model keeps the best weights."""
    start = time.perf_counter()
    classes = len(names)
    model.to(o.device)
    if o.channels_last and o.device.startswith("cuda"):
        model.to(memory_format=torch.channels_last)
    train_labels = [s.label for s in fold.train]
    criterion = build_loss(a.loss.kind, a.loss.focal_gamma, a.longtail, train_labels, classes,
                           a.effective_beta).to(o.device)
    weights = class_balanced_weights(train_labels) if a.longtail == "balanced_sampling" else None
    sampler = ShardedSampler(len(train_labels), o.seed, d.rank, d.world, weights)
    per_process = max(1, a.batch // d.world)
    loader = DataLoader(Images(fold.train, cache, a.imgsz, a.augment), batch_size=per_process, sampler=sampler,
                        collate_fn=train_collate(a.mixup, classes), num_workers=o.workers,
                        drop_last=len(sampler) > per_process, persistent_workers=o.workers > 0)
    optimizer = adamw(model.param_groups(a.lr_backbone, a.lr_head), lr=a.lr_head, weight_decay=a.weight_decay)
    sched = scheduler(a, optimizer)
    best: tuple[tuple[float, float], int, dict[str, torch.Tensor], dict[str, Any]] | None = None
    history: list[dict[str, Any]] = []
    train_images, train_seconds, opened, net = 0, 0.0, -1, model
    with progress() as bar:
        task = bar.add_task(f"{label} epochs", total=a.epochs)
        for epoch in range(a.epochs):
            k = open_stages(a, epoch, model.depth)
            model.open_stages(k)
            if k != opened:  # DDP registers the trainable parameters when wrapped: wrap again when they change
                net = DistributedDataParallel(model) if d.enabled else model
                opened = k
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            total, correct, seen = 0.0, 0, 0
            for x, y in loader:  # y: class indices, or MixUp's soft rows
                x = _inputs(x, o)
                t = soft_targets(y.to(o.device), classes, a.loss.label_smoothing)
                with autocast(o.device, o.amp):
                    logits = net(x)
                loss = torch.stack([criterion(member, t) for member in logits]).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(y)
                correct += int((Classifier.probs(logits.detach()).argmax(1) == t.argmax(1)).sum())
                seen += len(y)
            if o.device.startswith("cuda"):
                torch.cuda.synchronize(o.device)
            train_seconds += time.perf_counter() - t0
            train_images += seen * d.world
            val = score(*predict(model, fold.val, cache, a.imgsz, o), names)
            row = {"epoch": epoch + 1, "open_stages": k,
                   "train_loss": round(distributed.mean(d, total / max(seen, 1)), 5),
                   "train_acc": round(distributed.mean(d, correct / max(seen, 1)), 5),
                   "val_loss": val["loss"], "val_acc": val["accuracy"], "val_macro_f1": val["macro_f1"],
                   "lr_backbone": optimizer.param_groups[0]["lr"], "lr_head": optimizer.param_groups[1]["lr"]}
            history.append(row)
            log.debug(f"{label} "  # per-epoch numbers: the log file keeps them, the progress bar shows them
                      + " ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            key = _selection(val, o.select)
            if best is None or key > best[0]:
                state = {k_: v.detach().to("cpu", copy=True) for k_, v in model.state_dict().items()}  # one copy
                best = (key, epoch + 1, state, val)
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(val["loss"] if val["loss"] is not None else 0.0)
            else:
                sched.step()
            bar.update(task, advance=1, description=f"{label} epoch {epoch + 1}/{a.epochs} loss {row['train_loss']:.3f} "
                                                    f"val acc {row['val_acc']}")
    assert best is not None
    model.load_state_dict(best[2])
    chosen = history[best[1] - 1]
    parts = {"val": best[3]}  # scored with these very weights when they were selected
    for name, samples in (("train", fold.train), ("test", fold.test)):
        probs, labels = predict(model, samples, cache, a.imgsz, o)
        parts[name] = score(probs, labels, names)
    return {
        "fold": fold.name, "best_epoch": best[1], "selected_by": f"val {o.select}",
        "train": {**parts["train"], "epoch_loss": chosen["train_loss"], "epoch_acc": chosen["train_acc"]},
        "val": parts["val"], "test": parts["test"],
        "test_predictions": {"rel": [s.rel for s in fold.test], "label": labels.tolist(),
                             "pred": probs.argmax(1).tolist(),  # probs: what ranks images (an AUROC)
                             "probs": [[round(float(p), 6) for p in row] for row in probs.tolist()]},
        "history": history,
        "images_per_s": round(train_images / train_seconds, 2) if train_seconds else None,
        "wall_s": round(time.perf_counter() - start, 3),
    }
