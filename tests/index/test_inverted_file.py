import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from index import kernels
from index.inverted_file import InvertedFile

N_WORDS = 50


def dense_tfidf_scores(images: list[np.ndarray], query: np.ndarray) -> np.ndarray:
    """Brute force: dense tf-idf vectors, L2-normalised, dot product."""
    tf = np.array([np.bincount(w, minlength=N_WORDS) for w in images], dtype=np.float64)
    df = (tf > 0).sum(axis=0)
    idf = np.where(df > 0, np.log(len(images) / np.maximum(df, 1)), 0.0)
    docs = tf * idf
    docs /= np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-300)
    q = np.bincount(query, minlength=N_WORDS) * idf
    q /= max(np.linalg.norm(q), 1e-300)
    return docs @ q


def random_images(rng, n):
    return [rng.integers(0, N_WORDS, rng.integers(1, 40)) for _ in range(n)]


def feature_tags(images):
    """Per image, a distinct tag per feature: 1000 * image index + feature index."""
    return [1000 * i + np.arange(len(w)) for i, w in enumerate(images)]


def tagged(images, tags=None):
    """An inverted file of ``images`` added at once, tagged by ``feature_tags`` unless given."""
    inverted = InvertedFile(N_WORDS, {"tag": np.int64})
    inverted.add(images, {"tag": feature_tags(images) if tags is None else tags})
    return inverted


def assert_identical(a: InvertedFile, b: InvertedFile, query: np.ndarray):
    """Same postings, payload, statistics and scores, bit for bit."""
    assert a.n_images == b.n_images
    for name in ("offsets", "image_slots", "document_frequency", "idf", "image_norms"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    assert a.payload.keys() == b.payload.keys()
    for name in a.payload:
        assert np.array_equal(a.payload[name], b.payload[name]), name
    assert np.array_equal(a.scores(query), b.scores(query))


def test_scores_equal_dense_cosine(rng):
    images = random_images(rng, 30)
    inverted = InvertedFile(N_WORDS)
    inverted.add(images)
    for _ in range(5):
        query = rng.integers(0, N_WORDS, 25)
        assert np.allclose(inverted.scores(query), dense_tfidf_scores(images, query), atol=1e-6)


def test_identical_image_scores_one(rng):
    images = random_images(rng, 10)
    inverted = InvertedFile(N_WORDS)
    inverted.add(images)
    assert np.isclose(inverted.scores(images[3])[3], 1.0, atol=1e-6)


def test_add_in_batches_equals_one_build(rng):
    images = random_images(rng, 40)
    once, batched = InvertedFile(N_WORDS), InvertedFile(N_WORDS)
    once.add(images)
    for start in range(0, 40, 7):
        batched.add(images[start:start + 7])
    assert np.array_equal(once.offsets, batched.offsets)
    assert np.array_equal(once.image_slots, batched.image_slots)
    assert np.allclose(once.idf, batched.idf)


def test_remove_keeps_idf_right(rng):
    images = random_images(rng, 20)
    inverted = InvertedFile(N_WORDS)
    inverted.add(images)
    mapping = inverted.remove([0, 5, 19])
    kept = [w for i, w in enumerate(images) if i not in (0, 5, 19)]
    fresh = InvertedFile(N_WORDS)
    fresh.add(kept)
    assert mapping[5] == -1 and mapping[6] == 4
    assert np.allclose(inverted.idf, fresh.idf)
    query = rng.integers(0, N_WORDS, 30)
    assert np.allclose(inverted.scores(query), dense_tfidf_scores(kept, query), atol=1e-6)


def test_payload_stays_aligned_with_postings(rng):
    images = random_images(rng, 12)
    tags = feature_tags(images)
    inverted = InvertedFile(N_WORDS, {"tag": np.int64})
    inverted.add(images[:6], {"tag": tags[:6]})
    inverted.add(images[6:], {"tag": tags[6:]})
    mapping = inverted.remove([2])
    original = np.flatnonzero(mapping >= 0)  # original image of each new slot
    assert np.array_equal(mapping[original], np.arange(11)) and inverted.n_images == 11
    tag = inverted.payload["tag"]
    posting_words = np.repeat(np.arange(N_WORDS), np.diff(inverted.offsets))
    # every posting's tag names a feature of the image its slot now points to, quantized to its word
    assert np.array_equal(tag // 1000, original[inverted.image_slots])
    assert np.array_equal([images[t // 1000][t % 1000] for t in tag], posting_words)
    fresh = tagged([images[i] for i in original], [tags[i] for i in original])
    assert_identical(inverted, fresh, rng.integers(0, N_WORDS, 20))


def test_multiple_assignment_weights(rng):
    images = random_images(rng, 15)
    inverted = InvertedFile(N_WORDS)
    inverted.add(images)
    words = rng.integers(0, N_WORDS, (10, 3))
    assert np.allclose(inverted.scores(words), dense_tfidf_scores(images, words.ravel()), atol=1e-6)


def test_empty_collection_and_unknown_words():
    inverted = InvertedFile(N_WORDS)
    assert inverted.scores(np.array([1, 2])).shape == (0,)
    with pytest.raises(ValueError, match="word ids"):
        inverted.add([np.array([N_WORDS])])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "read"]), st.integers(0, 10 ** 6)),
                min_size=1, max_size=12))
def test_any_add_remove_sequence_matches_brute_force(operations):
    rng = np.random.default_rng(len(operations))
    inverted, model = InvertedFile(N_WORDS), []
    for operation, seed in operations:
        if operation == "add" or not model:
            batch = random_images(np.random.default_rng(seed), 1 + seed % 4)
            inverted.add(batch)
            model += batch
        elif operation == "remove":
            victim = seed % len(model)
            inverted.remove([victim])
            model.pop(victim)
        else:
            assert inverted.n_postings == sum(map(len, model)) and not inverted.pending
    query = rng.integers(0, N_WORDS, 20)
    if model:
        assert np.allclose(inverted.scores(query), dense_tfidf_scores(model, query), atol=1e-6)


def test_state_dict_round_trip_and_validation(rng):
    inverted = InvertedFile(N_WORDS)
    inverted.add(random_images(rng, 10))
    meta, arrays = inverted.state_dict()
    copy = InvertedFile.from_state_dict(meta, arrays)
    query = rng.integers(0, N_WORDS, 20)
    assert np.array_equal(copy.scores(query), inverted.scores(query))
    bad = dict(arrays, image_slots=arrays["image_slots"] + 100)
    with pytest.raises(ValueError, match="do not exist"):
        InvertedFile.from_state_dict(meta, bad)


def test_state_dict_without_statistics_loads_the_same(rng):
    """Early format-1 saves carry no document_frequency / image_norms: they are recomputed."""
    inverted = tagged(random_images(rng, 25))
    meta, arrays = inverted.state_dict()
    early = {name: values for name, values in arrays.items() if name not in ("document_frequency", "image_norms")}
    assert_identical(InvertedFile.from_state_dict(meta, early), InvertedFile.from_state_dict(meta, arrays),
                     rng.integers(0, N_WORDS, 20))


def test_many_small_adds_equal_one_add(rng):
    images = random_images(rng, 200)
    images[17] = np.zeros(0, np.int64)  # images without features take a slot too
    bounds = np.r_[0, np.sort(rng.choice(np.arange(1, 200), 49, replace=False)), 200]  # 50 batches
    tags = feature_tags(images)
    batched = InvertedFile(N_WORDS, {"tag": np.int64})
    for start, end in zip(bounds[:-1], bounds[1:]):
        assert np.array_equal(batched.add(images[start:end], {"tag": tags[start:end]}), np.arange(start, end))
        assert batched.n_images == end
    assert batched.pending
    query = rng.integers(0, N_WORDS, 30)
    assert_identical(batched, tagged(images), query)
    assert not batched.pending
    batched.add([np.zeros(0, np.int64)], {"tag": [np.zeros(0, np.int64)]})  # pending work without postings
    assert batched.pending
    assert_identical(batched, tagged([*images, np.zeros(0, np.int64)]), query)
    assert batched.image_norms.shape == (201,)


def test_interleaved_add_remove_add_equals_fresh_build(rng):
    images = random_images(rng, 60)
    tags = feature_tags(images)
    inverted = InvertedFile(N_WORDS, {"tag": np.int64})
    inverted.add(images[:20], {"tag": tags[:20]})
    inverted.add(images[20:30], {"tag": tags[20:30]})
    inverted.remove([3, 25])  # removes from pending work
    inverted.add(images[30:45], {"tag": tags[30:45]})
    inverted.scores(images[0])
    inverted.add(images[45:], {"tag": tags[45:]})
    inverted.remove([0, 50])  # slots 0 and 50 are images 0 and 52 now
    kept = [i for i in range(60) if i not in (0, 3, 25, 52)]
    assert_identical(inverted, tagged([images[i] for i in kept], [tags[i] for i in kept]),
                     rng.integers(0, N_WORDS, 30))


def test_state_dict_with_pending_work_saves_everything(rng):
    images = random_images(rng, 30)
    tags = feature_tags(images)
    inverted = InvertedFile(N_WORDS, {"tag": np.int64})
    inverted.add(images[:10], {"tag": tags[:10]})
    inverted.scores(images[0])
    inverted.add(images[10:], {"tag": tags[10:]})
    assert inverted.pending
    meta, arrays = inverted.state_dict()
    fresh = tagged(images)
    assert meta == fresh.state_dict()[0] and meta["n_images"] == 30
    assert all(np.array_equal(values, fresh.state_dict()[1][name]) for name, values in arrays.items())
    assert_identical(InvertedFile.from_state_dict(meta, arrays), fresh, rng.integers(0, N_WORDS, 20))


def test_consolidation_is_lazy_and_merges_once(rng, monkeypatch):
    calls = {"counting_order": 0, "merge_postings": 0, "squared_norms": 0}

    def counted(name):
        kernel = getattr(kernels, name)

        def wrapper(*args):
            calls[name] += 1
            return kernel(*args)
        return wrapper

    for name in calls:
        monkeypatch.setattr(kernels, name, counted(name))
    images = random_images(rng, 100)
    tags = feature_tags(images)
    inverted = InvertedFile(N_WORDS, {"tag": np.int64})
    for start in range(0, 100, 5):
        inverted.add(images[start:start + 5], {"tag": tags[start:start + 5]})
    assert inverted.pending and inverted.n_images == 100
    assert calls == {"counting_order": 0, "merge_postings": 0, "squared_norms": 0}
    scores = inverted.scores(images[7])
    # one counting sort, one merge of the slots and one of the payload, statistics once
    assert calls == {"counting_order": 1, "merge_postings": 2, "squared_norms": 1}
    assert not inverted.pending and int(np.argmax(scores)) == 7
    inverted.scores(images[8])
    inverted.state_dict()
    assert calls == {"counting_order": 1, "merge_postings": 2, "squared_norms": 1}


def test_invalid_add_changes_nothing(rng):
    inverted = tagged(random_images(rng, 5))
    before = inverted.state_dict()[1]
    images = random_images(rng, 3)
    for words, tags, message in ((images, feature_tags(images)[:2], "does not match"),
                                 (images, [t[:-1] for t in feature_tags(images)], "does not match"),
                                 ([*images[:2], np.array([N_WORDS])], feature_tags(images), "word ids")):
        with pytest.raises(ValueError, match=message):
            inverted.add(words, {"tag": tags})
        assert not inverted.pending and inverted.n_images == 5
    with pytest.raises(ValueError, match="payload"):
        inverted.add(images)
    after = inverted.state_dict()[1]
    assert all(np.array_equal(after[name], values) for name, values in before.items())


def test_concatenate_is_adding_the_images_in_order(rng):
    parts = [random_images(rng, n) for n in (7, 1, 12)]
    tags = feature_tags(sum(parts, []))
    files, start = [], 0
    for part in parts:
        files.append(tagged(part, tags[start:start + len(part)]))
        start += len(part)
    query = rng.integers(0, N_WORDS, 15)
    assert_identical(InvertedFile.concatenate(files), tagged(sum(parts, []), tags), query)


def test_concatenate_refuses_other_vocabularies():
    with pytest.raises(ValueError, match="one vocabulary"):
        InvertedFile.concatenate([InvertedFile(N_WORDS), InvertedFile(N_WORDS + 1)])


def test_shards_with_the_collection_statistics_score_as_the_whole(rng):
    images = random_images(rng, 30)
    whole = tagged(images)
    shards = [tagged(images[:10]), tagged(images[10:])]
    df = shards[0].document_frequency + shards[1].document_frequency
    for shard in shards:
        shard.set_collection(df, 30)
    query = rng.integers(0, N_WORDS, 15)
    np.testing.assert_array_equal(np.concatenate([s.scores(query) for s in shards]), whole.scores(query))
    np.testing.assert_array_equal(shards[1].idf, whole.idf)
    np.testing.assert_allclose(whole.scores(query), dense_tfidf_scores(images, query), atol=1e-6)
    # the collection statistics are saved with the shard (version 2; other files stay version 1)
    assert shards[1].state_dict()[0]["version"] == 2 and whole.state_dict()[0]["version"] == 1
    restored = InvertedFile.from_state_dict(*shards[1].state_dict())
    np.testing.assert_array_equal(restored.scores(query), shards[1].scores(query))
    restored.set_collection(None)  # back to its own statistics
    np.testing.assert_array_equal(restored.scores(query), tagged(images[10:]).scores(query))
    with pytest.raises(ValueError, match="cannot cover"):
        restored.set_collection(df, 5)
