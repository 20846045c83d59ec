"""Score back-end: mean subtraction, cosine scoring and adaptive score normalisation (AS-norm), vectorised.

AS-norm follows docs/method.md#as-norm: the cohort is the per-speaker mean of the raw cohort embeddings minus
the mean vector; each utterance's cosine similarities to all cohort speakers are computed, the ``top_k``
largest kept, and their mean and *unbiased* standard deviation normalise the trial score,
``0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t)``. Unlike the reference
(docs/method.md#p5-as-norm-per-utterance), the statistics are computed once per utterance with one chunked
matrix product and a batched top-k (torch, multithreaded, optionally on a GPU), and trials only gather them.
Without torch (the ONNX runtime's install), :func:`cohort_stats` and :func:`cohort_from_table` run on numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

try:  # the ONNX runtime scores without torch: cohort statistics then run on numpy
    import torch
except ImportError:
    torch = None  # type: ignore[assignment]

from mlsv.scoring.embeddings import EmbeddingTable

__all__ = [
    "ASNORM_TOP_K",
    "Cohort",
    "as_norm",
    "cohort_from_table",
    "cohort_stats",
    "cohort_topk",
    "cosine_scores",
    "cosine_scores_indexed",
    "embedding_mean",
    "subtract_mean",
    "topk_stats",
]

#: The AS-norm cohort size when nothing else sets one (the paper's 600). Every entry point takes this one
#: default: ``--asnorm-top-k`` given, else the model's evaluation's, else its calibration's, else this.
ASNORM_TOP_K = 600

# Bytes of float32 similarities one chunk of the utterance x cohort product may hold.
_CHUNK_BYTES = 1 << 28


@dataclass(frozen=True)
class Cohort:
    """An AS-norm cohort: one vector per speaker.

    Attributes:
        speakers: (C,) speaker ids, sorted (the order ``np.unique`` gives).
        vectors: (C, E) float32 mean of each speaker's raw embeddings, minus ``mean``.
        mean: (E,) float32 the mean vector subtracted from the cohort (and from scored embeddings).
    """

    speakers: np.ndarray
    vectors: np.ndarray
    mean: np.ndarray

    def __len__(self) -> int:
        return len(self.speakers)


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device if device is not None else "cpu")


def embedding_mean(embeddings: np.ndarray) -> np.ndarray:
    """Mean of (N, E) embeddings as (E,) float32, accumulated in float64."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected a non-empty (N, E) array, got shape {x.shape}")
    return x.mean(axis=0, dtype=np.float64).astype(np.float32)


def subtract_mean(x: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Returns ``x - mean`` as float32; ``x`` is (N, E) or (E,), ``mean`` (E,) or None (no change)."""
    x = np.asarray(x, dtype=np.float32)
    if mean is None:
        return x
    mean = np.asarray(mean, dtype=np.float32).reshape(-1)
    if mean.shape[0] != x.shape[-1]:
        raise ValueError(f"mean vector has {mean.shape[0]} dimensions, embeddings have {x.shape[-1]}")
    return x - mean


def cosine_scores(enroll: np.ndarray, test: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise cosine similarity.

    Args:
        enroll: (N, E) embeddings.
        test: (N, E) embeddings.

    Returns:
        (N,) float64, ``cos(enroll[i], test[i])``.
    """
    a = np.asarray(enroll, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"enroll {a.shape} and test {b.shape} must both be (N, E)")
    na = np.maximum(np.linalg.norm(a, axis=1), eps)
    nb = np.maximum(np.linalg.norm(b, axis=1), eps)
    return np.einsum("ne,ne->n", a, b) / (na * nb)


def _normalized(x: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    return torch.nn.functional.normalize(t, dim=1, eps=1e-12)


def _as_index(idx: ArrayLike, n: int, what: str) -> np.ndarray:
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"{what} indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    return idx


def cosine_scores_indexed(
    embeddings: np.ndarray,
    enroll_idx: ArrayLike,
    test_idx: ArrayLike,
    *,
    chunk_size: int = 8192,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Cosine scores of trials given as row indices into one embedding matrix.

    Each embedding is length-normalised once. When the U x U similarity matrix fits in 256 MiB it is
    computed with one product and trials gather from it; otherwise trials are scored in chunks of
    ``chunk_size`` rows (numpy on CPU, whose small cache-resident chunks beat torch's indexing there),
    so memory stays at ``2 * chunk_size * E`` floats whatever the number of trials.

    Args:
        embeddings: (U, E) embeddings (already mean-subtracted if wanted).
        enroll_idx: (N,) int rows of the enrolment side.
        test_idx: (N,) int rows of the test side.

    Returns:
        (N,) float64 scores (computed in float32).
    """
    dev = _device(device)
    x = _normalized(np.asarray(embeddings), dev)
    u = len(x)
    e = _as_index(enroll_idx, u, "enroll")
    t = _as_index(test_idx, u, "test")
    if e.shape != t.shape:
        raise ValueError(f"enroll_idx has {e.size} entries, test_idx {t.size}")
    with torch.inference_mode():
        if 4 * u * u <= _CHUNK_BYTES and u * u <= 32 * e.size:  # a product beats ~32x as many gathers
            flat = torch.as_tensor(e * u + t, device=dev)
            return (x @ x.T).view(-1)[flat].double().cpu().numpy()
        out = np.empty(e.size, dtype=np.float64)
        if dev.type == "cpu":
            xn = x.numpy()
            for s in range(0, e.size, chunk_size):
                out[s : s + chunk_size] = np.einsum("ne,ne->n", xn[e[s : s + chunk_size]], xn[t[s : s + chunk_size]])
            return out
        for s in range(0, e.size, chunk_size):
            ei = torch.as_tensor(e[s : s + chunk_size], device=dev)
            ti = torch.as_tensor(t[s : s + chunk_size], device=dev)
            out[s : s + chunk_size] = (x[ei] * x[ti]).sum(1).double().cpu().numpy()
        return out


def cohort_from_table(table: EmbeddingTable, mean: np.ndarray | None = None) -> Cohort:
    """Builds the AS-norm cohort from a cohort embedding table (docs/method.md#as-norm).

    Args:
        table: cohort utterances with ``speakers`` set; embeddings are the raw (not normalised) ones.
        mean: (E,) mean vector; defaults to the mean of all the table's embeddings.

    Returns:
        :class:`Cohort` whose vectors are the per-speaker means of the raw embeddings minus ``mean``.
    """
    if table.speakers is None:
        raise ValueError("the cohort embeddings need a 'speakers' array (one speaker id per row)")
    if len(table) == 0:
        raise ValueError("the cohort embedding table is empty")
    mean = embedding_mean(table.embeddings) if mean is None else np.asarray(mean, dtype=np.float32).reshape(-1)
    speakers, inv = np.unique(table.speakers, return_inverse=True)
    if torch is not None:
        sums_t = torch.zeros(len(speakers), table.embeddings.shape[1], dtype=torch.float64)
        sums_t.index_add_(0, torch.as_tensor(inv.reshape(-1)), torch.as_tensor(table.embeddings).double())
        sums = sums_t.numpy()
    else:
        sums = np.zeros((len(speakers), table.embeddings.shape[1]), dtype=np.float64)
        np.add.at(sums, inv.reshape(-1), np.asarray(table.embeddings, dtype=np.float64))
    counts = np.bincount(inv.reshape(-1), minlength=len(speakers)).astype(np.float64)
    vectors = sums / counts[:, None]
    return Cohort(speakers, subtract_mean(vectors, mean), mean)


def _check_k(k: int, n_cohort: int, extra: int = 0) -> None:
    if k < 2:
        raise ValueError(f"AS-norm top_k must be at least 2 (the std needs two values), got {k}")
    if k + extra > n_cohort:
        need = f"top_k + {extra} = {k + extra}" if extra else f"top_k = {k}"
        raise ValueError(
            f"the AS-norm cohort has {n_cohort} speakers, fewer than {need}; "
            "use a smaller top_k (--asnorm-top-k) or a larger cohort"
        )


def _cohort_matrix(cohort: Cohort | np.ndarray) -> np.ndarray:
    vectors = cohort.vectors if isinstance(cohort, Cohort) else np.asarray(cohort)
    if vectors.ndim != 2:
        raise ValueError(f"cohort vectors must be (C, E), got shape {vectors.shape}")
    return vectors


def _chunk_rows(n_cohort: int, chunk_size: int | None) -> int:
    return chunk_size if chunk_size else max(1, _CHUNK_BYTES // (4 * max(n_cohort, 1)))


def cohort_topk(
    embeddings: np.ndarray,
    cohort: Cohort | np.ndarray,
    k: int,
    *,
    sorted: bool = True,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest cosine similarities of each embedding to the cohort.

    Args:
        embeddings: (N, E) mean-subtracted embeddings.
        cohort: :class:`Cohort` or (C, E) cohort vectors.
        k: how many to keep, ``k <= C``.
        sorted: sort each row descending (:func:`topk_stats` does not need it).
        chunk_size: rows per matrix product (default: as many as fit in 256 MiB of similarities).
        device: torch device for the product and the top-k.

    Returns:
        ``(values, indices)``, (N, k) float32 and (N, k) int64 cohort rows.
    """
    vectors = _cohort_matrix(cohort)
    if k > len(vectors):
        raise ValueError(f"cannot take the top {k} of a cohort of {len(vectors)} speakers")
    dev = _device(device)
    c = _normalized(vectors, dev)
    values = np.empty((len(embeddings), k), dtype=np.float32)
    indices = np.empty((len(embeddings), k), dtype=np.int64)
    rows = _chunk_rows(len(vectors), chunk_size)
    with torch.inference_mode():
        for s in range(0, len(embeddings), rows):
            q = _normalized(np.asarray(embeddings[s : s + rows]), dev)
            v, i = torch.topk(q @ c.T, k, dim=1, sorted=sorted)  # (n, k)
            values[s : s + rows] = v.cpu().numpy()
            indices[s : s + rows] = i.cpu().numpy()
    return values, indices


def _exclusions(exclude: ArrayLike, n: int) -> np.ndarray:
    ex = np.asarray(exclude, dtype=np.int64)
    if ex.ndim == 1:
        ex = ex[:, None]
    if ex.ndim != 2 or ex.shape[0] != n:
        raise ValueError(f"exclude has shape {ex.shape}, expected one row per embedding ({n})")
    return ex


def topk_stats(
    values: np.ndarray,
    indices: np.ndarray,
    top_k: int,
    exclude: ArrayLike | None = None,
    rows: ArrayLike | None = None,
    chunk_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased std of the ``top_k`` best cohort similarities, skipping excluded cohort rows.

    Use it with :func:`cohort_topk` run once with ``k = top_k + m`` when the same utterance needs
    statistics under different exclusions (calibration pairs exclude their own speakers): removing the
    (at most ``m``) excluded entries from a top-(k+m) list, then its smallest entries until ``top_k``
    remain, leaves exactly the top-k of the reduced cohort. Rows need not be sorted.

    Args:
        values: (N, K) cohort similarities per utterance, the K largest.
        indices: (N, K) their cohort rows.
        top_k: how many to keep after exclusion.
        exclude: None or (P, m) cohort rows to skip, -1 for "none"; needs ``K >= top_k + m``.
        rows: None (P = N) or (P,) rows of ``values`` to use for each output (one utterance may be
            needed under several exclusions).
        chunk_size: outputs per vectorised block (bounds memory).

    Returns:
        ``(mu, sigma)``, each (P,) float64.
    """
    values = np.asarray(values)
    indices = np.asarray(indices)
    if values.shape != indices.shape or values.ndim != 2:
        raise ValueError(f"values {values.shape} and indices {indices.shape} must be the same (N, K)")
    rows = np.arange(len(values)) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    p, kk = len(rows), values.shape[1]
    ex = np.full((p, 0), -1, np.int64) if exclude is None else _exclusions(exclude, p)
    if kk < top_k + ex.shape[1]:
        raise ValueError(
            f"need top_k + {ex.shape[1]} = {top_k + ex.shape[1]} similarities per row to "
            f"exclude up to {ex.shape[1]} cohort rows, got {kk}"
        )
    mu = np.empty(p, dtype=np.float64)
    sigma = np.empty(p, dtype=np.float64)
    for s in range(0, p, chunk_size):
        r = rows[s : s + chunk_size]
        v = values[r].astype(np.float64)  # (n, K)
        valid = np.ones(v.shape, dtype=bool)
        for col in ex[s : s + chunk_size].T:  # m passes; -1 never matches a cohort row
            valid &= indices[r] != col[:, None]
        surplus = valid.sum(1) - top_k  # in [0, m]
        masked = np.where(valid, v, np.inf)
        for step in range(int(surplus.max(initial=0))):  # drop the smallest surplus entries
            todo = np.flatnonzero(surplus > step)
            worst = masked[todo].argmin(1)
            valid[todo, worst] = False
            masked[todo, worst] = np.inf
        kept = np.where(valid, v, 0.0)
        m = kept.sum(1) / top_k
        mu[s : s + chunk_size] = m
        sigma[s : s + chunk_size] = np.sqrt((np.where(valid, v - m[:, None], 0.0) ** 2).sum(1) / (top_k - 1))
    return mu, sigma


def cohort_stats(
    embeddings: np.ndarray,
    cohort: Cohort | np.ndarray,
    top_k: int,
    exclude: ArrayLike | None = None,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-utterance AS-norm statistics: mean and unbiased std of the top-k cohort cosines.

    Computed once per utterance (not per trial): one chunked (N, E) x (E, C) product and a batched
    top-k. Excluded cohort rows are set to -inf before the top-k, which is exactly "remove them from the
    cohort".

    Args:
        embeddings: (N, E) mean-subtracted embeddings.
        cohort: :class:`Cohort` or (C, E) cohort vectors (mean-subtracted).
        top_k: cohort size per utterance (600 in the paper), ``2 <= top_k <= C``.
        exclude: None, (N,) or (N, m) int cohort rows to leave out per utterance (-1 for none).
        chunk_size: rows per product (default: as many as fit in 256 MiB).
        device: torch device.

    Returns:
        ``(mu, sigma)``, each (N,) float64.
    """
    vectors = _cohort_matrix(cohort)
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[1] != vectors.shape[1]:
        raise ValueError(f"embeddings {emb.shape} and cohort {vectors.shape} must share the embedding size")
    ex = None if exclude is None else _exclusions(exclude, len(emb))
    _check_k(top_k, len(vectors), 0 if ex is None else ex.shape[1])
    if torch is None:
        if device is not None and str(device) != "cpu":
            raise ValueError(f"device {str(device)!r}: without torch, cohort statistics run on the CPU (numpy)")
        return _cohort_stats_numpy(emb, vectors, top_k, ex, _chunk_rows(len(vectors), chunk_size))
    dev = _device(device)
    c = _normalized(vectors, dev)
    mu = np.empty(len(emb), dtype=np.float64)
    sigma = np.empty(len(emb), dtype=np.float64)
    rows = _chunk_rows(len(vectors), chunk_size)
    with torch.inference_mode():
        for s in range(0, len(emb), rows):
            sim = _normalized(emb[s : s + rows], dev) @ c.T  # (n, C)
            if ex is not None:
                r, j = np.nonzero(ex[s : s + rows] >= 0)
                cols = ex[s : s + rows][r, j]
                sim[torch.as_tensor(r, device=dev), torch.as_tensor(cols, device=dev)] = float("-inf")
            v = torch.topk(sim, top_k, dim=1, sorted=False).values.double()  # (n, top_k)
            mu[s : s + rows] = v.mean(1).cpu().numpy()
            sigma[s : s + rows] = v.std(1, correction=1).cpu().numpy()
    return mu, sigma


def _cohort_stats_numpy(
    emb: np.ndarray, vectors: np.ndarray, top_k: int, ex: np.ndarray | None, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cohort_stats` on numpy (float32 similarities, float64 statistics), where torch is not installed."""

    def normalized(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))

    c = normalized(vectors)
    mu = np.empty(len(emb), dtype=np.float64)
    sigma = np.empty(len(emb), dtype=np.float64)
    for s in range(0, len(emb), rows):
        sim = normalized(emb[s : s + rows]) @ c.T  # (n, C)
        if ex is not None:
            r, j = np.nonzero(ex[s : s + rows] >= 0)
            sim[r, ex[s : s + rows][r, j]] = -np.inf
        v = np.partition(sim, sim.shape[1] - top_k, axis=1)[:, -top_k:].astype(np.float64)  # (n, top_k)
        mu[s : s + rows] = v.mean(1)
        sigma[s : s + rows] = v.std(1, ddof=1)
    return mu, sigma


def as_norm(
    scores: np.ndarray, enroll_idx: ArrayLike, test_idx: ArrayLike, mu: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    """Symmetric adaptive score normalisation of trial scores from per-utterance statistics.

    Args:
        scores: (N,) raw cosine scores.
        enroll_idx, test_idx: (N,) rows of ``mu``/``sigma`` for each trial's two sides.
        mu, sigma: (U,) per-utterance cohort statistics from :func:`cohort_stats`.

    Returns:
        (N,) float64 ``0.5 * ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t)``.
    """
    s = np.asarray(scores, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    e = _as_index(enroll_idx, len(mu), "enroll")
    t = _as_index(test_idx, len(mu), "test")
    if not (s.shape == e.shape == t.shape):
        raise ValueError(f"scores {s.shape}, enroll_idx {e.shape} and test_idx {t.shape} must match")
    return 0.5 * ((s - mu[e]) / sigma[e] + (s - mu[t]) / sigma[t])
