"""Re-ranking of an initial ranked list: spatial verification, then query expansion.

Independent of how the initial list was scored (tf-idf, Hamming embedding, ...):
it needs only the candidates' slots and scores, their stored keypoints and
words, and the inverted file that scores an expanded query.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from joblib import Parallel, delayed

from bovw.hamming import HammingConfig
from index.image_store import ImageStore
from index.inverted_file import InvertedFile
from index.kernels import top_indices
from index.match_kernel import feature_signatures, hamming_scores
from index.search_options import ExpansionConfig
from index.spatial_verification import Verification, VerificationConfig, verify_pair


@dataclass
class RankedImage:
    """One entry of a ranked list.

    Attributes:
        slot: image slot in the index.
        score: the initial (or expanded-query) similarity.
        inliers: spatially verified inliers, or None if not verified.
        homography: (3, 3) query -> database image, for verified images.
        matches: (m, 2) inlier (query feature, database feature) indices.
    """

    slot: int
    score: float
    inliers: int | None = None
    homography: np.ndarray | None = None
    matches: np.ndarray | None = None

    @property
    def verified(self) -> bool:
        return self.inliers is not None


def spatial_rerank(query_keypoints: np.ndarray, query_words: np.ndarray, ranking: list[RankedImage],
                   images: ImageStore, config: VerificationConfig = VerificationConfig(),
                   n_jobs: int = 1, query_signatures: np.ndarray | None = None,
                   hamming_threshold: int = 24, inverted: InvertedFile | None = None) -> list[RankedImage]:
    """Verify the top ``config.top_k`` candidates and move the verified ones first.

    Verified images (at least ``config.min_inliers`` inliers) come first, by
    decreasing inlier count (ties keep the initial order); the other candidates
    and the rest of the ranking keep their initial order.

    Args:
        query_keypoints: (n, 4) float32.
        query_words: (n,) or (n, k) int word ids of the query features.
        ranking: the initial ranked list, best first.
        images: the store holding the candidates' keypoints and words.
        config: verification settings.
        n_jobs: threads verifying candidates in parallel (OpenCV releases the GIL).
        query_signatures: (n, k) uint64 Hamming signatures of the query features; with
            the candidates' signatures (read from ``inverted``'s postings), correspondences
            whose signatures differ by more than ``hamming_threshold`` bits are dropped.
        hamming_threshold: see ``query_signatures``.
        inverted: the inverted file holding the candidates' signatures (with ``query_signatures``).
    """
    head, tail = ranking[:config.top_k], ranking[config.top_k:]

    def verify(entry: RankedImage) -> Verification:
        keypoints, words = images.features(entry.slot)
        signatures = None
        if query_signatures is not None:
            signatures = (query_signatures, feature_signatures(inverted, entry.slot, words), hamming_threshold)
        return verify_pair(query_keypoints, query_words, keypoints, words, config, signatures)

    if n_jobs == 1:
        outcomes = [verify(entry) for entry in head]
    else:
        outcomes = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(verify)(entry) for entry in head)
    verified, unverified = [], []
    for entry, outcome in zip(head, outcomes):
        if outcome.inliers >= config.min_inliers:
            verified.append(RankedImage(entry.slot, entry.score, outcome.inliers, outcome.homography,
                                        outcome.matches))
        else:
            unverified.append(entry)
    verified.sort(key=lambda e: -e.inliers)
    return verified + unverified + tail


def average_query_expansion(query_vector: tuple[np.ndarray, np.ndarray],
                            result_vectors: list[tuple[np.ndarray, np.ndarray]], n_words: int,
                            alpha: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Average (alpha = 0) or alpha-weighted query expansion of sparse unit vectors.

    ``alpha = 0`` is Chum et al.'s AQE: the mean of the query's and the results'
    vectors. ``alpha > 0`` weights result i by ``similarity_i ** alpha`` (alpha-QE,
    Radenovic et al.), the query keeping weight 1.

    Args:
        query_vector: (words (u,), values (u,)) L2-normalised.
        result_vectors: the same for each verified result, best first.
        n_words: vocabulary size.
        alpha: weighting exponent.

    Returns:
        (words, values) of the expanded vector, L2-normalised.
    """
    dense = np.zeros(n_words, np.float64)
    q_words, q_values = query_vector
    dense[q_words] += q_values
    q_dense = dense.copy()
    for words, values in result_vectors:
        weight = 1.0
        if alpha > 0:
            weight = max(float(q_dense[words] @ values), 0.0) ** alpha
        dense[words] += weight * values
    words = np.flatnonzero(dense)
    values = dense[words]
    norm = np.linalg.norm(values)
    return words, (values / norm if norm > 0 else values).astype(np.float32)


def bow_expansion(ranking: list[RankedImage], query_vector: tuple[np.ndarray, np.ndarray],
                  inverted: InvertedFile, images: ImageStore, config: ExpansionConfig = ExpansionConfig(),
                  limit: int | None = None) -> list[RankedImage]:
    """Expand a tf-idf query with its verified results, search again; verified results stay on top.

    Args:
        ranking: spatially re-ranked list (verified entries first).
        query_vector: (words (u,), values (u,)) L2-normalised tf-idf vector of the query.
        inverted: the inverted file searched.
        images: the words of the database images.
        config: how many verified results expand the query, and their weighting.
        limit: return at most this many (None: every image).
    """
    verified = [e for e in ranking if e.verified][:config.max_results]
    if not verified:
        return ranking
    expanded = average_query_expansion(
        query_vector, [inverted.query_vector(images.features(e.slot)[1]) for e in verified], inverted.n_words,
        config.alpha)
    return verified_first(ranking, inverted.vector_scores(*expanded), limit)


def hamming_expansion(ranking: list[RankedImage], words: np.ndarray, signatures: np.ndarray,
                      inverted: InvertedFile, images: ImageStore, matching: HammingConfig,
                      config: ExpansionConfig = ExpansionConfig(), limit: int | None = None) -> list[RankedImage]:
    """Query expansion in Hamming-embedding space: the query's features plus the inlier
    features of up to ``config.max_results`` verified images, searched again; verified stay on top.

    Args:
        ranking: spatially re-ranked list (verified entries carry their inlier ``matches``).
        words: (n, k) int word ids of the query features.
        signatures: (n, k) uint64 their signatures.
        inverted: the inverted file searched (with a signature payload).
        images: the words and signatures of the database images.
        matching: Hamming matching settings.
        config: how many verified results expand the query.
        limit: return at most this many (None: every image).
    """
    verified = [e for e in ranking if e.verified][:config.max_results]
    if not verified:
        return ranking
    all_words, all_signatures = [words.reshape(-1, 1)], [signatures.reshape(-1, 1)]
    for entry in verified:
        inliers = np.unique(entry.matches[:, 1])
        words = images.features(entry.slot)[1]
        all_words.append(words[inliers].reshape(-1, 1))
        all_signatures.append(feature_signatures(inverted, entry.slot, words)[inliers].reshape(-1, 1))
    scores = hamming_scores(inverted, np.concatenate(all_words), np.concatenate(all_signatures), matching)
    return verified_first(ranking, scores, limit)


def verified_first(ranking: list[RankedImage], scores: np.ndarray, limit: int | None = None) -> list[RankedImage]:
    """The verified entries of ``ranking`` in their order, then every other image by ``scores``.

    Args:
        ranking: spatially re-ranked list.
        scores: (n_images,) scores of a second search (e.g. an expanded query).
        limit: return at most this many (None: every image).
    """
    on_top = [e for e in ranking if e.verified]
    seen = {e.slot for e in on_top}
    order = top_indices(scores, None if limit is None else limit + len(on_top))
    return (on_top + [RankedImage(int(i), float(scores[i])) for i in order if int(i) not in seen])[:limit]
