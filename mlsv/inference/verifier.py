"""Use a trained model: embed audio, score two utterances, decide same/different speaker.

>>> from mlsv import Verifier
>>> v = Verifier.from_pretrained("runs/default/model")          # a folder or a hub id
>>> v.verify("a.wav", "b.flac")
VerificationResult(score=0.71, threshold=0.43, decision=True, scale='cosine', ...)

The Verifier is a thin facade over an :class:`~mlsv.inference.embedder.Embedder` (audio in,
embeddings out: batching, chunks, windows) and a :class:`~mlsv.inference.scorer.Scorer` (score scales,
thresholds, AS-norm, calibration; its module docstring says which scale and threshold apply when).

Audio: a path (WAV/FLAC/OGG/MP3 through soundfile, m4a through PyAV), or a numpy array / torch tensor
of samples, (S,), (S, C) or (C, S) with C <= 8 channels. Any sample rate (resampled with soxr to the
model's rate) and any channel count (averaged to mono). Missing, empty, silent, too short, non-finite
or undecodable audio raises :class:`~mlsv.data.audio.AudioError` naming the input.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mlsv.data.inputs import AudioInput, Enrolment, check_sample_rate, find_audio_files
from mlsv.inference.cohorts import cohort_table
from mlsv.inference.embedder import Embedder
from mlsv.inference.onnx_runtime import check_onnx_device, load_onnx_verifier_parts
from mlsv.inference.scorer import Scorer
from mlsv.inference.tracking import OnlineTracker, SpeakerTrack, WindowEmbeddings
from mlsv.scoring.embeddings import EmbeddingTable, pool_rows
from mlsv.scoring.record import Threshold

__all__ = ["Identification", "VerificationResult", "Verifier"]


@dataclass(frozen=True)
class Identification:
    """An open-set identification (``Verifier.identify``).

    Attributes:
        speaker: the best-scoring enrolled speaker when its score reaches the threshold, else None.
        score: the best score (on ``scale``).
        threshold, scale, threshold_source: as in :class:`VerificationResult`.
        ranking: every enrolled speaker with its score, best first.
    """

    speaker: str | None
    score: float
    threshold: float
    scale: str
    threshold_source: str
    ranking: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ranking": [{"speaker": n, "score": v} for n, v in self.ranking]}

    def __str__(self) -> str:
        if self.speaker is None:
            return (
                f"unknown speaker (best: {self.ranking[0][0]}, score {self.score:.4f} < threshold "
                f"{self.threshold:.4f}, {self.scale})"
            )
        return f"{self.speaker} (score {self.score:.4f} >= threshold {self.threshold:.4f}, {self.scale})"


@dataclass(frozen=True)
class VerificationResult:
    """One verification decision.

    Attributes:
        score: the trial score on ``scale``.
        threshold: the threshold in use (same scale); None when there is none (see ``outside_calibration``).
        decision: True when ``score >= threshold`` (same speaker); None: no decision (no threshold).
        scale: ``cosine``, ``asnorm`` or ``calibrated`` (an LLR).
        threshold_source: where the threshold came from (or why there is none).
        cosine: the cosine score (after mean subtraction), whatever the scale.
        outside_calibration: None, or why the trial got no calibrated decision: a side's duration or SNR lies
            outside the conditions the model's calibration was fitted on (measure, value, fitted range). The
            score and decision are then on the AS-norm scale, with its stored threshold, or there is no
            decision when the model stores none (docs/evaluation.md#calibration-conditions).
    """

    score: float
    threshold: float | None
    decision: bool | None
    scale: str
    threshold_source: str
    cosine: float
    outside_calibration: str | None = None

    @property
    def label(self) -> str:
        if self.decision is None:
            return "no decision"
        return "same speaker" if self.decision else "different speakers"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}

    def __str__(self) -> str:
        why = f"; outside the calibration: {self.outside_calibration}" if self.outside_calibration else ""
        if self.decision is None or self.threshold is None:
            return f"{self.label} (score {self.score:.4f}, {self.scale}: {self.threshold_source}{why})"
        op = ">=" if self.decision else "<"
        return f"{self.label} (score {self.score:.4f} {op} threshold {self.threshold:.4f}, {self.scale}{why})"


class Verifier:
    """Embeds, scores and verifies with a trained mlsv model (PyTorch or ONNX Runtime).

    Args:
        model: an ``MLSVModel``, or an embedding backend with ``config`` and ``__call__(input_values,
            attention_mask)`` returning (B, E) numpy (``TorchEmbedder``,
            :class:`mlsv.inference.onnx_runtime.OnnxEmbedder`).
        device: torch device for an ``MLSVModel``; ``"auto"``: cuda when present, else cpu.
        cohort: AS-norm cohort: an embedding ``.npz`` path or ``EmbeddingTable`` with ``speakers``, made
            with this model, or a manifest (JSONL / parquet rows with ``path`` and ``speaker``) whose
            recordings this model embeds (:mod:`mlsv.inference.cohorts`). Default: the cohort stored in
            the model (``cohort_embeddings``, speaker means written by ``mlsv evaluate``), if any. Enables
            the ``asnorm`` and (with a calibration) ``calibrated`` scales.
        asnorm_top_k: AS-norm cohort size (default: the evaluation's, else the calibration's, else 600;
            capped at the cohort size).
        batch_seconds: padded audio per batch (batch size x longest item), in seconds.
        use_stored_cohort: False scores a model that stores a cohort without it (cosine scale).
        calibration_guard: on the calibrated scale, a trial outside the conditions the calibration was
            fitted on (a side's duration or SNR estimate outside the fitted range) gets no calibrated
            decision (:attr:`VerificationResult.outside_calibration`); False decides every trial on the
            calibrated scale.
    """

    def __init__(
        self,
        model,
        *,
        device: str = "cpu",
        cohort: str | os.PathLike | EmbeddingTable | None = None,
        asnorm_top_k: int | None = None,
        batch_seconds: float = 60.0,
        use_stored_cohort: bool = True,
        calibration_guard: bool = True,
    ):
        self.calibration_guard = bool(calibration_guard)
        if hasattr(model, "frontend") and hasattr(model, "forward"):
            from mlsv.inference.torch_runtime import TorchEmbedder  # here: the ONNX runtime needs no torch

            backend = TorchEmbedder(model, device)
        elif callable(model) and hasattr(model, "config"):
            backend = model
        else:
            raise TypeError(f"model must be an MLSVModel or an embedder with .config, got {type(model).__name__}")
        self.embedder = Embedder(backend, batch_seconds=batch_seconds)
        if asnorm_top_k is not None and asnorm_top_k < 2:
            raise ValueError(f"asnorm_top_k (--asnorm-top-k) must be at least 2, got {asnorm_top_k}")
        # a table as given, or a manifest's recordings embedded with this model
        table = None if cohort is None else cohort_table(cohort, self.embedder)
        stored = _stored_cohort(model, backend) if table is None and use_stored_cohort else None
        self.scorer = Scorer(backend.config, cohort=table, stored_cohort=stored, asnorm_top_k=asnorm_top_k)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_dir_or_id: str | os.PathLike,
        device: str = "cpu",
        runtime: str = "torch",
        *,
        onnx_path: str | os.PathLike | None = None,
        revision: str | None = None,
        **kwargs,
    ) -> Verifier:
        """Loads a model folder (``save_pretrained``), a hub id, or (``runtime="onnx"``) an ONNX export.

        Args:
            model_dir_or_id: the model folder or hub id; with ``runtime="onnx"`` also a ``.onnx`` file
                with ``config.json`` beside it.
            device: torch device (``runtime="torch"``); ``"cuda"`` picks the CUDA provider for ONNX; ``"auto"``:
                cuda when present, else cpu.
            runtime: ``"torch"`` or ``"onnx"`` (runs ``model.onnx`` of the folder with onnxruntime).
            onnx_path: the ONNX file when it is not ``model.onnx`` in the folder.
            revision: hub revision.
            kwargs: :class:`Verifier` options (``cohort``, ``asnorm_top_k``, ``batch_seconds``).

        Raises:
            mlsv.inference.onnx_runtime.StaleExportError: (``runtime="onnx"``) the export's report (``<onnx>.json``)
                records other weights than the model's ``model.safetensors``: re-export it. Without
                weights to compare with, or a report without the fingerprint, it warns and loads.
        """
        src = os.fspath(model_dir_or_id)
        if runtime == "torch":
            if src.endswith(".onnx"):
                raise ValueError(f"{src} is an ONNX file; use runtime='onnx'")
            from mlsv.inference.torch_runtime import load_model  # here: the ONNX runtime needs no torch

            return cls(load_model(src, revision, device=device), device=device, **kwargs)
        if runtime == "onnx":
            embedder = load_onnx_verifier_parts(src, check_onnx_device(device), onnx_path=onnx_path, revision=revision)
            return cls(embedder, **kwargs)
        raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")

    # -- what the parts hold ----------------------------------------------------------------------
    @property
    def config(self):
        return self.embedder.config

    @property
    def device(self):
        """Where the model runs: a ``torch.device`` (PyTorch), or the device an ONNX export was loaded for."""
        return getattr(self.embedder.backend, "device", "cpu")

    def to(self, device) -> Verifier:
        """Moves a PyTorch model to ``device`` (``"cuda"``, ``"cpu"``, ...; checked before anything moves) and
        returns the Verifier. An ONNX export's device is chosen when it is loaded (``from_pretrained(...,
        runtime="onnx", device=...)``)."""
        backend = self.embedder.backend
        if not hasattr(backend, "to"):
            raise ValueError(
                f"an {self.embedder.runtime!r} runtime Verifier cannot move: load it again with device={device!r}"
            )
        backend.to(device)
        return self

    @property
    def sampling_rate(self) -> int:
        return self.embedder.sampling_rate

    @property
    def min_samples(self) -> int:
        return self.embedder.min_samples

    @property
    def batch_seconds(self) -> float:
        return self.embedder.batch_seconds

    @property
    def embedding_size(self) -> int:
        return self.embedder.embedding_size

    @property
    def score_scale(self) -> str:
        """``calibrated`` (calibration + cohort), ``asnorm`` (cohort) or ``cosine``."""
        return self.scorer.score_scale

    @property
    def cohort(self):
        return self.scorer.cohort

    @property
    def top_k(self) -> int:
        return self.scorer.top_k

    @property
    def mean(self) -> np.ndarray | None:
        return self.scorer.mean

    @property
    def calibrator(self):
        return self.scorer.calibrator

    # -- embedding --------------------------------------------------------------------------------
    def load(self, x: AudioInput, sample_rate: int | None = None, name: str | None = None) -> np.ndarray:
        """One input as checked float32 mono samples at the model's rate (see :func:`mlsv.data.inputs.load_audio`)."""
        return self.embedder.load(x, sample_rate, name)

    def embed(
        self,
        inputs: AudioInput | Sequence[AudioInput],
        sample_rate: int | None = None,
        *,
        chunk_seconds: float | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Embeddings of one input (E,) or of a list of inputs (N, E), float32.

        A folder stands for its audio files, searched recursively and sorted by path
        (:func:`~mlsv.data.inputs.find_audio_files`): ``embed("recordings/")`` is (N, E), one row per file, and
        a folder in a list adds its files' rows in its place (:meth:`embed_table` names each row by its path).
        Inputs are read lazily, sorted by length and batched (``batch_seconds`` of padded audio per
        batch); padding never changes an embedding, so an input gives the same embedding alone or in
        a batch. ``chunk_seconds > 0`` cuts an input longer than that into overlapping windows of
        that length (the rule of evaluation, :func:`mlsv.data.batching.chunk_spans`, so a file gets the
        embedding a manifest gives it) and averages their embeddings; 0 embeds whole inputs; None (the default)
        uses the window the model stores (``config.embedding_chunk_seconds``, chosen by ``mlsv evaluate``;
        whole inputs when none), as ``verify``, ``score``, ``identify`` and the rest do. ``progress``
        (default: when more than 16 inputs) shows a progress bar.
        """
        single = not isinstance(inputs, (list, tuple)) and not _is_folder(inputs)
        items = _expand_folders([inputs] if not isinstance(inputs, (list, tuple)) else list(inputs))
        matrix, _ = self.embedder.embed_many(items, sample_rate, chunk_seconds, progress)
        return matrix[0] if single else matrix

    def embed_table(
        self,
        inputs: Sequence[AudioInput],
        ids: Sequence[str] | None = None,
        *,
        sample_rate: int | None = None,
        chunk_seconds: float | None = None,
        progress: bool | None = None,
    ) -> EmbeddingTable:
        """Embeds ``inputs`` into an ``EmbeddingTable``: :meth:`Embedder.embed_table
        <mlsv.inference.embedder.Embedder.embed_table>` (a repeated id is refused before anything is embedded).
        ``inputs`` may be a folder, or hold folders, which stand for their audio files (ids: the files' paths)."""
        if ids is None:
            inputs = _expand_folders([inputs] if _is_folder(inputs) else list(inputs))
        return self.embedder.embed_table(
            inputs, ids, sample_rate=sample_rate, chunk_seconds=chunk_seconds, progress=progress
        )

    def embed_windows(
        self,
        x: AudioInput,
        *,
        window: float = 1.5,
        hop: float | None = None,
        sample_rate: int | None = None,
        progress: bool | None = None,
    ) -> WindowEmbeddings:
        """Embeddings of a recording's sliding windows (for where a voice is in it, or for clustering).

        Windows of ``window`` seconds start every ``hop`` seconds (default ``window / 2``); when the
        last one stops short of the end, one more window ends exactly at the end, so every window has
        the same length and (with ``hop <= window``) every sample is covered. A recording shorter than
        ``window`` is one window. Windows are cut and embedded batch by batch; each gets the embedding
        the same samples would get alone (``embed(samples[start:end])``).

        Raises:
            ValueError: ``window`` shorter than the encoder's minimum, or ``hop`` not positive, before
                any audio is read.
            AudioError: the recording is missing, empty, corrupt, too short or silent, naming it.
        """
        size, step = self.embedder.window_sizes(window, hop)
        return WindowEmbeddings(*self.embedder.windows(x, size, step, check_sample_rate(sample_rate), progress))

    def _enrolment(self, enroll: Enrolment, sample_rate: int | None) -> tuple[np.ndarray, float]:
        """The raw embedding and seconds of an enrolment (one recording, or a list of them)."""
        embedding, seconds, _ = _pool(*self.embedder.embed_measured(_inputs(enroll), sample_rate))
        return embedding, seconds

    # -- scoring and decisions --------------------------------------------------------------------
    def score_embeddings(
        self,
        a: np.ndarray,
        b: np.ndarray,
        duration_a: float | None = None,
        duration_b: float | None = None,
        snr_a: float | None = None,
        snr_b: float | None = None,
    ) -> dict[str, float]:
        """Scores two raw embeddings (E,) on every available scale: ``{"cosine", "asnorm"?, "calibrated"?}``.

        ``duration_*`` (seconds) are needed only on the calibrated scale, ``snr_*`` (dB SNR estimates, e.g. an
        embeddings table's ``snr``) only by a calibration with the SNR features.
        """
        return self.scorer.score_embeddings(a, b, duration_a, duration_b, snr_a, snr_b)

    def _pair_scores(self, a: Enrolment, b: AudioInput, sample_rate: int | None) -> tuple[dict[str, float], str | None]:
        enroll = _inputs(a)
        matrix, durations, snr = self.embedder.embed_measured([*enroll, b], sample_rate)
        embedding, seconds, db = _pool(matrix[:-1], durations[:-1], snr[:-1])
        return self.scorer.score_trial(embedding, matrix[-1], seconds, float(durations[-1]), db, float(snr[-1]))

    def score(self, a: Enrolment, b: AudioInput, sample_rate: int | None = None) -> float:
        """The trial score of two utterances on :attr:`score_scale` (higher: more likely the same speaker);
        ``a`` may be a list of one speaker's recordings (see :meth:`verify`). On the calibrated scale the LLR,
        whether or not the trial lies within the calibration's conditions (:meth:`verify` says)."""
        return self._pair_scores(a, b, sample_rate)[0][self.score_scale]

    def threshold(self, far: float | None = None, scale: str | None = None) -> Threshold:
        """The decision threshold on ``scale`` (default :attr:`score_scale`): see :mod:`mlsv.inference.scorer`.

        Raises:
            ValueError: the model stores nothing that gives a threshold on that scale, explaining why
                and what to pass instead.
        """
        return self.scorer.threshold(far=far, scale=scale)

    def verify(
        self,
        a: Enrolment,
        b: AudioInput,
        *,
        far: float | None = None,
        threshold: float | None = None,
        sample_rate: int | None = None,
    ) -> VerificationResult:
        """Same speaker or not: score the pair and compare with the threshold (``score >= threshold``).

        Args:
            a, b: the two utterances (paths or sample arrays). ``a`` may be a list (or tuple) of one
                speaker's recordings: their embeddings are averaged, weighted by duration (the rule for
                a long file's chunks), and their durations add up.
            far: target false-accept rate instead of the model's EER-point threshold.
            threshold: an explicit, finite threshold on :attr:`score_scale` (not with ``far``).
            sample_rate: the rate of array inputs.

        Raises:
            ValueError: both ``far`` and ``threshold``, a non-finite threshold, a ``far`` outside (0, 1),
                or a ``sample_rate`` that is not a positive integer, before any audio is read.
        """
        scale = self.score_scale
        th = self.scorer.decision_threshold(far, threshold, scale)  # fails before any audio is read
        sample_rate = check_sample_rate(sample_rate)
        scores, outside = self._pair_scores(a, b, sample_rate)
        return self._decide(scores, outside, scale, th, far, threshold)

    def _decide(
        self,
        scores: dict[str, float],
        outside: str | None,
        scale: str,
        th: Threshold,
        far: float | None,
        threshold: float | None,
    ) -> VerificationResult:
        """The result on ``scale``, or, for a calibrated trial outside the calibration's conditions (and the
        guard on), on the AS-norm scale with its own threshold (for ``far``, or the model's), or no decision
        when there is none (a ``threshold`` given for LLRs does not apply to AS-norm scores)."""
        if scale != "calibrated" or outside is None or not self.calibration_guard:
            return _result(scores, scale, th)
        fallback = "asnorm"
        if threshold is not None:
            reason = "no AS-norm threshold: the threshold given applies to calibrated LLRs"
        else:
            try:
                return _result(scores, fallback, self.scorer.threshold(far=far, scale=fallback), outside)
            except ValueError as e:
                reason = f"no AS-norm threshold ({e})"
        return VerificationResult(
            score=scores[fallback],
            threshold=None,
            decision=None,
            scale=fallback,
            threshold_source=reason,
            cosine=scores["cosine"],
            outside_calibration=outside,
        )

    def verify_pairs(
        self,
        pairs: Sequence[tuple[Enrolment, AudioInput]],
        *,
        far: float | None = None,
        threshold: float | None = None,
        sample_rate: int | None = None,
        progress: bool | None = None,
    ) -> list[VerificationResult]:
        """:meth:`verify` for a list of pairs in one batched pass: each distinct recording is read and embedded
        once (a path named in several pairs, or the same array object), all of them batched together, and
        every pair then scored and decided as :meth:`verify` would (same scale, same threshold).

        Args:
            pairs: ``(a, b)`` pairs; ``a`` may be a list of one speaker's recordings (see :meth:`verify`).
            far, threshold, sample_rate: as in :meth:`verify`, for every pair.
            progress: a progress bar while embedding (default: more than 16 recordings).

        Returns:
            One :class:`VerificationResult` per pair, in the order given.

        Raises:
            ValueError: an item that is not a pair (naming its position), or a threshold problem, before
                any audio is read.
        """
        scale = self.score_scale
        th = self.scorer.decision_threshold(far, threshold, scale)
        sample_rate = check_sample_rate(sample_rate)
        pairs = list(pairs)
        if not pairs:
            raise ValueError("verify_pairs: no pairs given")
        index: dict[Any, int] = {}
        inputs: list = []

        def row(x) -> int:
            key = ("path", os.path.abspath(os.fspath(x))) if isinstance(x, (str, os.PathLike)) else ("object", id(x))
            if key not in index:
                index[key] = len(inputs)
                inputs.append(x)
            return index[key]

        rows = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"verify_pairs: item #{i} is not an (enrolment, test) pair: {pair!r:.80}")
            rows.append(([row(x) for x in _inputs(pair[0])], row(pair[1])))
        matrix, durations, snr = self.embedder.embed_measured(inputs, sample_rate, progress=progress)
        results = []
        for enroll, test in rows:
            embedding, seconds, db = _pool(matrix[enroll], durations[enroll], snr[enroll])
            scores, outside = self.scorer.score_trial(
                embedding, matrix[test], seconds, float(durations[test]), db, float(snr[test])
            )
            results.append(self._decide(scores, outside, scale, th, far, threshold))
        return results

    def identify(
        self,
        test: AudioInput,
        speakers: Mapping[str, Enrolment] | EmbeddingTable,
        *,
        far: float | None = None,
        threshold: float | None = None,
        sample_rate: int | None = None,
    ) -> Identification:
        """Which of the enrolled ``speakers`` is speaking in ``test``, or none of them (open set).

        Each enrolled speaker is scored against ``test`` as :meth:`verify` would score them (the speaker
        as the enrolment side); the best one is the answer when its score reaches the threshold, else
        the speaker is unknown.

        Args:
            speakers: name -> recording(s) (see :meth:`verify`), or an embeddings table with speakers
                (``mlsv embed --manifest`` of an enrolment manifest): each speaker's rows are pooled as
                several recordings are (duration-weighted mean, durations added).
        """
        scale = self.score_scale
        th = self.scorer.decision_threshold(far, threshold, scale)
        sample_rate = check_sample_rate(sample_rate)
        names, matrix, seconds, snr = self._speaker_set(speakers, sample_rate)
        test_matrix, test_seconds, test_snr = self.embedder.embed_measured([test], sample_rate)
        scores = self.scorer.scores_against(
            test_matrix[0], matrix, (float(test_seconds[0]), seconds), a_is_test=True, snr=(float(test_snr[0]), snr)
        )[scale]
        order = np.argsort(-scores, kind="stable")
        best = float(scores[order[0]])
        return Identification(
            speaker=names[order[0]] if best >= th.value else None,
            score=best,
            threshold=th.value,
            scale=scale,
            threshold_source=th.source,
            ranking=[(names[i], float(scores[i])) for i in order],
        )

    def _speaker_set(
        self, speakers: Mapping[str, Enrolment] | EmbeddingTable, sample_rate: int | None
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Enrolled speakers as (names, (S, E) raw embeddings, (S,) seconds, (S,) SNR dB): all recordings
        embedded in one batched pass, or a table's rows, pooled per speaker."""
        if isinstance(speakers, EmbeddingTable):
            if speakers.speakers is None:
                raise ValueError(
                    "the enrolled speakers' table has no speaker labels; embed an enrolment manifest "
                    "with speakers (mlsv embed --manifest)"
                )
            if speakers.embeddings.shape[1] != self.embedding_size:
                raise ValueError(
                    f"the enrolled speakers' embeddings have {speakers.embeddings.shape[1]} dimensions, "
                    f"the model gives {self.embedding_size}"
                )
            if not len(speakers.ids):
                raise ValueError("the enrolled speakers' table is empty")
            owners, matrix, durations = speakers.speakers.tolist(), speakers.embeddings, speakers.durations
            snr = speakers.snr
        else:
            if not isinstance(speakers, Mapping) or not speakers:
                raise ValueError(
                    "speakers must be a non-empty mapping of name -> recording(s), or an embeddings table with speakers"
                )
            owners, inputs = [], []
            if len({str(name) for name in speakers}) < len(speakers):
                raise ValueError(
                    f"speaker names repeat as text ({', '.join(map(repr, speakers))}): each speaker "
                    "needs a name of its own"
                )
            for name, enrolment in speakers.items():
                recordings = _inputs(enrolment)
                owners += [str(name)] * len(recordings)
                inputs += recordings
            matrix, durations, snr = self.embedder.embed_measured(inputs, sample_rate)
        pooled = pool_rows(owners, matrix, durations, snr)
        return pooled.ids.tolist(), pooled.embeddings, pooled.durations, pooled.snr

    # -- where a speaker speaks -------------------------------------------------------------------
    def track(
        self,
        enroll: Enrolment,
        recording: AudioInput,
        *,
        window: float = 1.5,
        hop: float | None = None,
        far: float | None = None,
        threshold: float | None = None,
        sample_rate: int | None = None,
    ) -> SpeakerTrack:
        """Where the enrolled speaker speaks in a recording: ``enroll`` scored against each of the
        recording's sliding windows (:meth:`embed_windows`), on :attr:`score_scale`, each window
        compared with the threshold as in :meth:`verify`.

        The model's threshold was chosen on whole utterances; on the calibrated scale a window's
        duration enters its score, on the others short windows score lower, so a threshold for the
        windows' length (``threshold=`` or ``far=``) may suit them better.
        """
        scale = self.score_scale
        th = self.scorer.decision_threshold(far, threshold, scale)
        size, step = self.embedder.window_sizes(window, hop)
        sample_rate = check_sample_rate(sample_rate)
        embedding, seconds = self._enrolment(enroll, sample_rate)
        starts, ends, embeddings = self.embedder.windows(recording, size, step, sample_rate, None)
        scores = self.scorer.scores_against(embedding, embeddings, (seconds, ends - starts))[scale]
        return SpeakerTrack(starts, ends, np.asarray(scores, np.float64), th.value, scale, th.source)

    def online(
        self,
        enroll: Enrolment,
        *,
        window: float = 1.5,
        hop: float | None = None,
        far: float | None = None,
        threshold: float | None = None,
        sample_rate: int | None = None,
    ) -> OnlineTracker:
        """``track`` for a live stream: an :class:`~mlsv.inference.tracking.OnlineTracker` whose ``push(samples)``
        returns each window's score and decision as soon as its last sample arrives.

        >>> tracker = v.online("enroll.wav", window=1.5, hop=0.5)
        >>> for chunk in microphone():                       # float32 samples at the model's rate
        ...     for w in tracker.push(chunk):
        ...         print(w.start, w.end, w.score, w.decision)
        >>> tracker.flush()                                   # the last window, at the end of the stream

        ``sample_rate`` is the rate of the stream (and of an array ``enroll``); default: the model's. Other
        rates are resampled as the samples come.
        """
        scale = self.score_scale
        th = self.scorer.decision_threshold(far, threshold, scale)
        size, step = self.embedder.window_sizes(window, hop)
        sample_rate = check_sample_rate(sample_rate)
        embedding, seconds = self._enrolment(enroll, sample_rate)
        return OnlineTracker(self, embedding, seconds, size, step, th, sample_rate or self.sampling_rate)

    def __repr__(self) -> str:
        return (
            f"Verifier(runtime={self.embedder.runtime!r}, embedding_size={self.embedding_size}, "
            f"sampling_rate={self.sampling_rate}, scale={self.score_scale!r})"
        )


def _result(scores: dict[str, float], scale: str, th: Threshold, outside: str | None = None) -> VerificationResult:
    """The decision of a pair's scores (``{"cosine", ...}``) on ``scale`` against ``th``."""
    s = scores[scale]
    return VerificationResult(
        score=s,
        threshold=th.value,
        decision=bool(s >= th.value),
        scale=scale,
        threshold_source=th.source,
        cosine=scores["cosine"],
        outside_calibration=outside,
    )


def _is_folder(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike)) and os.path.isdir(x)


def _expand_folders(inputs: list) -> list:
    """``inputs`` with each folder replaced, in place, by its audio files (recursively, sorted by path)."""
    out: list = []
    for x in inputs:
        out.extend(find_audio_files([x]) if _is_folder(x) else [x])
    return out


def _inputs(enroll: Enrolment) -> list:
    """An enrolment's recordings as a list (a list or tuple holds several)."""
    inputs = list(enroll) if isinstance(enroll, (list, tuple)) else [enroll]
    if not inputs:
        raise ValueError("an empty enrolment: give one recording, or a list of one speaker's recordings")
    return inputs


def _pool(matrix: np.ndarray, durations: np.ndarray, snr: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Several recordings of one speaker as one (``pool_rows``): (E,) embedding, total seconds and
    duration-weighted mean SNR (dB)."""
    one = pool_rows(np.zeros(len(matrix), np.int64), matrix, durations, snr)
    return one.embeddings[0], float(one.durations[0]), float(one.snr[0])


def _stored_cohort(model, backend) -> np.ndarray | None:
    """The (C, E) AS-norm cohort a model (or an ONNX backend) stores (``cohort_embeddings``), or None."""
    buf = getattr(model, "cohort_embeddings", None)
    if buf is None:
        buf = getattr(backend, "cohort_embeddings", None)
    if buf is None:
        return None
    arr = buf.detach().cpu().numpy() if hasattr(buf, "detach") else np.asarray(buf)
    return arr.astype(np.float32) if arr.ndim == 2 and arr.shape[0] > 0 else None
