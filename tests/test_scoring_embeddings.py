"""Embedding tables (mlsv.scoring.embeddings): repeated ids are found in one pass."""

from __future__ import annotations

import numpy as np


def test_repeated_ids_are_found_in_one_pass():
    """A cohort file made of two concatenated tables (the search was quadratic: about 30 s at this size)."""
    from mlsv.scoring.embeddings import repeated_ids

    ids = np.array([f"utt{i}" for i in range(50_000)] * 2 + ["x", "y", "x"])
    found = repeated_ids(ids)
    assert len(found) == 50_001 and found[0] == ("utt0", [0, 50_000]) and found[-1] == ("x", [100_000, 100_002])
