import os

import cv2
import numpy as np

from bovw.features import LocalFeatures, SiftOptions, extract_sift, root_sift, sift_from_array


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


def test_max_features_keeps_the_strongest(data_dir):
    path = os.path.join(data_dir, "homography", "graf1.png")
    everything = extract_sift(path)
    limited = extract_sift(path, SiftOptions(max_features=100))
    assert len(limited) == 100
    assert np.allclose(limited.keypoints, everything.keypoints[:100])


def test_flat_image_has_no_features():
    features = sift_from_array(np.full((200, 300), 128, np.uint8))
    assert len(features) == 0 and features.descriptors.shape == (0, 128)
    assert isinstance(features, LocalFeatures)
