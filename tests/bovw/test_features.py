import dataclasses
import os

import cv2
import numpy as np
import pytest

from bovw.features import (DESCRIBE_ALL_PIXELS_PER_FEATURE, GRID, LocalFeatures, SiftOptions, _describe,
                           _octaves, extract_sift, root_sift, select_features, sift_from_array)
from bovw.images import ImageOptions, load_image

#: The pipelines' detector settings (cbir.pipelines.SIFT_FEATURES) without a budget.
PIPELINE_SIFT = SiftOptions(root=True, contrast_threshold=0.005)


def test_root_sift_is_hellinger_embedding(rng):
    a, b = rng.random((2, 128)).astype(np.float32) * 100
    ra, rb = root_sift(np.stack([a, b]))
    hellinger = np.sum(np.sqrt((a / a.sum()) * (b / b.sum())))
    assert np.isclose(ra @ rb, hellinger, atol=1e-5)
    assert np.allclose(np.linalg.norm(root_sift(np.stack([a, b])), axis=1), 1.0, atol=1e-5)


def test_root_sift_keeps_zero_rows():
    out = root_sift(np.zeros((2, 128), np.float32))
    assert np.all(out == 0) and np.all(np.isfinite(out))


def test_sift_keypoints_carry_geometry(data_dir):
    features = extract_sift(os.path.join(data_dir, "homography", "graf1.png"))
    assert len(features) > 500
    assert features.descriptors.shape == (len(features), 128)
    x, y, scale, angle = features.keypoints.T
    height, width = features.image_size
    assert x.min() >= 0 and x.max() < width and y.min() >= 0 and y.max() < height
    assert scale.min() > 0 and np.all(np.abs(angle) <= 2 * np.pi)
    assert np.allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-4)


def test_rootsift_equals_root_of_opencv_sift(data_dir):
    gray = cv2.imread(os.path.join(data_dir, "homography", "box.png"), cv2.IMREAD_GRAYSCALE)
    plain = sift_from_array(gray, SiftOptions(root=False))
    rooted = sift_from_array(gray, SiftOptions(root=True))
    assert np.allclose(plain.keypoints, rooted.keypoints)
    # RootSIFT of the L2-normalised SIFT equals RootSIFT of the raw one (L1 normalisation inside).
    assert np.allclose(root_sift(plain.descriptors), rooted.descriptors, atol=1e-5)


def test_zero_spread_keeps_the_strongest(data_dir):
    path = os.path.join(data_dir, "homography", "graf1.png")
    everything = extract_sift(path)
    limited = extract_sift(path, SiftOptions(max_features=100, spread=0.0))
    assert len(limited) == 100
    assert np.array_equal(limited.keypoints, everything.keypoints[:100])
    assert np.array_equal(limited.descriptors, everything.descriptors[:100])


def _rows(features: LocalFeatures) -> dict:
    return {row.tobytes(): i for i, row in enumerate(features.keypoints)}


@pytest.fixture(scope="module")
def photo(data_dir):
    """(h, w) uint8: a Sacre-Coeur photo at 640 px (about 5,000 features at threshold 0.005)."""
    path = sorted(os.listdir(os.path.join(data_dir, "sacre_coeur")))[0]
    return load_image(os.path.join(data_dir, "sacre_coeur", path), ImageOptions(max_side=640))


# 1500: described whole, then selected; 300 and 200: selected, then described.
@pytest.mark.parametrize("budget,spread,describe_all", [(1500, 0.5, True), (300, 1.0, False), (200, 0.0, False)])
def test_budget_keeps_a_subset_of_the_features(photo, budget, spread, describe_all):
    assert (photo.size <= DESCRIBE_ALL_PIXELS_PER_FEATURE * budget) == describe_all
    everything = sift_from_array(photo, PIPELINE_SIFT)
    budgeted = sift_from_array(photo, dataclasses.replace(PIPELINE_SIFT, max_features=budget, spread=spread))
    assert len(everything) > 2 * budget and len(budgeted) == budget
    rows = _rows(everything)
    at = np.array([rows[row.tobytes()] for row in budgeted.keypoints])
    assert np.all(np.diff(at) > 0)  # still in decreasing response order
    assert np.array_equal(budgeted.descriptors, everything.descriptors[at])


def test_describing_a_selection_pins_the_upsampled_octave(photo):
    """OpenCV builds the pyramid of ``compute`` from the lowest octave it is given: keypoints
    of octave 0 and above alone would get other descriptors than ``detectAndCompute`` gives."""
    sift = cv2.SIFT_create(contrastThreshold=0.005)
    detected, descriptors = sift.detectAndCompute(photo, None)
    coarse = np.flatnonzero(_octaves(detected) >= 0)
    assert 0 < len(coarse) < len(detected)
    _, unpinned = sift.compute(photo, [detected[i] for i in coarse])
    assert not np.array_equal(unpinned, descriptors[coarse])
    assert np.array_equal(_describe(sift, photo, [detected[i] for i in coarse], detected), descriptors[coarse])


def test_benchmark_images_keep_all_their_features(data_dir):
    """Holidays/UKBench images (~320x240, 930 features on average) stay below a budget of 2500:
    identical features, so the benchmark scores cannot change. Holidays 103100.png (400x300) has
    the most of the 1,811 images, 2,365; ukbench00040.jpg the most of UKBench, 1,974."""
    paths = [os.path.join(data_dir, "holidays", name) for name in ("100000.jpg", "103100.png", "127900.jpg")]
    paths += [os.path.join(data_dir, "ukbench", f"ukbench{i:05d}.jpg") for i in (0, 40, 998)]
    budgeted_options = dataclasses.replace(PIPELINE_SIFT, max_features=2500)
    for path in paths:
        everything, budgeted = extract_sift(path, PIPELINE_SIFT), extract_sift(path, budgeted_options)
        assert 300 < len(everything) < 2500
        assert np.array_equal(budgeted.keypoints, everything.keypoints)
        assert np.array_equal(budgeted.descriptors, everything.descriptors)


def _half_textured(seed: int = 0) -> np.ndarray:
    """(480, 640) uint8: strong random texture on the left half, faint texture on the right."""
    rng = np.random.default_rng(seed)
    blocks = cv2.resize(rng.random((60, 80)), (640, 480), interpolation=cv2.INTER_NEAREST)
    contrast = np.where(np.arange(640) < 320, 120.0, 12.0)
    return np.clip(128 + (blocks - 0.5) * 2 * contrast, 0, 255).astype(np.uint8)


def _cell_counts(features: LocalFeatures) -> np.ndarray:
    """(GRID * GRID,) features per cell of the grid of ``select_features``."""
    height, width = features.image_size
    column = np.minimum(features.keypoints[:, 0] * GRID // width, GRID - 1)
    row = np.minimum(features.keypoints[:, 1] * GRID // height, GRID - 1)
    return np.bincount((row * GRID + column).astype(int), minlength=GRID * GRID)


def test_spread_keeps_features_in_weakly_textured_regions():
    image = _half_textured()
    budget = 1000
    everything = sift_from_array(image, PIPELINE_SIFT)
    right = everything.keypoints[:, 0] >= 320
    assert len(everything) > 2 * budget and (~right).sum() > budget and right.sum() > budget // 2
    spread = sift_from_array(image, dataclasses.replace(PIPELINE_SIFT, max_features=budget))
    strongest = sift_from_array(image, dataclasses.replace(PIPELINE_SIFT, max_features=budget, spread=0.0))
    assert len(spread) == len(strongest) == budget
    assert (strongest.keypoints[:, 0] >= 320).sum() <= 10
    # Every cell keeps its strongest min(quota, count): quota = 0.5 * budget / (2 * GRID**2) = 3.
    quota = int(0.5 * budget / (2 * GRID * GRID))
    assert quota == 3 and np.all(_cell_counts(spread) >= np.minimum(_cell_counts(everything), quota))
    assert (spread.keypoints[:, 0] >= 320).sum() >= quota * GRID * GRID // 2


def test_select_features_quotas():
    """Cells and octaves keep their strongest; the rest of the budget goes by response."""
    rng = np.random.default_rng(0)
    n = 2000
    # Response order: the first 1000 are in the top-left cell, octave -1.
    xy = np.where(np.arange(n)[:, None] < 1000, rng.random((n, 2)) * 10, rng.random((n, 2)) * 800)
    octaves = np.where(np.arange(n) < 1000, -1, rng.integers(0, 5, n))
    budget = 512
    keep = select_features(xy, octaves, (800, 800), budget, spread=0.5)
    assert len(keep) == budget and np.all(np.diff(keep) > 0)
    assert np.array_equal(select_features(xy, octaves, (800, 800), budget, spread=0.0), np.arange(budget))
    assert np.array_equal(select_features(xy, octaves, (800, 800), 0), np.arange(n))
    assert np.array_equal(select_features(xy, octaves, (800, 800), n), np.arange(n))
    col, row = (xy[keep] * GRID // 800).astype(int).T
    per_cell = np.bincount(row * GRID + col, minlength=GRID * GRID)
    assert per_cell.min() >= 2  # 0.5 * 512 / 128
    assert np.all(np.bincount(octaves[keep] + 1) >= 16)  # 0.5 * 512 / 16 per octave
    # The quotas take at most half the budget; the rest goes to the strongest, all in the crowded cell.
    crowded = keep[keep < 1000]
    assert len(crowded) >= budget // 2 and np.array_equal(crowded, np.arange(len(crowded)))


def test_budget_changes_the_key():
    keys = {SiftOptions().key, SiftOptions(max_features=100).key, SiftOptions(max_features=100, spread=0.0).key}
    assert len(keys) == 3
    # Without a budget the key is the one caches were written with before the budget existed.
    assert PIPELINE_SIFT.key == "sift-v1-root1-max0-c0.005-e10.0-side1024"
    with pytest.raises(ValueError):
        SiftOptions(spread=1.5)


def test_flat_image_has_no_features():
    features = sift_from_array(np.full((200, 300), 128, np.uint8))
    assert len(features) == 0 and features.descriptors.shape == (0, 128)
    assert isinstance(features, LocalFeatures)


#: The largest Holidays/UKBench image (400 x 300 pixels) as the reference of the size-dependent threshold.
ADAPTIVE_SIFT = dataclasses.replace(PIPELINE_SIFT, contrast_reference_pixels=400 * 300, contrast_growth=0.5)


def test_contrast_threshold_rises_with_the_pixel_count_above_the_reference():
    assert ADAPTIVE_SIFT.contrast_threshold_for((240, 320)) == 0.005
    assert ADAPTIVE_SIFT.contrast_threshold_for((300, 400)) == 0.005
    # 4 times the reference's pixels: twice the threshold with growth 0.5, 4 times with growth 1.
    assert np.isclose(ADAPTIVE_SIFT.contrast_threshold_for((600, 800)), 0.01)
    area = dataclasses.replace(ADAPTIVE_SIFT, contrast_growth=1.0)
    assert np.isclose(area.contrast_threshold_for((600, 800)), 0.02)
    assert PIPELINE_SIFT.contrast_threshold_for((768, 1024)) == 0.005  # no reference: one threshold
    with pytest.raises(ValueError):
        SiftOptions(contrast_reference_pixels=-1)


def test_size_dependent_threshold_keeps_small_images_and_drops_weak_features_of_photos(data_dir):
    """The 400 x 300 and 320 x 240 benchmark images get exactly their features; a 1024-px photo
    loses weak features only (the rest identical, descriptors included)."""
    for name in ("holidays/103100.png", "holidays/100000.jpg", "ukbench/ukbench00040.jpg"):
        path = os.path.join(data_dir, name)
        fixed, adaptive = extract_sift(path, PIPELINE_SIFT), extract_sift(path, ADAPTIVE_SIFT)
        assert len(fixed) > 500
        assert np.array_equal(adaptive.keypoints, fixed.keypoints)
        assert np.array_equal(adaptive.descriptors, fixed.descriptors)
    path = os.path.join(data_dir, "sacre_coeur", sorted(os.listdir(os.path.join(data_dir, "sacre_coeur")))[0])
    fixed, adaptive = extract_sift(path, PIPELINE_SIFT), extract_sift(path, ADAPTIVE_SIFT)
    assert ADAPTIVE_SIFT.contrast_threshold_for(fixed.image_size) > 2 * 0.005
    assert len(adaptive) < 0.97 * len(fixed)
    rows = _rows(fixed)
    at = np.array([rows[row.tobytes()] for row in adaptive.keypoints])
    assert np.all(np.diff(at) > 0)
    assert np.array_equal(adaptive.descriptors, fixed.descriptors[at])
    # What is dropped is weak: most of it comes from the weakest half of the fixed threshold's features.
    dropped = np.setdiff1d(np.arange(len(fixed)), at)
    assert np.mean(dropped >= len(fixed) // 2) > 0.9


def test_size_dependent_threshold_changes_the_key():
    assert ADAPTIVE_SIFT.key != PIPELINE_SIFT.key
    assert ADAPTIVE_SIFT.key != dataclasses.replace(ADAPTIVE_SIFT, contrast_growth=1.0).key
