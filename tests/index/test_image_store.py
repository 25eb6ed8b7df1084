"""The per-image store: compact keypoints within their stated precision, words in the smallest dtype,
linear-time adds, removal, and format-1 states converted."""
import numpy as np
import pytest

from index.image_store import ImageStore, decode_keypoints, encode_keypoints, word_dtype


def random_image(rng, n, size=(768, 1024)):
    keypoints = np.c_[rng.random((n, 2)) * [size[1], size[0]], rng.random(n) * 40 + 1,
                      rng.random(n) * 2 * np.pi].astype(np.float32)
    return keypoints, rng.integers(0, 20_000, n)


def test_keypoints_round_trip_within_a_sixtieth_of_a_pixel(rng):
    keypoints, _ = random_image(rng, 500)
    back = decode_keypoints(*encode_keypoints(keypoints, (768, 1024)), (768, 1024))
    assert np.abs(back[:, :2] - keypoints[:, :2]).max() <= 1024 / 65535 / 2 + 1e-4
    assert np.allclose(back[:, 2:], keypoints[:, 2:], rtol=1e-3, atol=2e-3)


def test_words_take_the_smallest_dtype():
    assert word_dtype(19_881) == np.uint16 and word_dtype(65_536) == np.uint16
    assert word_dtype(10 ** 6) == np.uint32


def test_batches_equal_one_add_and_removal_keeps_the_others(rng):
    images = [random_image(rng, n) for n in (30, 0, 50, 20)]
    batched, whole = ImageStore(20_000), ImageStore(20_000)
    for keypoints, words in images:
        batched.add([(768, 1024)], [keypoints], [words])
    whole.add([(768, 1024)] * 4, [k for k, _ in images], [w for _, w in images])
    assert batched.pending and len(batched) == 4
    for slot in range(4):
        a, b = batched.features(slot), whole.features(slot)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[1], images[slot][1])
    batched.remove([1, 2])
    assert len(batched) == 2 and np.array_equal(batched.features(1)[1], images[3][1])
    meta, arrays = batched.state_dict()
    again = ImageStore.from_state_dict(meta, arrays)
    assert np.array_equal(again.features(1)[0], batched.features(1)[0]) and again.word_dtype == np.uint16


def test_format1_states_are_converted(rng):
    keypoints, words = random_image(rng, 40)
    arrays = {"name_bytes": np.frombuffer(b"a", np.uint8), "name_offsets": np.array([0, 1]),
              "image_sizes": np.array([[768, 1024]], np.int32), "feature_offsets": np.array([0, 40]),
              "keypoints": keypoints, "words": words.astype(np.int32), "signatures": np.zeros(40, np.uint64)}
    store = ImageStore.from_state_dict({"kind": "image-store", "version": 1, "n_images": 1}, arrays)
    assert np.array_equal(store.features(0)[1], words)
    assert np.allclose(store.features(0)[0], keypoints, atol=0.01, rtol=1e-3)
    with pytest.raises(ValueError, match="inconsistent"):
        ImageStore.from_state_dict({"kind": "image-store", "version": 1, "n_images": 2}, arrays)


def test_concatenate_keeps_every_image_in_order():
    rng = np.random.default_rng(0)

    def store_of(count, first):
        store = ImageStore(1000)
        sizes = [(100 + first + i, 200) for i in range(count)]
        keypoints = [rng.uniform(0, 90, (i + 1, 4)).astype(np.float32) for i in range(count)]
        store.add(sizes, keypoints, [rng.integers(0, 1000, i + 1) for i in range(count)])
        return store

    stores = [store_of(3, 0), store_of(0, 3), store_of(2, 3)]
    merged = ImageStore.concatenate(stores)
    expected = [store.features(slot) for store in stores for slot in range(len(store))]
    assert len(merged) == 5 and merged.image_sizes[:, 0].tolist() == [100, 101, 102, 103, 104]
    for slot, (keypoints, words) in enumerate(expected):
        np.testing.assert_array_equal(merged.features(slot)[0], keypoints)
        np.testing.assert_array_equal(merged.features(slot)[1], words)
