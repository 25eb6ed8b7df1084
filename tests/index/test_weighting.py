import numpy as np

from index.weighting import bow_vector, idf


def test_idf_is_log_n_over_df_and_zero_for_absent_words():
    values = idf(np.array([0, 1, 2, 4, 8]), n_images=8)
    assert values.dtype == np.float32
    assert np.allclose(values, [0.0, np.log(8), np.log(4), np.log(2), 0.0])


def test_bow_vector_equals_a_hand_computation():
    """Words 3, 3, 1, 7, 3 with weights 1, 1, 0.5, 1, 0.25: tf = {1: 0.5, 3: 2.25, 7: 1}."""
    idf_values = np.array([0, 2.0, 0, 1.0, 0, 0, 0, 4.0], np.float32)
    words, values = bow_vector(np.array([3, 3, 1, 7, 3]), np.array([1, 1, 0.5, 1, 0.25]), idf_values)
    raw = np.array([0.5 * 2.0, 2.25 * 1.0, 1 * 4.0])  # tf * idf for words 1, 3, 7
    assert words.tolist() == [1, 3, 7] and values.dtype == np.float32
    assert np.allclose(values, raw / np.sqrt(1 + 2.25 ** 2 + 16))
    assert np.isclose(np.linalg.norm(values), 1.0)


def test_zero_idf_words_are_dropped():
    idf_values = np.array([0.0, 1.5, 0.0], np.float32)
    words, values = bow_vector(np.array([0, 1, 2, 2]), np.ones(4), idf_values)
    assert words.tolist() == [1] and np.allclose(values, [1.0])
    words, values = bow_vector(np.array([0, 2, 2]), np.ones(3), idf_values)
    assert len(words) == 0 and len(values) == 0
