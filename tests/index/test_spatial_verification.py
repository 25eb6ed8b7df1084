import os

import cv2
import numpy as np
import pytest

from bovw.features import extract_sift
from bovw.vocabulary import VocabularyConfig, VocabularyTree
from index.spatial_verification import ESTIMATORS, VerificationConfig, fit_homography, verify_pair, word_correspondences


@pytest.fixture(scope="module")
def homography_words(data_dir):
    """Features of the homography pairs quantized with a 1000-word tree trained on them."""
    folder = os.path.join(data_dir, "homography")
    names = ["graf1.png", "graf3.png", "box.png", "box_in_scene.png", "leuvenA.jpg"]
    features = {n: extract_sift(os.path.join(folder, n)) for n in names}
    tree = VocabularyTree.train(np.concatenate([f.descriptors for f in features.values()]),
                                VocabularyConfig(branching=10, depth=3), verbose=False)
    return {n: (f, tree.quantize(f.descriptors, beam=3)) for n, f in features.items()}


def _true_homography(data_dir):
    storage = cv2.FileStorage(os.path.join(data_dir, "homography", "H1to3p.xml"), cv2.FILE_STORAGE_READ)
    return storage.getNode("H13").mat()


@pytest.mark.parametrize("estimator", ["similarity-lo", "magsac"])
def test_graf_homography_maps_corners_within_a_few_pixels(homography_words, data_dir, estimator):
    (a, wa), (b, wb) = homography_words["graf1.png"], homography_words["graf3.png"]
    result = verify_pair(a.keypoints, wa, b.keypoints, wb, VerificationConfig(estimator=estimator))
    assert result.inliers >= 100
    height, width = a.image_size
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64).reshape(-1, 1, 2)
    error = np.linalg.norm(cv2.perspectiveTransform(corners, result.homography)
                           - cv2.perspectiveTransform(corners, _true_homography(data_dir)), axis=2)
    assert error.max() < 8.0, error


def test_box_is_found_in_the_scene_and_unrelated_pair_is_not(homography_words):
    config = VerificationConfig()
    (box, wbox), (scene, wscene) = homography_words["box.png"], homography_words["box_in_scene.png"]
    found = verify_pair(box.keypoints, wbox, scene.keypoints, wscene, config)
    assert found.inliers >= 3 * config.min_inliers
    (graf, wgraf) = homography_words["graf1.png"]
    unrelated = verify_pair(box.keypoints, wbox, graf.keypoints, wgraf, config)
    assert unrelated.inliers < config.min_inliers


def test_word_correspondences_pair_shared_words_with_a_cap():
    pairs = word_correspondences(np.array([5, 1, 5, 9]), np.array([5, 7, 1, 5, 5]), max_pairs_per_word=4)
    as_set = {tuple(p) for p in pairs.tolist()}
    assert (1, 2) in as_set and len(pairs) == 1 + 4
    assert all(np.array([5, 1, 5, 9])[q] == np.array([5, 7, 1, 5, 5])[d] for q, d in pairs)
    assert word_correspondences(np.array([1]), np.array([2])).shape == (0, 2)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_too_few_matches_are_rejected(n):
    keypoints = np.random.default_rng(0).random((n, 4)).astype(np.float32) * 100
    words = np.arange(n)
    result = verify_pair(keypoints, words, keypoints, words)
    assert result.inliers == 0 and result.homography is None


def test_collinear_points_are_rejected():
    t = np.linspace(0, 300, 40)
    keypoints = np.stack([t, 2 * t + 5, np.ones(40), np.zeros(40)], axis=1).astype(np.float32)
    words = np.arange(40)
    assert verify_pair(keypoints, words, keypoints, words).inliers == 0


def test_mirrored_match_is_rejected():
    rng = np.random.default_rng(1)
    keypoints = np.c_[rng.random((60, 2)) * 300, np.ones((60, 2))].astype(np.float32)
    mirrored = keypoints.copy()
    mirrored[:, 0] = 300 - mirrored[:, 0]
    words = np.arange(60)
    assert verify_pair(keypoints, words, keypoints, words).inliers == 60
    assert verify_pair(keypoints, words, mirrored, words).inliers == 0


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_estimator_finds_the_box(homography_words, estimator):
    (a, wa), (b, wb) = homography_words["box.png"], homography_words["box_in_scene.png"]
    config = VerificationConfig(estimator=estimator, max_iterations=20000)
    assert verify_pair(a.keypoints, wa, b.keypoints, wb, config).inliers >= config.min_inliers


def test_squashed_map_is_rejected():
    rng = np.random.default_rng(2)
    keypoints = np.c_[rng.random((60, 2)) * 300, np.ones((60, 2))].astype(np.float32)
    squashed = keypoints.copy()
    squashed[:, 1] *= 0.05  # 20x anisotropy: no real view change does this
    words = np.arange(60)
    assert verify_pair(keypoints, words, squashed, words).inliers == 0


def test_hamming_filtered_correspondences_are_cleaner(homography_words, data_dir):
    from bovw.hamming import HammingEmbedding
    from index.spatial_verification import hamming_filter
    (a, wa), (b, wb) = homography_words["graf1.png"], homography_words["graf3.png"]
    descriptors = np.concatenate([f.descriptors for f, _ in homography_words.values()])
    words = np.concatenate([w for _, w in homography_words.values()])
    he = HammingEmbedding.learn(descriptors, words, n_words=1000)
    pairs = word_correspondences(wa, wb)
    filtered = hamming_filter(pairs, wa, wb, he.signatures(a.descriptors, wa), he.signatures(b.descriptors, wb), 24)
    truth = _true_homography(data_dir)

    def inlier_ratio(p):
        projected = cv2.perspectiveTransform(a.keypoints[p[:, 0], None, :2].astype(np.float64), truth)[:, 0]
        return np.mean(np.linalg.norm(projected - b.keypoints[p[:, 1], :2], axis=1) < 6)

    assert 0 < len(filtered) < len(pairs)
    assert inlier_ratio(filtered) > 2 * inlier_ratio(pairs)


def test_least_squares_homography_recovers_a_known_map(rng):
    truth = np.array([[0.9, 0.1, 12.0], [-0.05, 1.1, -7.0], [1e-4, 2e-4, 1.0]])
    src = rng.uniform(0, 300, (30, 2))
    dst = cv2.perspectiveTransform(src.reshape(-1, 1, 2), truth).reshape(-1, 2)
    assert np.allclose(fit_homography(src, dst), truth, atol=1e-6)
    noisy = fit_homography(src, dst + rng.normal(0, 0.5, dst.shape))
    error = cv2.perspectiveTransform(src.reshape(-1, 1, 2), noisy).reshape(-1, 2) - dst
    assert np.abs(error).max() < 2.0
