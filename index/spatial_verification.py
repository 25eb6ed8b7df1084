"""Geometric verification of a candidate image against the query (Philbin et al. 2007).

Tentative correspondences come from the stored keypoints and visual words: two
features correspond when they share a word, so database descriptors are never
needed. A homography is fitted to them with RANSAC (OpenCV ``findHomography``,
RANSAC or a USAC variant such as MAGSAC++); degenerate models (too few
correspondences, inliers on a line, a mirror or collapsed map) are rejected.

The default estimator, ``similarity-lo``, is Philbin et al.'s: every tentative
correspondence, with the keypoints' scales and orientations, is a one-point
similarity hypothesis; the one with most inliers is refined by least-squares
homography fits on its inliers (local optimisation). It is deterministic and,
unlike plain RANSAC, insensitive to a low inlier ratio. Its loops (shared-word
pairs, hypothesis voting, normalised-DLT fits, transfer errors) are compiled
with numba: about 0.5 ms per image pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numba
import numpy as np

from bovw.hamming import hamming_distance

#: ``VerificationConfig.estimator`` name -> OpenCV ``findHomography`` method.
ESTIMATORS = {"similarity-lo": None, "ransac": cv2.RANSAC, "magsac": cv2.USAC_MAGSAC, "usac-default": cv2.USAC_DEFAULT,
              "usac-accurate": cv2.USAC_ACCURATE}


#: Largest ratio of the homography's linear part's singular values accepted.
MAX_ANISOTROPY = 10.0


@dataclass(frozen=True)
class VerificationConfig:
    """Spatial verification settings.

    Attributes:
        estimator: a key of ``ESTIMATORS``.
        reprojection_error: inlier threshold in pixels (of the database image).
        max_iterations: RANSAC iterations (OpenCV estimators).
        max_hypotheses: one-point hypotheses tried (``similarity-lo``); beyond
            this, an evenly spaced subset of the correspondences.
        refinements: least-squares homography re-fits (``similarity-lo``).
        confidence: RANSAC confidence.
        max_pairs_per_word: cap on the pairs one shared word contributes
            (bursty words otherwise flood the correspondences).
        min_inliers: fewer inliers than this leaves an image unverified.
        top_k: candidates re-ranked (from the top of the initial ranking).
        refine: re-fit the homography to all inliers by least squares.
    """

    estimator: str = "similarity-lo"
    reprojection_error: float = 6.0
    max_iterations: int = 2000
    max_hypotheses: int = 400
    refinements: int = 4
    confidence: float = 0.995
    max_pairs_per_word: int = 4
    min_inliers: int = 5
    top_k: int = 100
    refine: bool = True


@dataclass
class Verification:
    """Outcome of verifying one pair.

    Attributes:
        inliers: number of one-to-one inlier correspondences (0 if rejected).
        homography: (3, 3) float64 mapping query points to database points, or None.
        matches: (m, 2) int64 inlier (query feature, database feature) indices.
    """

    inliers: int
    homography: np.ndarray | None
    matches: np.ndarray


def word_correspondences(query_words: np.ndarray, database_words: np.ndarray,
                         max_pairs_per_word: int = 4) -> np.ndarray:
    """Pairs of features that share a visual word.

    Args:
        query_words: (n,) or (n, k) int word ids per query feature (k words under
            multiple assignment: a pair forms when any of them matches).
        database_words: (m,) int word id per database feature.
        max_pairs_per_word: keep at most this many pairs per shared word.

    Returns:
        (p, 2) int64 (query index, database index) pairs, without repeats.
    """
    query_words = np.asarray(query_words, np.int64)
    owner = np.repeat(np.arange(len(query_words)), query_words.size // max(len(query_words), 1))
    database_words = np.asarray(database_words, np.int64)
    return _shared_word_pairs(query_words.ravel(), owner, database_words, max_pairs_per_word)


@numba.njit(cache=True, nogil=True)
def _shared_word_pairs(query_words, owner, database_words, cap):
    """(p, 2) int64 (owner[i], j) for query entries i and database features j of one word,
    at most ``cap`` per word, cycling through both sides' features (merge join); sorted, unique."""
    q_order = np.argsort(query_words, kind="mergesort")
    d_order = np.argsort(database_words, kind="mergesort")
    out = np.empty((min(len(query_words) * cap, len(query_words) * len(database_words)), 2), np.int64)
    n, i, j = 0, 0, 0
    while i < len(q_order) and j < len(d_order):
        qw, dw = query_words[q_order[i]], database_words[d_order[j]]
        if qw < dw:
            i += 1
        elif dw < qw:
            j += 1
        else:
            i_end, j_end = i, j
            while i_end < len(q_order) and query_words[q_order[i_end]] == qw:
                i_end += 1
            while j_end < len(d_order) and database_words[d_order[j_end]] == qw:
                j_end += 1
            nq, nd = i_end - i, j_end - j
            for k in range(min(nq * nd, cap)):
                out[n, 0] = owner[q_order[i + k % nq]]
                out[n, 1] = d_order[j + (k // nq) % nd]
                n += 1
            i, j = i_end, j_end
    # Sort by (query, database) and drop repeats, through one key per pair.
    stride = max(len(database_words), 1)
    keys = np.unique(out[:n, 0] * stride + out[:n, 1])
    pairs = np.empty((len(keys), 2), np.int64)
    pairs[:, 0] = keys // stride
    pairs[:, 1] = keys % stride
    return pairs


def _is_degenerate(homography: np.ndarray, src: np.ndarray, dst: np.ndarray) -> bool:
    """Mirror, collapse or explosion of the map, or inliers (nearly) on a line."""
    if homography is None or not np.all(np.isfinite(homography)) or len(src) < 4:
        return True
    h = homography / homography[2, 2] if abs(homography[2, 2]) > 1e-12 else homography
    det = np.linalg.det(h[:2, :2])
    if det <= 0 or not 1e-3 < det < 1e3:
        return True
    # A real view change stretches one direction at most ~10x more than the other;
    # consensus among random matches typically fits a map squashed 30x or more.
    singular = np.linalg.svd(h[:2, :2], compute_uv=False)
    if singular[0] > MAX_ANISOTROPY * singular[1]:
        return True
    # The plane must stay in front of the camera where the inliers are.
    if np.any(np.c_[src, np.ones(len(src))] @ h[2] <= 0):
        return True
    for points in (src, dst):
        spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
        if spread[0] == 0 or spread[1] / spread[0] < 0.02:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _transfer_error(homography, src, dst):
    """(n,) distance in pixels between ``homography(src)`` and ``dst`` (inf behind the camera)."""
    errors = np.empty(len(src))
    for i in range(len(src)):
        w = homography[2, 0] * src[i, 0] + homography[2, 1] * src[i, 1] + homography[2, 2]
        if w == 0.0:
            errors[i] = np.inf
            continue
        x = (homography[0, 0] * src[i, 0] + homography[0, 1] * src[i, 1] + homography[0, 2]) / w
        y = (homography[1, 0] * src[i, 0] + homography[1, 1] * src[i, 1] + homography[1, 2]) / w
        errors[i] = np.hypot(x - dst[i, 0], y - dst[i, 1])
    return errors


def similarity_lo(src: np.ndarray, dst: np.ndarray, src_shape: np.ndarray, dst_shape: np.ndarray,
                  config: VerificationConfig) -> tuple[np.ndarray | None, np.ndarray]:
    """One-point similarity hypotheses, then least-squares homography refinement.

    Args:
        src, dst: (n, 2) float64 corresponding points (query, database).
        src_shape, dst_shape: (n, 2) scale and angle (radians) of each point's keypoint.
        config: thresholds and counts.

    Returns:
        (homography (3, 3) or None, inlier mask (n,) bool).
    """
    n = len(src)
    hypotheses = np.unique(np.linspace(0, n - 1, min(n, config.max_hypotheses)).round().astype(np.int64))
    # A similarity only approximates a homography: accept twice the final threshold here.
    inliers = _similarity_inliers(src, dst, src_shape, dst_shape, hypotheses, 2.0 * config.reprojection_error)
    homography = None
    # Local optimisation: re-fit on the inliers while the threshold shrinks to its final value.
    for threshold in np.linspace(2.0, 1.0, max(config.refinements, 1)) * config.reprojection_error:
        if inliers.sum() < 4:
            break
        fitted = fit_homography(src[inliers], dst[inliers])
        if fitted is None:
            break
        refined = _transfer_error(fitted, src, dst) < threshold
        if refined.sum() < 4:
            break
        homography, inliers = fitted, refined
    if homography is not None:
        inliers = _transfer_error(homography, src, dst) < config.reprojection_error
    return homography, inliers


@numba.njit(cache=True, nogil=True, fastmath=True)
def _similarity_sq_errors(src, dst, src_shape, dst_shape, h, out):
    """``out[i]``: squared distance between ``dst[i]`` and ``src[i]`` mapped by the similarity of
    correspondence h (scale ratio and rotation of its keypoints, translation onto its point)."""
    scale = dst_shape[h, 0] / max(src_shape[h, 0], 1e-6)
    cos, sin = scale * np.cos(dst_shape[h, 1] - src_shape[h, 1]), scale * np.sin(dst_shape[h, 1] - src_shape[h, 1])
    for i in range(len(src)):
        dx, dy = src[i, 0] - src[h, 0], src[i, 1] - src[h, 1]
        ex = cos * dx - sin * dy + dst[h, 0] - dst[i, 0]
        ey = sin * dx + cos * dy + dst[h, 1] - dst[i, 1]
        out[i] = ex * ex + ey * ey


@numba.njit(cache=True, nogil=True)
def _similarity_inliers(src, dst, src_shape, dst_shape, hypotheses, threshold):
    """(n,) bool inliers of the hypothesis (one correspondence's similarity) with most of them
    (the first on ties)."""
    errors = np.empty(len(src))
    best, best_count = hypotheses[0], -1
    for h in hypotheses:
        _similarity_sq_errors(src, dst, src_shape, dst_shape, h, errors)
        count = np.sum(errors < threshold * threshold)
        if count > best_count:
            best, best_count = h, count
    _similarity_sq_errors(src, dst, src_shape, dst_shape, best, errors)
    return errors < threshold * threshold


def fit_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Least-squares homography src -> dst (normalised DLT), or None if degenerate.

    Args:
        src, dst: (n, 2) float64 corresponding points, n >= 4.

    Returns:
        (3, 3) float64 with H[2, 2] = 1, or None.
    """
    homography = _normalised_dlt(np.ascontiguousarray(src, np.float64), np.ascontiguousarray(dst, np.float64))
    if not np.all(np.isfinite(homography)) or abs(homography[2, 2]) < 1e-12:
        return None
    return homography / homography[2, 2]


@numba.njit(cache=True, nogil=True)
def _normaliser(points):
    """Similarity moving ``points`` to their centroid at mean distance sqrt(2)."""
    cx, cy = points[:, 0].mean(), points[:, 1].mean()
    spread = np.sqrt(2.0) / max(np.mean(np.sqrt((points[:, 0] - cx) ** 2 + (points[:, 1] - cy) ** 2)), 1e-12)
    return np.array([[spread, 0.0, -spread * cx], [0.0, spread, -spread * cy], [0.0, 0.0, 1.0]])


@numba.njit(cache=True, nogil=True)
def _normalised_dlt(src, dst):
    t_src, t_dst = _normaliser(src), _normaliser(dst)
    normal = np.zeros((9, 9))
    row = np.empty(9)
    for i in range(len(src)):
        x = t_src[0, 0] * src[i, 0] + t_src[0, 2]
        y = t_src[1, 1] * src[i, 1] + t_src[1, 2]
        u = t_dst[0, 0] * dst[i, 0] + t_dst[0, 2]
        v = t_dst[1, 1] * dst[i, 1] + t_dst[1, 2]
        for equation in range(2):
            row[:] = 0.0
            if equation == 0:
                row[0], row[1], row[2] = x, y, 1.0
                row[6], row[7], row[8] = -u * x, -u * y, -u
            else:
                row[3], row[4], row[5] = x, y, 1.0
                row[6], row[7], row[8] = -v * x, -v * y, -v
            normal += np.outer(row, row)
    _, vectors = np.linalg.eigh(normal)
    return np.linalg.solve(t_dst, np.ascontiguousarray(vectors[:, 0]).reshape(3, 3) @ t_src)


def hamming_filter(pairs: np.ndarray, query_words: np.ndarray, database_words: np.ndarray,
                   query_signatures: np.ndarray, database_signatures: np.ndarray, threshold: int) -> np.ndarray:
    """Keep the pairs whose signatures (relative to the shared word) are within ``threshold`` bits.

    Args:
        pairs: (p, 2) (query index, database index) sharing a word.
        query_words, query_signatures: (n, k) word ids and uint64 signatures of the query features.
        database_words, database_signatures: (m,) of the database features.
    """
    query_words = np.asarray(query_words).reshape(len(query_words), -1)
    query_signatures = np.asarray(query_signatures, np.uint64).reshape(query_words.shape)
    shared = np.argmax(query_words[pairs[:, 0]] == np.asarray(database_words)[pairs[:, 1], None], axis=1)
    distance = hamming_distance(query_signatures[pairs[:, 0], shared], database_signatures[pairs[:, 1]])
    return pairs[distance <= threshold]


def verify_pair(query_keypoints: np.ndarray, query_words: np.ndarray, database_keypoints: np.ndarray,
                database_words: np.ndarray, config: VerificationConfig = VerificationConfig(),
                signatures: tuple[np.ndarray, np.ndarray, int] | None = None) -> Verification:
    """Fit a homography query -> database image on word correspondences.

    Args:
        query_keypoints: (n, 4) float32 x, y, scale, angle.
        query_words: (n,) or (n, k) int (k words per feature under multiple assignment).
        database_keypoints: (m, 4) float32.
        database_words: (m,) int.
        config: estimator settings.
        signatures: (query (n, k), database (m,) uint64 signatures, Hamming threshold)
            to keep only the correspondences whose signatures agree (Hamming embedding).

    Returns:
        the verification; ``inliers`` counts distinct query features and distinct
        database features among the inliers (the smaller), so a repeated word
        cannot count twice.
    """
    pairs = word_correspondences(query_words, database_words, config.max_pairs_per_word)
    if signatures is not None and len(pairs):
        pairs = hamming_filter(pairs, query_words, database_words, *signatures)
    rejected = Verification(0, None, np.zeros((0, 2), np.int64))
    if len(pairs) < 4:
        return rejected
    src = np.ascontiguousarray(query_keypoints[pairs[:, 0], :2], dtype=np.float64)
    dst = np.ascontiguousarray(database_keypoints[pairs[:, 1], :2], dtype=np.float64)
    if config.estimator == "similarity-lo":
        homography, inliers = similarity_lo(src, dst, query_keypoints[pairs[:, 0], 2:].astype(np.float64),
                                            database_keypoints[pairs[:, 1], 2:].astype(np.float64), config)
    else:
        try:
            homography, mask = cv2.findHomography(src, dst, ESTIMATORS[config.estimator],
                                                  config.reprojection_error, maxIters=config.max_iterations,
                                                  confidence=config.confidence)
        except cv2.error:
            return rejected
        inliers = mask.ravel().astype(bool) if mask is not None else np.zeros(len(pairs), bool)
    if homography is None or _is_degenerate(homography, src[inliers], dst[inliers]):
        return rejected
    if config.refine:
        refined = fit_homography(src[inliers], dst[inliers])
        if refined is not None and not _is_degenerate(refined, src[inliers], dst[inliers]):
            homography = refined
    inlier_pairs = pairs[inliers]
    count = min(len(np.unique(inlier_pairs[:, 0])), len(np.unique(inlier_pairs[:, 1])))
    return Verification(int(count), homography, inlier_pairs)
