"""Sources for training: mixing by weight, and the sets joined without copying examples."""

from __future__ import annotations

import math

from adaptool.encoding import Encoded
from adaptool.tokenized import EncodedSet
from adaptool.training.sources import combine, mix_by_weights


def test_weighted_mixing_gives_each_source_its_share():
    """0.75 / 0.25 over two sources of 400 and 200 examples: the shares within three standard
    deviations of the weights (a binomial count), the small source's examples reused."""
    owner, index = mix_by_weights([400, 200], [0.75, 0.25], seed=3)
    n = len(owner)
    from_big = int((owner == 0).sum())
    assert n == 600
    assert abs(from_big - 0.75 * n) <= 3 * math.sqrt(n * 0.75 * 0.25)
    small = index[owner == 1]
    assert small.max() < 200 and len(set(small.tolist())) == min(len(small), 200)
    again = mix_by_weights([400, 200], [0.75, 0.25], seed=3)
    assert (again[0] == owner).all() and (again[1] == index).all()  # seeded
    other = mix_by_weights([400, 200], [0.75, 0.25], seed=4)
    assert not (other[0] == owner).all()


def test_a_source_without_examples_is_never_drawn():
    owner, _ = mix_by_weights([50, 0], [0.5, 0.5], seed=1)
    assert len(owner) == 50 and (owner == 0).all()


def _set(start: int, n: int) -> EncodedSet:
    return EncodedSet.of([Encoded([start + i, 7], [-100, 7], 1, 1, False) for i in range(n)])


def test_combine_takes_each_example_from_its_source():
    a, b = _set(100, 3), _set(200, 2)
    import numpy as np

    joined = combine([a, b], np.array([1, 0, 0, 1, 0]), np.array([1, 2, 0, 0, 2]))
    assert [e.input_ids[0] for e in joined] == [201, 102, 100, 200, 102]
    assert joined.lengths.tolist() == [2] * 5 and joined.tokens == 10
    assert joined.trained_tokens == 5


def test_a_source_whose_every_row_is_refused_says_so(tmp_path, tokenizer, registry):
    import json

    import pytest

    from adaptool.errors import DataError
    from adaptool.recipe.schema import DataSection
    from adaptool.training.sources import load_source
    from tests.helpers import make

    path = tmp_path / "bad.jsonl"
    path.write_text((json.dumps({"quote": "“Q.”", "tags": None}) + "\n") * 5)
    source = DataSection(source=str(path), formatter="quote-tags", on_bad_row="skip")
    formatter = make(registry, "formatter", "quote-tags")
    with pytest.raises(DataError, match=r"all 5 training rows .* are refused .* row 1: column"):
        load_source(source, formatter, tokenizer, 0, None)
