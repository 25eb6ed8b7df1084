import os

import numpy as np
import pytest

from bovw.images import ImageOptions, load_image
from cnn.backbone import BackboneOptions
from cnn.local_features import ConvLocalOptions, conv_local_features, conv_local_from_image, strongest


def test_one_feature_per_cell_in_row_major_order(rng):
    """A 3x4 map (not square, so rows and columns cannot be swapped unnoticed)."""
    local_map = rng.random((5, 3, 4)).astype(np.float32)
    features = conv_local_features(local_map, stride=16, image_size=(48, 64))
    assert len(features) == 12 and features.image_size == (48, 64)
    for i, (x, y, scale, angle) in enumerate(features.keypoints):
        row, col = divmod(i, 4)
        assert (x, y, scale, angle) == ((col + 0.5) * 16, (row + 0.5) * 16, 16, 0)
        cell = local_map[:, row, col]
        assert np.allclose(features.descriptors[i], cell / np.linalg.norm(cell), atol=1e-3)  # float16 precision
    assert np.allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-3)


def test_fractional_stride_and_zero_cells():
    """An up-scaled image gives a fractional stride; an all-zero cell keeps a zero descriptor."""
    local_map = np.ones((2, 2, 2), np.float32)
    local_map[:, 1, 0] = 0
    features = conv_local_features(local_map, stride=7.5, image_size=(15, 15))
    assert features.keypoints[:, :2].tolist() == [[3.75, 3.75], [11.25, 3.75], [3.75, 11.25], [11.25, 11.25]]
    assert np.array_equal(features.descriptors[2], [0, 0]) and np.all(np.isfinite(features.descriptors))


@pytest.fixture(scope="module")
def photo(data_dir):
    return load_image(os.path.join(data_dir, "ukbench", "ukbench00008.jpg"), ImageOptions(), color=True)


def test_a_shifted_crop_matches_the_same_places(photo):
    """Real backbone: a crop starting 64 px (4 cells) to the right. Away from the
    borders, each crop descriptor's nearest neighbour in the full image is the
    feature whose keypoint lies at the same place of the scene (x + 64, same y)."""
    full, crop = conv_local_from_image(photo), conv_local_from_image(photo[:, 64:])
    assert (len(full), len(crop)) == (15 * 20, 15 * 16)
    assert np.allclose(np.linalg.norm(full.descriptors, axis=1), 1.0, atol=1e-3)
    x, y = crop.keypoints[:, 0], crop.keypoints[:, 1]
    inner = (x > 32) & (x < 256 - 32) & (y > 32) & (y < 240 - 32)
    nearest = np.argmax(crop.descriptors[inner] @ full.descriptors.T, axis=1)
    same_place = np.all(full.keypoints[nearest, :2] == crop.keypoints[inner, :2] + [64, 0], axis=1)
    assert inner.sum() == 11 * 12 and same_place.mean() > 0.8


def test_upscaled_input_gives_keypoints_in_the_original_pixels(photo):
    """Up-scaled to 640 px, the map has twice the cells and the stride halves to 8 image pixels."""
    features = conv_local_from_image(photo, ConvLocalOptions(BackboneOptions(max_side=640, upscale=True)))
    assert len(features) == 30 * 40 and features.image_size == (240, 320)
    assert tuple(features.keypoints[0]) == (4, 4, 8, 0) and tuple(features.keypoints[-1, :2]) == (316, 236)


def test_conv_descriptors_survive_the_feature_cache_exactly(tmp_path, rng):
    """Conv descriptors carry float16 precision, which is what the cache stores: a build from the
    cache and one from fresh extraction see the same numbers."""
    from bovw.feature_cache import FeatureCache
    image = tmp_path / "image.png"
    image.write_bytes(b"x")
    features = conv_local_features(rng.random((16, 3, 4)).astype(np.float32), 16, (48, 64))
    cache = FeatureCache(str(tmp_path / "cache"), "conv-test")
    cache.put(str(image), features)
    assert np.array_equal(cache.get(str(image)).descriptors, features.descriptors)


def test_strongest_keeps_the_largest_norms_in_extraction_order():
    norms = np.array([0.5, 2.0, 1.0, 2.0, 0.1])
    assert strongest(norms, 3).tolist() == [1, 2, 3]
    assert strongest(norms, 1).tolist() == [1]  # a tie goes to the earlier position
    assert strongest(norms, None).tolist() == strongest(norms, 9).tolist() == [0, 1, 2, 3, 4]


def test_attention_selection_keeps_the_strongest_positions_over_all_scales(photo):
    """Real backbone, scales (1, 0.5): the 100 kept features are the full extraction's features of
    largest activation norm (recomputed here from the maps), with their keypoints, from both scales."""
    from cnn.backbone import get_backbone
    scales = (1.0, 0.5)
    full = conv_local_from_image(photo, ConvLocalOptions(scales=scales))
    kept = conv_local_from_image(photo, ConvLocalOptions(scales=scales, max_features=100))
    norms = np.linalg.norm(get_backbone().feature_maps(photo)["local"].reshape(672, -1), axis=0)
    assert len(full) == 15 * 20 + 7 * 10 and len(kept) == 100
    index = [np.flatnonzero(np.all(full.keypoints == k, axis=1))[0] for k in kept.keypoints]
    assert index == sorted(index) and np.array_equal(full.descriptors[index], kept.descriptors)
    assert {16.0, 32.0} == set(kept.keypoints[:, 2].tolist())
    # a kept position of the full-scale map is among that map's 100 strongest
    assert {i for i in index if i < 300} <= set(np.argsort(-norms)[:100].tolist())


def test_a_stride_32_layer_gives_keypoints_on_its_own_grid_and_a_distinct_cache_key(photo):
    """The head map as BLCF's layer: 7x10 positions of the 1280-d map, keypoints at stride 32."""
    options = ConvLocalOptions(layer="head")
    features = conv_local_from_image(photo, options)
    assert len(features) == 7 * 10 and features.descriptors.shape[1] == 1280
    assert tuple(features.keypoints[0]) == (16, 16, 32, 0)
    assert options.key != ConvLocalOptions().key
    with pytest.raises(ValueError, match="unknown conv layer 'conv5'"):
        ConvLocalOptions(layer="conv5")
