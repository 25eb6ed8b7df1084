import numpy as np
import pytest

from index.collection_graph import CollectionGraph
from index.dense_index import DenseIndex
from index.diffusion import diffuse
from index.search_options import DiffusionConfig
from index.verified_pairs import VerifiedPairs


def test_pairs_are_unordered_unique_and_keep_their_largest_count():
    verified = VerifiedPairs()
    verified.add([(3, 1), (1, 3), (2, 2), (0, 4)], [12, 30, 99, 15])
    verified.add([(4, 0)], [11])
    assert verified.pairs.tolist() == [[0, 4], [1, 3]]
    assert verified.inliers.tolist() == [15, 30]
    assert verified.selected(20).tolist() == [[1, 3]]


def test_removing_slots_drops_their_pairs_and_renumbers_the_rest_as_the_index_does():
    verified = VerifiedPairs()
    verified.add([(0, 4), (1, 3), (2, 5), (4, 5)], [10, 11, 12, 13])
    verified.remove_slots([1, 2], n=6)  # slots 3, 4, 5 become 1, 2, 3
    assert verified.pairs.tolist() == [[0, 2], [2, 3]]
    assert verified.inliers.tolist() == [10, 13]


def test_affinity_is_symmetric_with_unit_weight_on_selected_pairs():
    verified = VerifiedPairs()
    verified.add([(0, 2), (1, 2)], [25, 8])
    affinity = verified.affinity(3, min_inliers=10).toarray()
    assert affinity.tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_state_round_trip_and_inconsistent_arrays_are_refused():
    verified = VerifiedPairs()
    verified.add([(0, 2), (1, 2)], [25, 8])
    meta, arrays = verified.state_dict()
    loaded = VerifiedPairs.from_state_dict(meta, arrays)
    assert loaded.pairs.tolist() == verified.pairs.tolist() and loaded.inliers.tolist() == [25, 8]
    with pytest.raises(ValueError, match="inconsistent"):
        VerifiedPairs.from_state_dict(meta, {"pairs": np.array([[2, 0]]), "inliers": np.array([5])})
    with pytest.raises(ValueError, match="version"):
        VerifiedPairs.from_state_dict({**meta, "version": 99}, arrays)


def test_a_verified_pair_joins_two_images_the_knn_graph_keeps_apart():
    """Two tight groups of unit vectors far apart: a kNN graph has no edge between them; a verified
    pair across the groups adds one, and diffusion then reaches the other group."""
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:2]
    vectors = np.concatenate([c + 0.05 * rng.standard_normal((5, 8)).astype(np.float32) for c in centres])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dense = DenseIndex(8)
    dense.add(vectors)
    plain = CollectionGraph.build(dense, DiffusionConfig(k=4))
    assert plain.graph.affinity[:5, 5:].nnz == 0
    verified = VerifiedPairs()
    verified.add([(0, 7)], [40])
    config = DiffusionConfig(k=4, verified_edges=10)
    joined = CollectionGraph.build(dense, config, verified)
    assert joined.edges == 1 and joined.key == (4, 3.0, False, 10)
    assert joined.graph.affinity[0, 7] == joined.graph.affinity[7, 0] == 1.0
    assert joined.graph.affinity[:5, 5:].nnz == 1
    seed = np.zeros(10, np.float32)
    seed[1] = 1.0  # a query entering group A away from the joined image 0
    assert diffuse(plain.graph, seed, alpha=0.9)[5:].max() == 0
    reached = diffuse(joined.graph, seed, alpha=0.9)
    assert reached[7] > 0 and reached[7] == reached[5:].max()
    with pytest.raises(ValueError, match="fusion index keeps"):
        CollectionGraph.build(dense, config)
    meta, arrays = joined.state_dict()
    again = CollectionGraph.from_state_dict(meta, arrays)
    assert again.key == joined.key and again.edges == 1
