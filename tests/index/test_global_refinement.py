import dataclasses

import numpy as np
import pytest

from index.collection_graph import CollectionGraph
from index.dense_index import DenseIndex
from index.global_refinement import expand_descriptor
from index.ranking import rank_global
from index.search_options import DiffusionConfig, ExpansionConfig, SearchOptions


def unit(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def chains():
    """Two parallel arcs on the unit sphere (20 points each, 0.05 rad apart along an arc, 0.2 across):
    the query's own arc end is far (0.95 rad) while the other arc's nearest point is at 0.2 rad."""
    t = np.arange(20) * 0.05
    own = np.stack([np.cos(t), np.sin(t), np.zeros_like(t)], 1)
    other = np.stack([np.cos(t) * np.cos(0.2), np.sin(t) * np.cos(0.2), np.full_like(t, np.sin(0.2))], 1)
    return unit(np.concatenate([own, other]))


def test_alpha_zero_is_average_query_expansion_and_alpha_weights_by_similarity(rng=np.random.default_rng(0)):
    dense = DenseIndex(8)
    dense.add(unit(rng.normal(size=(30, 8))))
    query = unit(rng.normal(size=8))
    top = np.argsort(-(dense.vectors @ query), kind="stable")[:3]
    mean = query + dense.vectors[top].sum(0)
    np.testing.assert_allclose(expand_descriptor(query, dense, ExpansionConfig(3, 0.0)), mean / np.linalg.norm(mean),
                               rtol=1e-5)
    weights = np.maximum(dense.vectors[top] @ query, 0) ** 3
    weighted = query + weights @ dense.vectors[top]
    np.testing.assert_allclose(expand_descriptor(query, dense, ExpansionConfig(3, 3.0)),
                               weighted / np.linalg.norm(weighted), rtol=1e-5)


def test_diffusion_search_follows_the_query_s_own_manifold():
    vectors = chains()
    dense = DenseIndex(3)
    dense.add(vectors)
    config = DiffusionConfig(k=3, alpha=0.99, query_k=2, iterations=50)
    graph = CollectionGraph.build(dense, config)
    query = vectors[0]
    knn = [e.slot for e in rank_global(query, query[None], dense, SearchOptions())]
    diffused = [e.slot for e in rank_global(query, query[None], dense, SearchOptions(diffusion=config), graph=graph)]
    # kNN ranks the other arc's nearest point (slot 20) above the far end of the query's own arc (19) ...
    assert knn.index(20) < knn.index(19)
    # ... diffusion ranks the query's whole arc first.
    assert sorted(diffused[:20]) == list(range(20))
    # Truncated to the top 5 by similarity: those five are re-ranked, the rest follow in kNN order, score 0.
    short = rank_global(query, query[None], dense, SearchOptions(diffusion=dataclasses.replace(config, shortlist=5)),
                        graph=graph)
    assert sorted(e.slot for e in short[:5]) == sorted(knn[:5])
    assert [e.slot for e in short[5:]] == knn[5:]
    assert all(e.score == 0 for e in short[5:])
    # Offline rows (every node's top 40 = all of them): the same ranking without a per-query solve.
    offline = dataclasses.replace(config, offline=40)
    ranked = rank_global(query, query[None], dense, SearchOptions(diffusion=offline), graph=graph)
    assert [e.slot for e in ranked[:20]] == diffused[:20]
    assert list(graph.offline) == [(40, 0.99, 50)]
    meta, arrays = graph.state_dict()
    again = CollectionGraph.from_state_dict(meta, arrays)
    assert [e.slot for e in rank_global(query, query[None], dense, SearchOptions(diffusion=offline),
                                        graph=again)] == [e.slot for e in ranked]
    with pytest.raises(ValueError, match="set offline or shortlist"):
        dataclasses.replace(config, offline=40, shortlist=5)


def test_regional_graph_pools_region_scores_to_images():
    vectors = chains()
    dense = DenseIndex(3)
    # images of two regions each: image i holds points 2i and 2i+1 of the arcs
    dense.add(vectors[::2], [vectors[i:i + 2] for i in range(0, 40, 2)])
    config = DiffusionConfig(k=3, alpha=0.99, query_k=2, iterations=50, regional=True)
    graph = CollectionGraph.build(dense, config)
    assert graph.graph.n == 40 and graph.n_images == 20
    assert graph.image_nodes(np.array([1, 3])).tolist() == [2, 3, 6, 7]
    ranked = rank_global(vectors[0], vectors[:2], dense, SearchOptions(diffusion=config), graph=graph)
    assert sorted(e.slot for e in ranked[:10]) == list(range(10))  # images of the query's own arc


def test_graph_state_round_trip_and_checks():
    dense = DenseIndex(3)
    dense.add(chains())
    graph = CollectionGraph.build(dense, DiffusionConfig(k=50))
    assert graph.key == (50, 3.0, False, 0) and graph.graph.k == 39  # asked for 50, 40 nodes
    meta, arrays = graph.state_dict()
    again = CollectionGraph.from_state_dict(meta, arrays)
    assert again.key == graph.key and (again.graph.transition != graph.graph.transition).nnz == 0
    with pytest.raises(ValueError, match="inconsistent"):
        CollectionGraph.from_state_dict({**meta, "n_images": 10}, arrays)
