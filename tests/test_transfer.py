"""Push/pull pickling in process: large buffers (protocol 5) and the size cap."""

from __future__ import annotations

import math

import pytest

from vrungpu_magic.transfer import TransferError, pickle_values

np = pytest.importorskip("numpy")


def test_large_arrays_and_frames_pickle_whole() -> None:
    pd = pytest.importorskip("pandas")
    values = {"a": np.arange(2**17, dtype=np.float64), "d": pd.DataFrame({"x": range(50_000)})}
    pickled = pickle_values(values, ["a", "d"], 100)
    import pickle

    assert (pickle.loads(pickled["a"]) == values["a"]).all()
    assert pickle.loads(pickled["d"]).equals(values["d"])


@pytest.mark.parametrize("cap", [math.nan, math.inf, 0, -1])
def test_a_cap_that_is_not_a_positive_size_is_refused(cap: float) -> None:
    with pytest.raises(TransferError, match="positive"):
        pickle_values({"a": 1}, ["a"], cap)


def test_over_the_cap_names_the_size() -> None:
    with pytest.raises(TransferError, match="over the limit of 1 MB"):
        pickle_values({"a": np.zeros(2**18)}, ["a"], 1)
