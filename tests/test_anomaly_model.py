"""PatchCore's torch model and its greedy coreset, on tiny inputs (resnet18 at random init, 64x64 images)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.stages.anomaly.coreset import coreset_size, greedy_coreset, sparse_projection
from pipeline.stages.anomaly.model import FeatureExtractor, PatchCore, blur_kernel_size, build_backbone, euclidean_dist

SIDE = 64
SQUARE = (slice(24, 40), slice(24, 40))


def covering_radius(points: torch.Tensor, chosen: torch.Tensor) -> float:
    """The largest distance from any point to its nearest chosen point (what k-center minimises)."""
    return torch.cdist(points, points[chosen]).min(1).values.max().item()


def blobs(n: int = 1200, d: int = 256, seed: int = 0) -> torch.Tensor:
    """Gaussian clusters of different sizes and spreads, plus a few far outliers."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.randn(12, d, generator=g)
    which = torch.randint(12, (n,), generator=g) ** 2 % 12  # uneven cluster sizes
    spread = torch.rand(12, 1, generator=g) + 0.2
    x = centres[which] + spread[which] * torch.randn(n, d, generator=g)
    x[:5] += 20 * torch.randn(5, d, generator=g)
    return x


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Near-identical smooth images: one gentle gradient plus faint noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIDE), torch.linspace(0, 1, SIDE), indexing="ij")
    base = torch.stack([0.3 + 0.2 * xx + 0.1 * yy, 0.35 + 0.1 * xx, 0.4 + 0.15 * yy])
    return (base + 0.01 * torch.randn(n, 3, SIDE, SIDE, generator=g)).clamp(0, 1)


def make_model(**kw) -> PatchCore:
    kw = {"coreset_ratio": 0.5, **kw}
    return PatchCore(FeatureExtractor("resnet18", weights_path=None, seed=0), **kw)


@pytest.fixture(scope="module")
def train_images() -> torch.Tensor:
    return smooth_images(6, seed=1)


@pytest.fixture(scope="module")
def fitted(train_images) -> PatchCore:
    return make_model().fit([train_images[:4], train_images[4:]])


# ---- coreset ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "ratio", "size"), [(1000, 0.1, 100), (1000, 0.0104, 10), (1000, 0.0106, 11),
                                                  (7, 0.01, 1), (5, 0.5, 3), (10, 1.0, 10)])
def test_coreset_size_is_round_of_ratio_times_n_at_least_one(n, ratio, size):
    assert coreset_size(n, ratio) == size
    idx = greedy_coreset(torch.randn(n, 16, generator=torch.Generator().manual_seed(n)), ratio, seed=0)
    assert idx.dtype == torch.long and len(idx) == size and len(idx.unique()) == size


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_coreset_ratio_out_of_range_is_refused(ratio):
    with pytest.raises(ValueError, match="ratio"):
        greedy_coreset(torch.randn(10, 4), ratio, seed=0)


def test_coreset_is_deterministic_per_seed_and_full_at_ratio_one():
    x = blobs()
    a, b, c = (greedy_coreset(x, 0.05, seed=s) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(greedy_coreset(x, 1.0, seed=0), torch.arange(len(x)))


def test_smaller_ratio_selects_a_prefix_and_coverage_shrinks_as_ratio_grows():
    x = blobs()
    picks = {r: greedy_coreset(x, r, seed=0) for r in (0.01, 0.1, 0.5)}
    assert torch.equal(picks[0.1][: len(picks[0.01])], picks[0.01])
    radii = [covering_radius(x, picks[r]) for r in (0.01, 0.1, 0.5)]
    assert radii[0] >= radii[1] >= radii[2] and radii[0] > radii[2]


@pytest.mark.parametrize("ratio", [0.01, 0.1])
def test_greedy_covers_better_than_a_random_subset_of_the_same_size(ratio):
    x = blobs()
    greedy = greedy_coreset(x, ratio, seed=0)  # distances measured after the 256 -> 128 projection
    g = torch.Generator().manual_seed(0)
    random_radii = [covering_radius(x, torch.randperm(len(x), generator=g)[: len(greedy)]) for _ in range(5)]
    assert covering_radius(x, greedy) < min(random_radii)


def test_duplicates_still_give_distinct_indices():
    x = torch.cat([torch.zeros(20, 8), torch.ones(20, 8)])
    idx = greedy_coreset(x, 0.5, seed=0)
    assert len(idx) == 20 and len(idx.unique()) == 20
    assert set(x[idx[:2], 0].tolist()) == {0.0, 1.0}  # the two distinct points come first


def test_sparse_projection_is_sparse_seeded_and_keeps_distances_roughly():
    p = sparse_projection(1024, 128, seed=0)
    assert p.shape == (1024, 128) and torch.equal(p, sparse_projection(1024, 128, seed=0))
    assert 0.01 < (p != 0).float().mean().item() < 0.06  # density 1/sqrt(1024) = 3 %
    x = torch.randn(50, 1024, generator=torch.Generator().manual_seed(1))
    ratio = torch.pdist(x @ p) / torch.pdist(x)
    assert 0.7 < ratio.mean().item() < 1.3


# ---- model ------------------------------------------------------------------------------------------------

def test_backbone_random_init_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = build_backbone("resnet18", None, seed=5), build_backbone("resnet18", None, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, build_backbone("resnet18", None, seed=6).conv1.weight)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16", None, seed=0)


def test_backbone_loads_a_state_dict_file(tmp_path):
    src = build_backbone("resnet18", None, seed=9)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    assert torch.equal(build_backbone("resnet18", tmp_path / "r18.pth", seed=0).fc.weight, src.fc.weight)


def test_embed_shapes_and_target_dim():
    images = smooth_images(2, seed=0)
    # resnet18: layer2 (128 ch, stride 8) + layer3 (256 ch, stride 16) upsampled to layer2's 8x8 grid
    assert make_model().embed(images).shape == (2, 8, 8, 384)  # target_dim 1024 > 384 channels: kept as they are
    assert make_model(target_dim=100).embed(images).shape == (2, 8, 8, 100)
    one = FeatureExtractor("resnet18", layers=("layer3",), weights_path=None, seed=0)
    assert PatchCore(one).embed(images).shape == (2, 4, 4, 256)


def test_feature_extractor_is_frozen():
    model = make_model()
    model.train()
    assert not model.extractor.training and not any(m.training for m in model.extractor.modules())
    assert not any(p.requires_grad for p in model.parameters())


def test_greyscale_input_is_replicated_to_three_channels(fitted):
    grey = smooth_images(2, seed=3)[:, :1]
    emb = fitted.embed(grey)
    assert torch.equal(emb, fitted.embed(grey.expand(-1, 3, -1, -1)))
    scores, maps = fitted.score(grey)
    assert scores.shape == (2,) and maps.shape == (2, SIDE, SIDE)


def test_fit_keeps_the_coreset_of_every_training_patch(fitted, train_images):
    assert fitted.memory_bank.shape == (coreset_size(6 * 8 * 8, 0.5), 384)
    every = torch.cat([fitted.embed(train_images[:4]), fitted.embed(train_images[4:])]).reshape(-1, 384)
    exact = torch.cdist(fitted.memory_bank, every, compute_mode="donot_use_mm_for_euclid_dist")
    assert (exact.min(1).values == 0).all()  # every bank row is a training patch


def test_score_shapes_including_a_non_square_input(fitted):
    scores, maps = fitted.score(torch.rand(3, 3, SIDE, 80))
    assert scores.shape == (3,) and maps.shape == (3, SIDE, 80)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()


def test_a_pasted_bright_square_scores_higher_than_a_training_image(fitted, train_images):
    clean = train_images[:1]
    bad = clean.clone()
    bad[:, :, SQUARE[0], SQUARE[1]] = 1.0
    scores, maps = fitted.score(torch.cat([clean, bad]))
    assert scores[1] > 5 * scores[0]
    inside_clean, inside_bad = maps[0][SQUARE], maps[1][SQUARE]
    assert (inside_bad > inside_clean).all() and inside_bad.mean() > 10 * inside_clean.mean()
    # the map peaks where the square is
    peak = divmod(maps[1].argmax().item(), SIDE)
    assert 16 <= peak[0] < 48 and 16 <= peak[1] < 48


def reference_scores(model: PatchCore, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """anomalib's PatchcoreModel inference written out with one (queries x bank) distance matrix."""
    emb = model.embed(images)
    b, h, w, d = emb.shape
    embedding = emb.reshape(-1, d)
    bank = model.memory_bank

    def nearest(x, k):
        dist = euclidean_dist(x, bank)
        return dist.min(1) if k == 1 else dist.topk(k=k, largest=False, dim=1)

    patch_scores, locations = nearest(embedding, 1)
    patch_scores, locations = patch_scores.reshape(b, -1), locations.reshape(b, -1)
    max_patches = torch.argmax(patch_scores, dim=1)
    max_patches_features = embedding.reshape(b, h * w, -1)[torch.arange(b), max_patches]
    score = patch_scores[torch.arange(b), max_patches]
    nn_index = locations[torch.arange(b), max_patches]
    _, support_samples = nearest(bank[nn_index, :], min(model.num_neighbors, bank.shape[0]))
    distances = euclidean_dist(max_patches_features.unsqueeze(1), bank[support_samples])
    weights = (1 - F.softmax(distances.squeeze(1), 1))[..., 0]
    return weights * score, patch_scores


def test_image_score_is_anomalibs_reweighting(fitted, train_images):
    images = torch.cat([smooth_images(2, seed=7), torch.rand(2, 3, SIDE, SIDE)])
    scores, _ = fitted.score(images)
    expected, patch_scores = reference_scores(fitted, images)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    assert (scores < patch_scores.amax(1)).all()  # the weight lies in (0, 1)
    fitted.num_neighbors = 1
    try:
        torch.testing.assert_close(fitted.score(images)[0], patch_scores.amax(1), rtol=1e-4, atol=1e-5)
    finally:
        fitted.num_neighbors = 9


def test_chunked_scoring_equals_unchunked(fitted):
    """Blocks of 7 queries x 7 bank rows: the k=9 neighbour search merges across blocks. The same nearest
    neighbours are found; distances agree to float32 rounding (|x|^2 - 2 x.y + |y|^2 with |x|^2 up to ~2e3
    here, summed by matrix products of other shapes)."""
    images = torch.cat([smooth_images(1, seed=8), torch.rand(1, 3, SIDE, SIDE)])
    queries = fitted.embed(images).reshape(-1, 384)
    whole = fitted._knn(queries, 1), fitted._knn(queries[:20], 9)
    whole_scores, whole_maps = fitted.score(images)
    fitted.chunk_size = 7
    try:
        blocks = fitted._knn(queries, 1), fitted._knn(queries[:20], 9)
        scores, maps = fitted.score(images)
    finally:
        fitted.chunk_size = 4096
    assert torch.equal(whole[0][1], blocks[0][1])  # the nearest bank patch of every query
    for (d, _), (bd, _) in zip(whole, blocks):  # (near-duplicate bank rows may swap places among the 9)
        torch.testing.assert_close(bd, d, rtol=1e-4, atol=5e-4)
    torch.testing.assert_close(scores, whole_scores, rtol=1e-4, atol=5e-4)
    torch.testing.assert_close(maps, whole_maps, rtol=1e-4, atol=5e-4)


def test_blockwise_neighbours_are_the_exact_ones():
    g = torch.Generator().manual_seed(4)
    model = make_model(chunk_size=16)
    model.memory_bank = torch.randn(100, 32, generator=g)
    queries = torch.randn(40, 32, generator=g)
    exact = torch.cdist(queries, model.memory_bank, compute_mode="donot_use_mm_for_euclid_dist")
    d, i = model._knn(queries, 9)
    ed, ei = exact.topk(9, dim=1, largest=False)
    assert torch.equal(i, ei)
    torch.testing.assert_close(d, ed, rtol=1e-4, atol=1e-4)
    d1, i1 = model._knn(queries, 1)
    assert torch.equal(i1[:, 0], ei[:, 0])


def test_state_dict_round_trip_keeps_the_bank_and_the_scores(fitted, tmp_path):
    torch.save(fitted.state_dict(), tmp_path / "patchcore.pt")
    fresh = PatchCore(FeatureExtractor("resnet18", weights_path=None, seed=1), coreset_ratio=0.5)
    assert fresh.memory_bank.numel() == 0
    with pytest.raises(RuntimeError, match="no memory bank"):
        fresh.score(torch.rand(1, 3, SIDE, SIDE))
    fresh.load_state_dict(torch.load(tmp_path / "patchcore.pt", weights_only=True))
    assert torch.equal(fresh.memory_bank, fitted.memory_bank)
    images = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    for a, b in zip(fresh.score(images), fitted.score(images)):
        assert torch.equal(a, b)


def test_fit_is_deterministic_and_needs_images(train_images):
    a, b = make_model().fit([train_images]), make_model().fit([train_images])
    assert torch.equal(a.memory_bank, b.memory_bank)
    with pytest.raises(ValueError, match="no training images"):
        make_model().fit([])


def test_blur_kernel_matches_anomalib_and_is_capped_on_tiny_maps(fitted):
    assert blur_kernel_size(4.0) == 33 and blur_kernel_size(1.0) == 9
    scores, maps = fitted.score(torch.rand(1, 3, 24, 24))  # a 33-pixel kernel cannot reflect-pad 24 pixels
    assert maps.shape == (1, 24, 24)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(train_images):
    idx = greedy_coreset(blobs().cuda(), 0.1, seed=0)
    assert idx.is_cuda and len(idx.unique()) == len(idx) == 120
    gpu = make_model(coreset_ratio=1.0).cuda().fit([train_images.cuda()])  # the whole bank: no near-tie choices
    cpu = make_model(coreset_ratio=1.0).fit([train_images])
    assert gpu.memory_bank.is_cuda
    images = torch.cat([smooth_images(1, seed=8), torch.rand(1, 3, SIDE, SIDE)])
    (sg, mg), (sc, mc) = gpu.score(images), cpu.score(images)  # the input moves to the model's device
    assert sg.is_cuda and mg.is_cuda
    torch.testing.assert_close(sg.cpu(), sc, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(mg.cpu(), mc, rtol=1e-3, atol=1e-3)
