"""tf-idf weighting, as pure numpy functions."""
from __future__ import annotations

import numpy as np


def idf(document_frequency: np.ndarray, n_images: int) -> np.ndarray:
    """Inverse document frequency ``log(N / df)``; 0 for words in no image.

    Args:
        document_frequency: (n_words,) number of images containing each word.
        n_images: N, images in the collection.

    Returns:
        (n_words,) float32.
    """
    df = np.asarray(document_frequency, dtype=np.float64)
    out = np.zeros(df.shape, dtype=np.float64)
    present = df > 0
    out[present] = np.log(n_images / df[present])
    return out.astype(np.float32)


def bow_vector(words: np.ndarray, weights: np.ndarray, idf_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised tf-idf vector of one image, sparse.

    Args:
        words: (m,) int word ids (repeats allowed: term frequency).
        weights: (m,) float32 weight of each occurrence (1 for plain counts,
            fractional for multiple assignment).
        idf_values: (n_words,) idf.

    Returns:
        (unique words (u,) int64, values (u,) float32), unit L2 norm (empty if
        every word has zero idf).
    """
    unique, inverse = np.unique(np.asarray(words, dtype=np.int64), return_inverse=True)
    tf = np.bincount(inverse, weights=weights, minlength=len(unique))
    values = tf * idf_values[unique]
    norm = np.linalg.norm(values)
    if norm == 0:
        return unique[:0], np.zeros(0, np.float32)
    keep = values != 0
    return unique[keep], (values[keep] / norm).astype(np.float32)
