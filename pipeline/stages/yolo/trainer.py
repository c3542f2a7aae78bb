"""Ultralytics' own YOLO-World trainer, taught to take its class embeddings from a file instead of CLIP, and to
resume exactly.

``WorldTrainer`` needs CLIP twice: to embed the training texts (it reads a cache first, which the stage
writes) and, at the start of training, to set the validation classes on the EMA model (no cache). The
subclass replaces only that second hook. It must live at module level and read everything from files
beside ``data.yaml``: under ``--device 0,1`` ultralytics re-imports this class in each DDP process.

Resuming: ultralytics' resume is lossy (see ``checkpoint``). The subclass writes the missing state beside
each ``last.pt`` and restores it at the start of the first resumed epoch; it shuffles with a ``PassSampler``
so the image order of any epoch can be recomputed; and it carries "when was the last optimizer step" across
the restart, which ultralytics keeps in a local variable of its training loop (with gradient accumulation,
a step due mid-epoch would otherwise move).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, RandomSampler

from pipeline.stages.yolo import offline  # before ultralytics: YOLO_OFFLINE is read when it is first imported

from ultralytics.engine import trainer as base_trainer
from ultralytics.models.yolo.world import train as world_train
from ultralytics.utils import RANK
from ultralytics.utils.torch_utils import unwrap_model

from pipeline.stages.yolo import checkpoint as ck
from pipeline.training.state import rng_state, save, set_rng_state
from pipeline.workspace import YoloFiles

log = logging.getLogger(__name__)
offline.no_downloads()  # its dataset check fetches a font, its AMP check (CUDA) a model: not at run time

# {"names": [...], "feats": (1, nc, 512)}, written beside data.yaml (``YoloFiles.class_embeddings``)
CLASS_EMBEDDINGS = YoloFiles(Path()).class_embeddings.name


def set_prompts(model: torch.nn.Module, feats: torch.Tensor, names: list[str]) -> torch.nn.Module:
    """What ``WorldModel.set_classes`` does, from precomputed embeddings: no CLIP call."""
    model.txt_feats = feats.to(next(model.parameters()).device).float()
    model.model[-1].nc = feats.shape[1]
    model.names = dict(enumerate(names))
    return model


def _set_validation_classes(trainer: Any) -> None:
    data = Path(trainer.args.data)
    saved = torch.load(data.parent / CLASS_EMBEDDINGS, map_location="cpu", weights_only=True)
    set_prompts(trainer.ema.ema, saved["feats"], saved["names"])


class PromptWorldTrainer(world_train.WorldTrainer):
    """``WorldTrainer`` whose EMA model gets the stage's class embeddings (prompt ensembles) for validation,
    and whose ``--resume`` equals an uninterrupted run (one process, ``workers: 0``)."""

    def __init__(self, cfg: Any = base_trainer.DEFAULT_CFG, overrides: dict[str, Any] | None = None,
                 _callbacks: dict | None = None) -> None:
        super().__init__(cfg, overrides, _callbacks)
        self._last_step = -1  # iteration of the last optimizer step, as an uninterrupted run would have it
        self._loop_last_step = -1  # the same as ultralytics' loop knows it (-1 again after a restart)
        self._ni, self._batch, self._accumulate = -1, -1, None
        self._restored = False
        for event, fn in (("on_train_start", PromptWorldTrainer._on_train_start),
                          ("on_train_epoch_start", PromptWorldTrainer._on_train_epoch_start),
                          ("on_train_batch_start", PromptWorldTrainer._on_train_batch_start),
                          ("on_train_batch_end", PromptWorldTrainer._on_train_batch_end),
                          ("on_train_end", PromptWorldTrainer._on_train_end)):
            self.add_callback(event, fn)

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True):
        model = super().get_model(cfg, weights, verbose)
        hooks = self.callbacks["on_pretrain_routine_end"]
        hooks[:] = [h for h in hooks if h is not world_train.on_pretrain_routine_end]
        if _set_validation_classes not in hooks:
            hooks.append(_set_validation_classes)
        return model

    # --- image order -------------------------------------------------------------------------------------
    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):
        loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
        batches = getattr(getattr(loader, "batch_sampler", None), "sampler", None)  # _RepeatSampler -> BatchSampler
        if mode == "train" and isinstance(batches, BatchSampler) and isinstance(batches.sampler, RandomSampler):
            batches.sampler = ck.PassSampler(len(batches.sampler), int(self.args.seed))
        return loader

    def _sampler(self) -> ck.PassSampler | None:
        sampler = getattr(getattr(getattr(self.train_loader, "batch_sampler", None), "sampler", None), "sampler", None)
        return sampler if isinstance(sampler, ck.PassSampler) else None

    def _close_dataloader_mosaic(self) -> None:
        """ultralytics rebuilds the loader right after this: its next pass is this epoch's."""
        super()._close_dataloader_mosaic()
        if sampler := self._sampler():
            sampler.passes = self.epoch

    # --- optimizer steps under gradient accumulation -----------------------------------------------------
    def _on_train_start(self) -> None:
        self._loop_last_step = -1
        if sampler := self._sampler():
            sampler.passes = self.start_epoch

    def _on_train_epoch_start(self) -> None:
        self._batch = -1
        if self.resume and not self._restored and self.epoch == self.start_epoch and RANK == -1:
            self._restored = True
            self._restore()

    def _on_train_batch_start(self) -> None:
        self._batch += 1
        self._ni = self._batch + len(self.train_loader) * self.epoch

    def preprocess_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Runs after warm-up set this iteration's ``accumulate`` and before the loop's step test
        ``ni - last_opt_step >= accumulate``: shift the bound so the test measures from the true last step."""
        batch = super().preprocess_batch(batch)
        lag = self._last_step - self._loop_last_step
        if lag:
            self._accumulate = self.accumulate
            self.accumulate += lag
        return batch

    def _on_train_batch_end(self) -> None:
        if self._accumulate is not None:
            self.accumulate, self._accumulate = self._accumulate, None

    def optimizer_step(self) -> None:
        super().optimizer_step()
        self._last_step = self._loop_last_step = self._ni

    def _build_train_pipeline(self) -> None:
        super()._build_train_pipeline()  # at setup and on an out-of-memory restart, the loop restarts at -1
        self._last_step = self._loop_last_step = -1

    def _handle_nan_recovery(self, epoch: int) -> bool:
        recovered = super()._handle_nan_recovery(epoch)
        if recovered:  # the loop redoes the epoch from -1
            self._last_step = self._loop_last_step = -1
        return recovered

    # --- saving and restoring ----------------------------------------------------------------------------
    def _exact_state(self) -> dict[str, Any]:
        model = unwrap_model(self.model)
        optimizer = self.optimizer.state_dict()
        return {"epoch": self.epoch, "model": model.state_dict(), "ema": self.ema.ema.state_dict(),
                "ema_updates": self.ema.updates, "optimizer": optimizer if ck.rounded_in_last(optimizer) else None,
                "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                "last_step": self._last_step, "buffer": list(getattr(self.train_loader.dataset, "buffer", [])),
                "rng": rng_state()}

    def save_model(self) -> bool:
        """ultralytics' checkpoints, each written whole through a temporary file, and the exact state beside
        them: state first, then best.pt, then last.pt, so last.pt of epoch N always has its state file."""
        last, best = self.last, self.best
        self.last, self.best = last.with_name(".last.pt.tmp"), best.with_name(".best.pt.tmp")
        try:
            saved = super().save_model()
        finally:
            tmp_last, tmp_best = self.last, self.best
            self.last, self.best = last, best
        state = ck.state_file(self.wdir, self.epoch)
        if RANK == -1:
            save(state, self._exact_state())
        if tmp_best.exists():
            os.replace(tmp_best, best)
        if tmp_last.exists():
            os.replace(tmp_last, last)
        for old in self.wdir.glob(f"{ck.STATE}.*.pt"):
            if old != state:
                old.unlink(missing_ok=True)
        return saved

    def _restore(self) -> None:
        path = ck.state_file(self.wdir, self.start_epoch - 1)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if state.get("epoch") != self.start_epoch - 1:
                raise ValueError(f"it holds epoch {state.get('epoch')}")
        except Exception as e:  # noqa: BLE001 - missing, truncated, foreign: all mean "not usable"
            log.warning(f"{path}: no exact training state ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        f"resuming from last.pt alone, which ultralytics rounds to float16: the result will "
                        f"differ slightly from an uninterrupted run")
            return
        try:
            self._apply(state)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # a state this model cannot take
            log.warning(f"{path}: could not restore the exact training state ({str(e).splitlines()[0]}); "
                        f"continuing from what was restored, which may differ slightly from an uninterrupted run")

    def _apply(self, state: dict[str, Any]) -> None:
        model = unwrap_model(self.model)
        model.load_state_dict(state["model"])
        self.ema.ema.load_state_dict(state["ema"])
        self.ema.updates = state["ema_updates"]
        if state["optimizer"] is not None:
            for saved, group in zip(state["optimizer"]["param_groups"], self.optimizer.param_groups):
                saved["fused"] = group.get("fused")  # this run's device picks the kernel, as in ultralytics
            self.optimizer.load_state_dict(state["optimizer"])
        params = dict(model.named_parameters())
        for name, grad in state["grads"].items():
            params[name].grad = grad.to(params[name].device)
        self._last_step = state["last_step"]
        ck.restore_buffer(self.train_loader.dataset, state["buffer"])
        set_rng_state(state["rng"])

    def final_eval(self) -> None:
        """ultralytics strips last.pt and best.pt in place here; route both through temporary files."""
        original = base_trainer.strip_optimizer
        base_trainer.strip_optimizer = lambda f, s="", updates=None: (
            original(f, s, updates) if s else ck.strip_atomically(Path(f), updates))
        try:
            super().final_eval()
        finally:
            base_trainer.strip_optimizer = original

    def _on_train_end(self) -> None:
        for f in self.wdir.glob(f"{ck.STATE}.*.pt"):  # training is complete: nothing left to resume
            f.unlink(missing_ok=True)
