import io
import time

import numpy as np
import pytest
from scipy import sparse

from index import diffusion
from index.diffusion import (DiffusionGraph, csr_from_arrays, csr_to_arrays, diffuse, diffuse_offline,
                             graph_from_affinity, graph_from_neighbours, knn_graph, offline_rows, pair_affinity,
                             pool_to_images, query_seed)


def unit(vectors):
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def on_sphere(latitude, longitude):
    """(n, 3) float32 unit vectors at the given angles (radians)."""
    latitude, longitude = np.broadcast_arrays(np.atleast_1d(latitude), np.atleast_1d(longitude))
    return np.stack([np.cos(latitude) * np.cos(longitude), np.cos(latitude) * np.sin(longitude),
                     np.sin(latitude)], axis=1).astype(np.float32)


def two_chains(length=20, step=0.05, gap=0.1):
    """Two parallel arcs of ``length`` points ``step`` apart, at latitudes +gap and -gap.

    Across the chains points are 2 * gap = 4 steps apart, so a point's 3 nearest neighbours are
    all on its own chain, while the other chain's nearest point is much nearer than the far end
    of its own chain (19 steps away).
    """
    longitude = step * np.arange(length)
    return np.concatenate([on_sphere(gap, longitude), on_sphere(-gap, longitude)])


@pytest.fixture
def random_vectors(rng):
    return unit(rng.standard_normal((80, 8)))


def dense_solution(transition, y, alpha):
    matrix = np.eye(transition.shape[0]) - alpha * transition.toarray().astype(np.float64)
    return np.linalg.solve(matrix, y.astype(np.float64))


def relative_error(value, reference):
    return np.abs(value - reference).max() / np.abs(reference).max()


def test_diffusion_follows_the_chain_where_inner_products_jump_across():
    length = 20
    vectors = two_chains(length)
    own_far_end, other_nearest = length - 1, length  # chain A is 0..19, chain B is 20..39
    query = on_sphere(0.1, -0.02)[0]  # just before the start of chain A
    scores = vectors @ query
    assert scores[other_nearest] > scores[own_far_end] + 0.3  # plain kNN jumps to the other chain
    graph = knn_graph(vectors, k=3)
    f = diffuse(graph, query_seed(scores, graph.k, graph.gamma))
    assert f[own_far_end] > f[other_nearest]
    assert f[:length].min() > f[length:].max()  # the whole chain first


def test_a_verified_edge_lets_diffusion_cross_between_chains():
    length = 20
    vectors = two_chains(length)
    graph = knn_graph(vectors, k=3)
    y = query_seed(vectors @ on_sphere(0.1, -0.02)[0], graph.k, graph.gamma)
    assert diffuse(graph, y, iterations=60)[-1] == 0  # chain B's far end is unreachable
    verified = pair_affinity(np.array([[length - 1, 2 * length - 1]]), np.array([1.0], np.float32), 2 * length)
    crossed = graph_from_affinity(graph.affinity.maximum(verified), graph.k, graph.gamma)
    f = diffuse(crossed, y, iterations=60)
    assert f[-1] > 0 and f[-1] > f[length]  # B is entered at its far end, where the edge lands


def test_conjugate_gradient_agrees_with_a_dense_solve(random_vectors):
    graph = knn_graph(random_vectors, k=10)
    y = query_seed(random_vectors @ random_vectors[0], 10, 3.0)
    for alpha in (0.5, 0.99):
        reference = dense_solution(graph.transition, y, alpha)
        assert relative_error(diffuse(graph, y, alpha, iterations=500, tol=1e-10), reference) < 1e-4
    assert relative_error(diffuse(graph, y, 0.99, iterations=3), dense_solution(graph.transition, y, 0.99)) > 1e-2


def test_truncation_to_every_node_equals_the_full_solve_and_a_cut_solves_the_subgraph(random_vectors, rng):
    graph = knn_graph(random_vectors, k=10)
    scores = random_vectors @ random_vectors[3]
    y = query_seed(scores, 10, 3.0)
    full = diffuse(graph, y, 0.99, iterations=20)
    assert np.allclose(diffuse(graph, y, 0.99, iterations=20, shortlist=rng.permutation(80)), full,
                       rtol=1e-5, atol=1e-6 * np.abs(full).max())
    shortlist = np.argsort(-scores)[:30][::-1]
    cut = diffuse(graph, y, 0.99, iterations=500, tol=1e-10, shortlist=shortlist)
    outside = np.setdiff1d(np.arange(80), shortlist)
    assert np.all(cut[outside] == 0)
    sub = graph.transition[np.ix_(shortlist, shortlist)]
    assert relative_error(cut[shortlist], dense_solution(sub, y[shortlist], 0.99)) < 1e-4


def test_offline_rows_reproduce_online_diffusion(random_vectors):
    graph = knn_graph(random_vectors, k=10)
    y = query_seed(random_vectors[5:8] @ random_vectors.T, 10, 3.0)  # a three-vector query
    online = diffuse(graph, y, 0.9, iterations=300, tol=1e-9)
    rows = offline_rows(graph, 0.9, iterations=300, top=80, tol=1e-9)
    assert relative_error(diffuse_offline(rows, y), online) < 1e-4
    assert abs(rows - rows.T).max() < 1e-4 * abs(rows).max()  # (I - alpha S)^-1 is symmetric

    kept = offline_rows(graph, 0.9, iterations=300, top=5, tol=1e-9)
    assert np.all(np.diff(kept.indptr) <= 5)
    full = rows.toarray()
    for j in (0, 17, 79):
        columns = kept.indices[kept.indptr[j]:kept.indptr[j + 1]]
        assert set(columns) == set(np.argsort(-full[j])[:5])


def test_saved_arrays_rebuild_an_identical_graph(random_vectors):
    graph = knn_graph(random_vectors, k=10, gamma=2.5)
    rows = offline_rows(graph, top=10)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"graph_{k}": v for k, v in graph.to_arrays().items()},
             **{f"rows_{k}": v for k, v in csr_to_arrays(rows).items()})
    buffer.seek(0)
    saved = np.load(buffer, allow_pickle=False)
    copy = DiffusionGraph.from_arrays({k[6:]: saved[k] for k in saved.files if k.startswith("graph_")})
    rows_copy = csr_from_arrays({k[5:]: saved[k] for k in saved.files if k.startswith("rows_")})
    assert (copy.k, copy.gamma, copy.n) == (10, 2.5, 80)
    for a, b in ((copy.affinity, graph.affinity), (copy.transition, graph.transition), (rows_copy, rows)):
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
        assert np.array_equal(a.data, b.data) and a.data.dtype == np.float32
    y = query_seed(random_vectors @ random_vectors[0], 10, 2.5)
    assert np.array_equal(diffuse(copy, y), diffuse(graph, y))
    broken = graph.to_arrays()
    broken["indices"] = broken["indices"] + 1
    with pytest.raises(ValueError):
        DiffusionGraph.from_arrays(broken)


def test_mutual_knn_graph_is_symmetric_without_self_loops_and_normalised(random_vectors):
    vectors = np.concatenate([random_vectors, random_vectors[:4]])  # duplicates tie with themselves
    graph = knn_graph(vectors, k=6)
    affinity, transition = graph.affinity.toarray(), graph.transition.toarray()
    assert np.array_equal(affinity, affinity.T) and np.array_equal(transition, transition.T)
    assert np.all(np.diag(affinity) == 0) and np.all(affinity >= 0)
    assert np.abs(np.linalg.eigvalsh(transition.astype(np.float64))).max() <= 1 + 1e-6
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :6]
    near = np.zeros_like(affinity, bool)
    near[np.repeat(np.arange(len(vectors)), 6), neighbours.ravel()] = True
    mutual = near & near.T & (similarity > 0)
    assert np.array_equal(affinity > 0, mutual)
    assert np.allclose(affinity[mutual], similarity[mutual] ** 3, rtol=1e-4)
    either = knn_graph(vectors, k=6, mutual=False).affinity.toarray() > 0
    assert np.array_equal(either, (near | near.T) & (similarity > 0))
    copies = knn_graph(np.repeat(vectors[:1], 6, axis=0), k=2, mutual=False).affinity  # self may not be found
    assert np.all(copies.diagonal() == 0) and np.all(np.diff(copies.indptr) >= 2)


def test_query_seed_keeps_the_top_k_raised_to_gamma_and_sums_query_vectors():
    scores = np.array([[0.5, -0.9, 0.8, 0.1], [0.2, 0.3, -0.1, 0.9]], np.float32)
    assert np.allclose(query_seed(scores[0], 2, 2.0), [0.25, 0, 0.64, 0])
    assert np.allclose(query_seed(scores, 2, 2.0), [0.25, 0.09, 0.64, 0.81])
    assert np.allclose(query_seed(-scores[0], 2, 1.0), [0, 0.9, 0, 0])  # negative similarity: no seed


def test_pooling_regions_to_images_by_sum_or_max():
    f = np.array([0.3, 0.3, 0.5, 0.0, 0.2], np.float32)
    node_image = np.array([0, 0, 1, 1, 3])
    assert np.allclose(pool_to_images(f, node_image, 4, "sum"), [0.6, 0.5, 0, 0.2])
    assert np.allclose(pool_to_images(f, node_image, 4, "max"), [0.3, 0.5, 0, 0.2])
    with pytest.raises(ValueError):
        pool_to_images(f, node_image, 4, "mean")


def test_pair_affinity_is_symmetric_keeps_the_strongest_duplicate_and_ignores_self_pairs():
    pairs = np.array([[0, 2], [2, 0], [1, 1], [3, 1]])
    affinity = pair_affinity(pairs, np.array([0.2, 0.7, 1.0, 0.4], np.float32), 4).toarray()
    expected = np.zeros((4, 4), np.float32)
    expected[0, 2] = expected[2, 0] = 0.7
    expected[1, 3] = expected[3, 1] = 0.4
    assert np.array_equal(affinity, expected)
    with pytest.raises(ValueError):
        graph_from_affinity(sparse.csr_array(np.triu(np.ones((3, 3)))), 2, 3.0)
    with pytest.raises(ValueError):
        graph_from_affinity(sparse.csr_array(-expected), 2, 3.0)


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_small_collections_use_every_other_node(n, rng):
    vectors = unit(np.abs(rng.standard_normal((n, 4))) + 0.1)  # positive orthant: all similarities > 0
    graph = knn_graph(vectors, k=50)
    assert graph.n == n and graph.k == max(n - 1, 0)
    assert graph.affinity.nnz == n * (n - 1)  # n <= k: the complete graph
    y = query_seed(vectors @ vectors[0] if n else np.zeros(0, np.float32), max(graph.k, 1), graph.gamma)
    f = diffuse(graph, y)
    assert f.shape == (n,) and f.dtype == np.float32
    assert np.allclose(diffuse_offline(offline_rows(graph, iterations=100, top=n), y),
                       diffuse(graph, y, iterations=100), rtol=1e-4, atol=1e-6)
    if n == 1:
        assert np.allclose(f, y)  # an isolated node keeps its seed


def clustered(rng, groups=300, size=10, d=32, noise=0.5):
    """(groups * size, d) unit vectors: groups of near-duplicates around random centres."""
    centres = np.repeat(unit(rng.standard_normal((groups, d))), size, axis=0)
    return unit(centres + noise / np.sqrt(d) * rng.standard_normal(centres.shape))


def test_hnsw_search_recovers_most_mutual_edges_quickly(rng):
    vectors = clustered(rng)
    exact = knn_graph(vectors, k=20, method="exact").affinity
    start = time.perf_counter()
    approximate = knn_graph(vectors, k=20, method="hnsw").affinity
    assert time.perf_counter() - start < 5.0  # ~0.7 s on 2 loaded cores
    assert abs(approximate - approximate.T).max() == 0 and np.all(approximate.diagonal() == 0)
    kept = exact.multiply(approximate > 0)
    assert kept.nnz >= 0.9 * exact.nnz and kept.sum() >= 0.95 * exact.sum()
    assert abs(approximate.multiply(exact > 0) - kept).max() < 1e-5  # an edge found by both: same affinity


def test_auto_search_is_exact_below_the_threshold_and_unknown_methods_fail(random_vectors):
    assert len(random_vectors) < diffusion.EXACT_BELOW
    auto, exact = knn_graph(random_vectors, k=10).affinity, knn_graph(random_vectors, k=10, method="exact").affinity
    assert np.array_equal(auto.indptr, exact.indptr) and np.array_equal(auto.indices, exact.indices)
    assert np.array_equal(auto.data, exact.data)
    with pytest.raises(ValueError):
        knn_graph(random_vectors, k=10, method="ivf")
    with pytest.raises(ValueError):
        diffusion.neighbour_index(random_vectors, "ivf")


def test_a_search_that_finds_fewer_than_k_still_gives_a_valid_graph(random_vectors, monkeypatch):
    search = diffusion._nearest_others

    def short(*args):
        neighbours, similarities = search(*args)
        neighbours[::3, -4:] = -1  # as an approximate search may return
        return neighbours, similarities

    monkeypatch.setattr(diffusion, "_nearest_others", short)
    for mutual in (True, False):
        graph = knn_graph(random_vectors, k=10, mutual=mutual)
        assert graph.k == 10 and graph.affinity.indices.min() >= 0
        assert abs(graph.affinity - graph.affinity.T).max() == 0 and np.all(graph.affinity.diagonal() == 0)
    assert np.diff(knn_graph(random_vectors, k=10, mutual=False).affinity.indptr)[::3].min() >= 6


def test_mutuality_by_similarity_keeps_an_edge_whose_reverse_search_missed(random_vectors):
    neighbours, similarities = diffusion._nearest_others(random_vectors, 10)
    by_lists = graph_from_neighbours(neighbours, similarities).affinity
    exact = knn_graph(random_vectors, k=10, method="exact").affinity
    assert abs(by_lists - exact).max() == 0
    assert abs(graph_from_neighbours(neighbours, similarities, by_similarity=True).affinity - exact).max() == 0
    i, j = next((i, j) for i in range(80) for j in neighbours[i]
                if by_lists[i, j] > 0 and list(neighbours[j]).index(i) < 9)  # i is not j's last neighbour
    missed = neighbours.copy()
    missed[j, list(neighbours[j]).index(i)] = -1  # j's search did not find i
    assert graph_from_neighbours(missed, similarities).affinity[i, j] == 0
    assert graph_from_neighbours(missed, similarities, by_similarity=True).affinity[i, j] == exact[i, j]
