import numpy as np
import pytest

from cnn.whitening import PCAWhitening


@pytest.fixture
def correlated(rng):
    """1000 8-d vectors with axis variances 8^2 .. 1^2, rotated: strongly correlated."""
    rotation = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    return (rng.standard_normal((1000, 8)) * np.arange(8, 0, -1)) @ rotation + 3.0


def test_kept_dimensions_are_the_top_components_whitened(correlated):
    whitening = PCAWhitening.learn(correlated, dim=3)
    assert (whitening.input_dim, whitening.output_dim) == (8, 3)
    projected = (correlated - whitening.mean) @ whitening.projection
    assert np.allclose(np.cov(projected, rowvar=False), np.eye(3), atol=1e-4)
    top = np.sort(np.linalg.eigvalsh(np.cov(correlated, rowvar=False)))[::-1][:3]
    directions = whitening.projection / np.linalg.norm(whitening.projection, axis=0)
    assert np.allclose(np.var(correlated @ directions, axis=0, ddof=1), top, rtol=1e-4)
    full = PCAWhitening.learn(correlated)
    assert np.allclose(np.abs(whitening.projection), np.abs(full.projection[:, :3]), atol=1e-5)
    out = whitening.apply(correlated[:20])
    assert out.shape == (20, 3) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_components_are_capped_by_the_training_set_and_small_ones_clamped(rng):
    few = PCAWhitening.learn(rng.standard_normal((5, 8)))
    assert few.output_dim == 4  # 5 points span 4 dimensions
    flat = np.c_[rng.standard_normal((200, 3)), np.zeros((200, 3))]  # 3 of 6 dimensions carry nothing
    whitening = PCAWhitening.learn(flat)
    assert whitening.output_dim == 6 and np.all(np.isfinite(whitening.projection))
    assert np.all(np.isfinite(whitening.apply(flat[:10])))


def test_state_round_trip_and_refusals(correlated):
    whitening = PCAWhitening.learn(correlated, dim=5)
    meta, arrays = whitening.state_dict()
    copy = PCAWhitening.from_state_dict(meta, arrays)
    assert np.array_equal(copy.mean, whitening.mean) and np.array_equal(copy.projection, whitening.projection)
    with pytest.raises(ValueError):
        PCAWhitening.from_state_dict({**meta, "kind": "dense-index"}, arrays)
    with pytest.raises(ValueError):
        PCAWhitening(whitening.mean[:7], whitening.projection)
    with pytest.raises(ValueError):
        PCAWhitening.learn(correlated[:1])


def _classes_with_nuisance(rng, n_classes=300, views=2):
    """Views of classes in 8-d, rotated by a known orthogonal map.

    Before the rotation: class centres vary along axes 0-3 (std 1, the discriminative
    directions); each view adds a within-class nuisance along axes 4, 5 (std 3, larger than
    the classes' spread) and small noise everywhere (std 0.1). Returns (x, pairs, rotation)
    with x = z @ rotation, pairs = the (view 0, view 1) rows of each class.
    """
    rotation = np.linalg.qr(rng.standard_normal((8, 8)))[0]
    centres = np.zeros((n_classes, 8))
    centres[:, :4] = rng.standard_normal((n_classes, 4))
    z = np.repeat(centres, views, axis=0) + rng.standard_normal((n_classes * views, 8)) * 0.1
    z[:, 4:6] += rng.standard_normal((n_classes * views, 2)) * 3.0
    pairs = np.arange(n_classes * views).reshape(n_classes, views)[:, :2]
    return z @ rotation + 0.5, pairs, rotation


def test_learned_whitening_makes_pair_differences_white_and_keeps_the_discriminative_directions(rng):
    x, pairs, rotation = _classes_with_nuisance(rng)
    lw = PCAWhitening.learn_from_pairs(x, pairs, eps=1e-6)
    assert lw.method == "learned" and (lw.input_dim, lw.output_dim) == (8, 8)
    differences = (x[pairs[:, 0]] - x[pairs[:, 1]]) @ lw.projection
    assert np.allclose(differences.T @ differences / len(differences), np.eye(8), atol=1e-6)
    # The four directions kept first are the class-centre axes: the rotation's rows 0-3 map
    # onto them, the nuisance rows 4 and 5 (3x the classes' spread) almost vanish there.
    top = lw.projection[:, :4]
    signal, nuisance = np.linalg.norm(rotation[:4] @ top), np.linalg.norm(rotation[4:6] @ top)
    assert nuisance < 0.05 * signal
    # PCA whitening keeps the largest variance instead: the nuisance first.
    pca = PCAWhitening.learn(x, dim=4)
    assert np.linalg.norm(rotation[4:6] @ pca.projection[:, :2]) > 10 * np.linalg.norm(rotation[:4] @ pca.projection[:, :2])
    # So matching views are nearest neighbours after Lw to 4 dims, much less after PCAw.
    def pair_recall(whitening):
        v = whitening.apply(x)
        nearest = np.argsort(-(v @ v.T) + 2 * np.eye(len(v)), axis=1)[:, 0]
        return np.mean(nearest[pairs[:, 0]] == pairs[:, 1])
    assert pair_recall(PCAWhitening.learn_from_pairs(x, pairs, dim=4)) > 0.6 > 0.1 > pair_recall(pca)  # measured 0.71, 0.02


def test_learned_whitening_with_few_pairs_stays_finite_and_round_trips(rng):
    x, pairs, _ = _classes_with_nuisance(rng, n_classes=3)  # 3 pairs: differences span 3 of 8 dims
    lw = PCAWhitening.learn_from_pairs(x, pairs, dim=4, population=np.r_[x, rng.standard_normal((50, 8))])
    assert lw.output_dim == 4 and np.all(np.isfinite(lw.projection))
    # clamping at eps * largest: no direction amplified more than eps^-1/2 x the least-amplified one
    singular = np.linalg.svd(PCAWhitening.learn_from_pairs(x, pairs, eps=1e-2).projection, compute_uv=False)
    assert singular.max() / singular.min() <= 10 + 1e-3
    meta, arrays = lw.state_dict()
    assert meta["method"] == "learned"
    copy = PCAWhitening.from_state_dict(meta, arrays)
    assert copy.method == "learned" and np.array_equal(copy.projection, lw.projection)
    pca_meta, _ = PCAWhitening.learn(x).state_dict()
    assert "method" not in pca_meta  # PCA states are written as before Lw existed
    with pytest.raises(ValueError, match="pair indices"):
        PCAWhitening.learn_from_pairs(x, [[0, len(x)]])
    with pytest.raises(ValueError, match="unknown whitening method"):
        PCAWhitening.from_state_dict({**meta, "method": "zca"}, arrays)


def test_mutual_nearest_rows_pair_the_same_regions_of_two_views(rng):
    """Image 1 holds image 0's regions shuffled and slightly perturbed, plus two outliers; image 2
    is unrelated. The mutual nearest rows of pair (0, 1) are exactly the shuffled correspondences."""
    from cnn.pooling import l2_normalize
    from cnn.whitening import mutual_nearest_rows
    first = l2_normalize(rng.standard_normal((6, 16)))
    order = rng.permutation(6)
    second = l2_normalize(np.vstack([first[order] + 0.05 * rng.standard_normal((6, 16)),
                                     rng.standard_normal((2, 16))]))
    rows = [first, second, l2_normalize(rng.standard_normal((4, 16)))]
    found = mutual_nearest_rows(rows, np.array([[0, 1]]))
    assert sorted(map(tuple, found.tolist())) == sorted((int(order[k]), 6 + k) for k in range(6))


def test_regional_learned_whitening_on_a_sample_approaches_the_full_one(rng):
    """Local features: the PCA step on a sample of the regions, ``dim`` kept. Matching views share
    their regions up to a strong nuisance direction: after Lw, with the whole population or a 60%
    sample alike, the same region of two views lies much closer, relative to other regions,
    than after PCA whitening."""
    from cnn.pooling import l2_normalize
    from cnn.whitening import mutual_nearest_rows, regional_learned_whitening
    base = rng.standard_normal((40, 30, 12))
    nuisance = np.zeros(12)
    nuisance[0] = 3.0
    rows = [l2_normalize(base[i // 2] + rng.standard_normal((30, 1)) * nuisance + 0.1 * rng.standard_normal((30, 12)))
            for i in range(80)]
    pairs = np.array([[2 * k, 2 * k + 1] for k in range(40)])
    assert np.array_equal(regional_learned_whitening(rows, pairs).projection, PCAWhitening.learn_from_pairs(
        np.concatenate(rows), mutual_nearest_rows(rows, pairs)).projection)  # the closed form, unchanged
    sampled = regional_learned_whitening(rows, pairs, dim=6, population=1440)
    assert (sampled.input_dim, sampled.output_dim) == (12, 6)

    def same_over_other(whitening):  # distance of a region to itself in the other view / to other regions
        first, second = whitening.apply(np.concatenate(rows[0::2])), whitening.apply(np.concatenate(rows[1::2]))
        other = np.roll(second, 7, axis=0)
        return np.linalg.norm(first - second, axis=1).mean() / np.linalg.norm(first - other, axis=1).mean()

    pca = same_over_other(PCAWhitening.learn(np.concatenate(rows), dim=6))
    whole = same_over_other(regional_learned_whitening(rows, pairs, dim=6))
    assert whole < pca / 2 and abs(same_over_other(sampled) - whole) < 0.2 * whole
