"""The name registry: unique names by slot, renumbered on removal, saved without pickle."""
import numpy as np
import pytest

from index.names import ImageNames, decode_names, encode_names


def test_slots_follow_additions_and_removals():
    names = ImageNames(["a.jpg", "b.jpg"])
    names.add(["c.jpg", "d.jpg"])
    assert names.slots(["d.jpg", "a.jpg"]) == [3, 0] and len(names) == 4
    names.remove([0, 2])
    assert list(names) == ["b.jpg", "d.jpg"] and names.slots(["d.jpg"]) == [1] and "a.jpg" not in names
    with pytest.raises(KeyError, match="no image named 'a.jpg'"):
        names.slots(["a.jpg"])
    with pytest.raises(ValueError, match="unique"):
        names.add(["b.jpg"])
    with pytest.raises(ValueError, match="unique"):
        names.add(["e.jpg", "e.jpg"])


def test_names_round_trip_with_any_characters():
    original = ["photo 1.jpg", "été/ünïcode.png", "", "\udcff-undecodable.jpg"]
    data, offsets = encode_names(original)
    assert data.dtype == np.uint8 and decode_names(data, offsets) == original
    meta, arrays = ImageNames(original[:2]).state_dict()
    assert list(ImageNames.from_state_dict(meta, arrays)) == original[:2]
    with pytest.raises(ValueError, match="inconsistent"):
        decode_names(data, offsets[:-1])
    with pytest.raises(ValueError, match="duplicate"):
        ImageNames.from_state_dict(dict(meta, n_images=2), {"bytes": np.frombuffer(b"aa", np.uint8),
                                                            "offsets": np.array([0, 1, 2])})
