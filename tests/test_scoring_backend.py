"""Vectorised cosine / AS-norm equal the reference's per-trial loop (docs/method.md#as-norm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlsv.scoring.backend import (
    as_norm,
    cohort_from_table,
    cohort_stats,
    cohort_topk,
    cosine_scores,
    cosine_scores_indexed,
    topk_stats,
)
from mlsv.scoring.embeddings import EmbeddingTable


def _cohort_table(rng, n_spk=40, per_spk=3, dim=16) -> EmbeddingTable:
    n = n_spk * per_spk
    spk = np.array([f"s{i % n_spk:03d}" for i in range(n)])
    return EmbeddingTable(
        np.array([f"c{i}" for i in range(n)]),
        rng.standard_normal((n, dim)).astype(np.float32) + 0.3,
        rng.uniform(2, 10, n).astype(np.float32),
        spk,
    )


def _naive_cohort(table: EmbeddingTable, mean: np.ndarray) -> np.ndarray:
    groups: dict[str, list[np.ndarray]] = {}
    for s, e in zip(table.speakers, table.embeddings):
        groups.setdefault(s, []).append(e)
    return np.stack([np.mean(groups[s], axis=0) - mean for s in sorted(groups)]).astype(np.float32)


def _naive_asnorm(emb, cohort, mean, e_idx, t_idx, k, exclude=None):
    """Reference formulas, one trial at a time: cosine, top-k cohort cosines, unbiased std."""
    f = torch.nn.functional.cosine_similarity
    out = []
    for n, (i, j) in enumerate(zip(e_idx, t_idx)):
        coh = torch.from_numpy(cohort)
        if exclude is not None:
            keep = np.ones(len(cohort), bool)
            keep[[x for x in exclude[n] if x >= 0]] = False
            coh = coh[torch.from_numpy(keep)]
        e = torch.from_numpy(emb[i] - mean)
        t = torch.from_numpy(emb[j] - mean)
        s = f(e, t, dim=0).double()
        ce = torch.topk(f(e[None], coh, dim=1), k).values.double()
        ct = torch.topk(f(t[None], coh, dim=1), k).values.double()
        out.append((0.5 * ((s - ce.mean()) / ce.std() + (s - ct.mean()) / ct.std())).item())
    return np.array(out)


def test_cosine_scores_rowwise_and_indexed():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    e, t = rng.integers(30, size=200), rng.integers(30, size=200)
    expected = np.array([x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) for i, j in zip(e, t)])
    np.testing.assert_allclose(cosine_scores(x[e], x[t]), expected, atol=1e-6)
    np.testing.assert_allclose(cosine_scores_indexed(x, e, t), expected, atol=1e-6)  # full-matrix path
    np.testing.assert_allclose(cosine_scores_indexed(x, e[:5], t[:5], chunk_size=2), expected[:5], atol=1e-6)
    with pytest.raises(IndexError):
        cosine_scores_indexed(x, [30], [0])


def test_cohort_from_table_is_speaker_means_minus_mean():
    rng = np.random.default_rng(1)
    table = _cohort_table(rng)
    mean = table.embeddings.mean(0)
    cohort = cohort_from_table(table)
    np.testing.assert_allclose(cohort.vectors, _naive_cohort(table, mean), atol=1e-5)
    assert list(cohort.speakers) == sorted(set(table.speakers))
    with pytest.raises(ValueError, match="speakers"):
        cohort_from_table(EmbeddingTable(table.ids, table.embeddings, table.durations))


def test_vectorised_asnorm_equals_naive_loop():
    rng = np.random.default_rng(2)
    table = _cohort_table(rng)
    emb = rng.standard_normal((25, 16)).astype(np.float32) + 0.3
    mean = table.embeddings.mean(0)
    cohort = cohort_from_table(table, mean)
    e, t = rng.integers(25, size=60), rng.integers(25, size=60)
    x = emb - mean
    mu, sigma = cohort_stats(x, cohort, top_k=10, chunk_size=7)  # several chunks
    fast = as_norm(cosine_scores_indexed(x, e, t), e, t, mu, sigma)
    naive = _naive_asnorm(emb, _naive_cohort(table, mean), mean, e, t, 10)
    np.testing.assert_allclose(fast, naive, atol=1e-4)


def test_exclusions_equal_removing_speakers_from_the_cohort():
    rng = np.random.default_rng(3)
    table = _cohort_table(rng, n_spk=30)
    cohort = cohort_from_table(table)
    emb = rng.standard_normal((12, 16)).astype(np.float32)
    x = emb - cohort.mean
    # Exclude each utterance's 2 nearest cohort speakers (the hardest case) or one, or none.
    near = cohort_topk(x, cohort, 2)[1]
    exclude = near.copy()
    exclude[4:8, 1] = -1
    exclude[8:, :] = -1
    k = 8
    mu, sigma = cohort_stats(x, cohort, k, exclude=exclude)
    # Same from a top-(k+2) list computed once, unsorted, with one utterance used under many exclusions.
    values, indices = cohort_topk(x, cohort, k + 2, sorted=False)
    mu2, sigma2 = topk_stats(values, indices, k, exclude, rows=np.arange(12), chunk_size=5)
    np.testing.assert_allclose(mu2, mu, atol=1e-6)
    np.testing.assert_allclose(sigma2, sigma, atol=1e-6)
    idx = np.arange(12)
    naive = _naive_asnorm(emb, cohort.vectors, cohort.mean, idx, idx, k, exclude)
    fast = as_norm(cosine_scores_indexed(x, idx, idx), idx, idx, mu, sigma)
    np.testing.assert_allclose(fast, naive, atol=1e-4)
    # Without exclusions both agree with the plain statistics.
    mu3, sigma3 = topk_stats(*cohort_topk(x, cohort, k), k)
    np.testing.assert_allclose(mu3, cohort_stats(x, cohort, k)[0], atol=1e-6)
    np.testing.assert_allclose(sigma3, cohort_stats(x, cohort, k)[1], atol=1e-6)


def test_cohort_size_errors():
    rng = np.random.default_rng(4)
    cohort = cohort_from_table(_cohort_table(rng, n_spk=5))
    x = rng.standard_normal((3, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="fewer than top_k"):
        cohort_stats(x, cohort, top_k=6)
    with pytest.raises(ValueError, match="at least 2"):
        cohort_stats(x, cohort, top_k=1)
    with pytest.raises(ValueError, match="embedding size"):
        cohort_stats(np.zeros((3, 4), np.float32), cohort, top_k=3)
