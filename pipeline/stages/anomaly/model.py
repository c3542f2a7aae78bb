"""PatchCore as a plain torch model (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Kept apart from the stage's data handling and evaluation, as anomalib keeps its ``torch_model`` apart from the
Lightning glue. A frozen ImageNet backbone gives mid-level feature maps; each location's features are averaged
over its 3x3 neighbourhood (the paper's patch size p = 3), the deeper map is upsampled to the first one's grid,
and the concatenated channels are reduced to ``target_dim`` by 1-D adaptive average pooling. ``fit`` keeps
every patch of the training (good) images, then a greedy k-center coreset of them, as the memory bank (a
buffer, so ``state_dict`` carries it). ``score`` measures each test patch's distance to its nearest bank
patch: upsampled and Gaussian-smoothed, that is the anomaly map; re-weighted by how isolated the most
anomalous patch's neighbour is in the bank, the largest one is the image score (anomalib's
``compute_anomaly_score``). Distances are computed over blocks of the bank (and of the queries), so a large
bank never needs one (queries x bank) matrix.

Works on whatever device the module is on; inputs are moved there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.transforms.functional import gaussian_blur

from pipeline.stages.anomaly.coreset import greedy_coreset

__all__ = ["BACKBONES", "FeatureExtractor", "PatchCore", "blur_kernel_size", "build_backbone", "euclidean_dist"]

# torchvision builders with ``layer1``..``layer4`` stages; each has an entry of the same name in pipeline.weights
BACKBONES = ("wide_resnet50_2", "resnet18", "resnet34", "resnet50")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as every torchvision weights enum uses


def build_backbone(name: str, weights_path: Path | None, seed: int) -> nn.Module:
    """The torchvision network ``name`` on the CPU, with the state_dict at ``weights_path`` (a weights-registry
    ``Resolved.path``), or -- for None -- randomly initialised from ``seed`` without touching the global RNG."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torchvision.models.get_model(name, weights=None)
    if weights_path is not None:
        net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return net


class FeatureExtractor(nn.Module):
    """A frozen backbone's intermediate feature maps, in the order of ``layers``.

    Takes float images in [0, 1] (B, 1 or 3, H, W) -- greyscale is replicated to three channels -- and applies
    the ImageNet normalisation itself. Always in eval mode (BatchNorm uses its running statistics), never
    tracks gradients. Only the layers up to the deepest requested one are kept.
    """

    def __init__(self, backbone: str = "wide_resnet50_2", layers: Sequence[str] = ("layer2", "layer3"),
                 weights_path: Path | None = None, seed: int = 0) -> None:
        super().__init__()
        if not layers:
            raise ValueError("name at least one backbone layer")
        self.backbone_name, self.layers = backbone, tuple(layers)
        net = build_backbone(backbone, weights_path, seed)
        self.body = create_feature_extractor(net, return_nodes={layer: layer for layer in self.layers})
        self.body.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:  # noqa: ARG002 - frozen: eval whatever is asked
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected (B, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        out = self.body((images - self.mean) / self.std)
        return [out[layer] for layer in self.layers]


def blur_kernel_size(sigma: float) -> int:
    """anomalib's AnomalyMapGenerator kernel: 2 * round(4 sigma) + 1 (truncating the Gaussian at 4 sigma)."""
    return 2 * int(4.0 * sigma + 0.5) + 1


def euclidean_dist(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise distances between the rows of ``x`` (..., M, D) and ``y`` (..., N, D), anomalib's formula:
    ``sqrt(|x|^2 - 2 x.y + |y|^2)`` -- one matrix product, whatever the sizes (``torch.cdist`` switches method
    at 25 rows, which would make a blockwise search differ from a whole one)."""
    x_norm = x.pow(2).sum(-1, keepdim=True)
    y_norm = y.pow(2).sum(-1, keepdim=True)
    return (x_norm - 2 * x @ y.transpose(-2, -1) + y_norm.transpose(-2, -1)).clamp_min_(0).sqrt_()


class PatchCore(nn.Module):
    """PatchCore over ``extractor``: ``embed``, ``fit`` on good images, ``score`` test images.

    ``target_dim`` is the patch feature size; it is capped at the concatenated channel count (pooling to more
    would only repeat channels). ``coreset_ratio`` of the training patches are kept, chosen by greedy k-center
    selection after a seeded random projection to ``projection_dim``. ``num_neighbors`` bank neighbours
    re-weight the image score (1: the plain largest patch distance). ``sigma`` smooths the anomaly map.
    ``chunk_size`` bounds both sides of every distance block (chunk_size**2 distances at once).
    """

    memory_bank: Tensor

    def __init__(self, extractor: FeatureExtractor, target_dim: int = 1024, coreset_ratio: float = 0.1,
                 projection_dim: int = 128, num_neighbors: int = 9, sigma: float = 4.0, seed: int = 0,
                 chunk_size: int = 4096) -> None:
        super().__init__()
        if target_dim < 1 or num_neighbors < 1 or sigma <= 0 or chunk_size < 1 or not 0 < coreset_ratio <= 1:
            raise ValueError("target_dim, num_neighbors and chunk_size must be >= 1, sigma > 0, coreset_ratio in "
                             "(0, 1]")
        self.extractor = extractor
        self.target_dim, self.coreset_ratio, self.projection_dim = target_dim, coreset_ratio, projection_dim
        self.num_neighbors, self.sigma, self.seed, self.chunk_size = num_neighbors, sigma, seed, chunk_size
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)  # local neighbourhood aggregation, p = 3
        self.register_buffer("memory_bank", torch.empty(0))

    @property
    def device(self) -> torch.device:
        return self.extractor.mean.device

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        """Take the saved bank's shape (the empty buffer of a new model would refuse it, as anomalib's
        DynamicBufferMixin handles)."""
        saved = state_dict.get(prefix + "memory_bank")
        if isinstance(saved, Tensor):
            self.memory_bank = torch.empty_like(saved, device=self.memory_bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _images(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            return images.to(self.device).float().div_(255)
        return images.to(self.device, torch.float32)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Patch features (B, h, w, D) at the first layer's resolution."""
        maps = [self.pool(f.float()) for f in self.extractor(self._images(images))]
        size = maps[0].shape[-2:]
        maps = [maps[0], *(F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:])]
        feats = torch.cat(maps, 1).permute(0, 2, 3, 1)  # (B, h, w, C)
        b, h, w, c = feats.shape
        if self.target_dim >= c:
            return feats.contiguous()
        # the reference's 1-D adaptive average pooling of each patch's channel vector
        return F.adaptive_avg_pool1d(feats.reshape(-1, 1, c), self.target_dim).reshape(b, h, w, self.target_dim)

    @torch.no_grad()
    def fit(self, batches: Iterable[Tensor]) -> PatchCore:
        """Build the memory bank from the patches of ``batches`` (good images), then keep its coreset."""
        feats = [self.embed(b).flatten(0, 2) for b in batches]
        if not feats:
            raise ValueError("no training images to build the memory bank from")
        bank = torch.cat(feats)
        del feats
        keep = greedy_coreset(bank, self.coreset_ratio, self.seed, self.projection_dim)
        self.memory_bank = bank[keep].contiguous()
        return self

    def _knn(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Distances and bank indices of the ``k`` nearest bank rows of each query, ascending; blockwise."""
        bank, step = self.memory_bank, self.chunk_size
        k = min(k, bank.shape[0])
        dists, idxs = [], []
        for q in queries.split(step):
            best_d = best_i = None
            for start in range(0, bank.shape[0], step):
                d = euclidean_dist(q, bank[start:start + step])
                if k == 1:
                    d, i = d.min(1, keepdim=True)
                else:
                    d, i = d.topk(min(k, d.shape[1]), dim=1, largest=False)
                i = i + start
                if best_d is None:
                    best_d, best_i = d, i
                else:
                    d, i = torch.cat([best_d, d], 1), torch.cat([best_i, i], 1)
                    # merge: the k best of (best so far, this block's k best)
                    if k == 1:
                        best_d, pos = d.min(1, keepdim=True)
                    else:
                        best_d, pos = d.topk(k, dim=1, largest=False)
                    best_i = i.gather(1, pos)
            dists.append(best_d)
            idxs.append(best_i)
        return torch.cat(dists), torch.cat(idxs)

    def image_score(self, patch_scores: Tensor, locations: Tensor, embedding: Tensor) -> Tensor:
        """anomalib's ``compute_anomaly_score`` (the paper's Eq. 7): the largest patch distance s*, weighted by
        ``1 - softmax`` of the most anomalous patch's distances to its nearest bank neighbour m* and m*'s own
        nearest bank neighbours (m* first).

        ``patch_scores`` and ``locations`` are (B, P) nearest-neighbour distances and bank indices; ``embedding``
        is (B, P, D)."""
        if self.num_neighbors == 1:
            return patch_scores.amax(1)
        rows = torch.arange(patch_scores.shape[0], device=patch_scores.device)
        max_patches = patch_scores.argmax(1)  # m^test,*
        max_features = embedding[rows, max_patches]
        score = patch_scores[rows, max_patches]  # s*
        nn_sample = self.memory_bank[locations[rows, max_patches]]  # m*
        _, support = self._knn(nn_sample, self.num_neighbors)  # N_b(m*), m* itself first
        distances = euclidean_dist(max_features.unsqueeze(1), self.memory_bank[support])  # (B, 1, k)
        weights = (1 - F.softmax(distances.squeeze(1), 1))[..., 0]
        return weights * score

    def anomaly_map(self, patch_scores: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, h, w) patch distances -> (B, H, W): bilinear upsampling, then a Gaussian blur of ``sigma``.

        The kernel is capped where the image is smaller than it (reflect padding needs pad < side)."""
        maps = F.interpolate(patch_scores.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        k = min(blur_kernel_size(self.sigma), 2 * ((min(size) - 1) // 2) + 1)
        if k > 1:
            maps = gaussian_blur(maps, [k, k], [self.sigma, self.sigma])
        return maps.squeeze(1)

    @torch.no_grad()
    def score(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Image scores (B,) and anomaly maps (B, H, W) at the input's size, on the model's device."""
        if self.memory_bank.numel() == 0:
            raise RuntimeError("PatchCore has no memory bank: call fit() or load a state_dict first")
        images = self._images(images)
        emb = self.embed(images)
        b, h, w, d = emb.shape
        flat = emb.reshape(b, h * w, d)
        dist, loc = self._knn(flat.reshape(-1, d), 1)
        patch_scores, locations = dist.reshape(b, h * w), loc.reshape(b, h * w)
        scores = self.image_score(patch_scores, locations, flat)
        maps = self.anomaly_map(patch_scores.reshape(b, h, w), tuple(images.shape[-2:]))
        return scores, maps

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.score(images)

