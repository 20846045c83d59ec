"""Evaluation of a trained model: embed, score (cosine, AS-norm, QMF), metrics, plots, report.

``evaluate_model`` is what ``mlsv evaluate`` and the recipes' evaluate steps run. It also writes the
evaluated model (``out_dir/model``) with what evaluation learnt in its config: the calibration, the
decision threshold, the AS-norm cohort (speaker means, saved as a buffer) and the metrics of every
score scale (which the model card shows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mlsv.data.audio import SILENCE_PEAK, AudioError, silent_audio_message
from mlsv.data.loader import build_eval_loader
from mlsv.data.manifest import has_audio, iter_rows, manifest_root, resolve_path
from mlsv.data.sources import is_source, open_source, source_files
from mlsv.data.trials import check_trial_ids, read_trials
from mlsv.inference.cohorts import cohort_table as load_cohort_table
from mlsv.inference.cohorts import is_embeddings_file
from mlsv.inference.embedder import stored_chunk_seconds
from mlsv.inference.export import weights_fingerprint
from mlsv.locks import FolderLock
from mlsv.models.loading import check_device, load_model, min_samples
from mlsv.models.runtime import autocast_dtype
from mlsv.scoring.backend import ASNORM_TOP_K, cohort_from_table, embedding_mean
from mlsv.scoring.calibration import check_calibration_cohort, fit_calibration
from mlsv.scoring.embeddings import EmbeddingTable, check_finite, load_embeddings, save_embeddings
from mlsv.scoring.extract import extract_embeddings
from mlsv.scoring.metrics import eer
from mlsv.scoring.pipeline import (
    calibration_outside,
    check_distinct_names,
    score_trial_lists,
    trial_metrics,
    write_metrics_json,
    write_scores_tsv,
)
from mlsv.scoring.plots import plot_det, plot_histogram, write_report
from mlsv.scoring.record import EvaluationRecord, record_score_statistics

log = logging.getLogger("mlsv.inference.evaluation")


def embed_manifest(
    model,
    manifest: str | Path,
    *,
    batch_seconds: float = 120.0,
    chunk_seconds: float | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
) -> EmbeddingTable:
    """Embeds every utterance of a manifest (length-sorted padded batches); speakers from the manifest.

    Ids are strings; ``speakers`` is None unless every row has one. Raises ValueError naming
    ``chunk_seconds`` or the utterances too short for the encoder, and the utterances (with their
    paths) whose embeddings are NaN or infinite; ``AudioError`` naming an undecodable or silent file
    (the rule of :func:`mlsv.data.inputs.load_audio`, so a file embeds, or is refused, the same from a manifest
    as from its path); ValueError naming a bad ``device``.
    """

    if device is not None:
        device = check_device(device)
    rate = int(model.config.sampling_rate)
    need = min_samples(model.config)
    if chunk_seconds is None:  # the window the model stores (0: whole utterances)
        chunk_seconds = stored_chunk_seconds(model.config)
    if 0 < chunk_seconds * rate < need:
        raise ValueError(
            f"chunk_seconds (--chunk-seconds) {chunk_seconds:g} is shorter than the encoder's "
            f"minimum of {need} samples ({need / rate:.4f} s)"
        )
    loader = build_eval_loader(
        str(manifest),
        batch_seconds=batch_seconds,
        chunk_seconds=chunk_seconds,
        sample_rate=rate,
        num_workers=num_workers,
    )
    rows = [row for _, row in iter_rows(manifest)]
    paths = {str(row["id"]): str(row["path"]) for row in rows if row.get("path")}
    table = extract_embeddings(
        model,
        _refuse_silent(loader, paths),
        device=device,
        progress=progress,
        autocast_dtype=autocast_dtype,
        total=len(loader) if hasattr(loader, "__len__") else None,
    )
    speakers = {str(row["id"]): row.get("speaker") for row in rows}
    if all(speakers.get(u) not in (None, "") for u in table.ids):
        table.speakers = np.array([str(speakers[u]) for u in table.ids])
    check_finite(table, str(manifest), paths)
    return table


def _refuse_silent(loader: Iterable[dict], paths: dict[str, str]) -> Iterator[dict]:
    """The loader's batches, raising ``AudioError`` for an utterance whose every sample (all its chunks)
    is below :data:`mlsv.data.audio.SILENCE_PEAK`: the Verifier refuses such a file, so a manifest does too.

    An utterance is judged once its last chunk has passed (the chunks it has come from the loader's
    plan, ``dataset.batches``), so a silent file stops the pass at its batch; without a plan, at the end.
    """

    plan = getattr(getattr(loader, "dataset", None), "batches", None)
    expected = Counter(str(item[0]) for batch in plan for item in batch) if plan is not None else None
    seen: Counter = Counter()
    peaks: dict[str, float] = {}

    def check(uid: str) -> None:
        if peaks[uid] < SILENCE_PEAK:
            name = f"{paths[uid]} (manifest id {uid})" if uid in paths else f"manifest id {uid}"
            raise AudioError(silent_audio_message(name, peaks[uid]))

    for batch in loader:
        peak = batch["waveforms"].abs().amax(dim=-1).tolist()  # padding is zeros: it never raises a peak
        for uid, p in zip(batch["ids"], peak):
            uid = str(uid)
            peaks[uid] = max(peaks.get(uid, 0.0), float(p))
            seen[uid] += 1
            if expected is not None and seen[uid] == expected[uid]:
                check(uid)
        yield batch
    if expected is None:
        for uid in peaks:
            check(uid)


def _model_fingerprint(model) -> str:
    """sha256 of a model's config and weights (``weights_fingerprint``): what its embeddings depend on."""

    return hashlib.sha256(f"{model.config.to_json_string()}\n{weights_fingerprint(model)}".encode()).hexdigest()


def _audio_digest(manifest: Path) -> str:
    """sha256 over the (path, size, mtime) of every audio file a manifest's rows name: an edited or
    replaced file behind an unchanged manifest changes it. Missing files count as such (the loader
    names them later); audio stored in the rows is covered by the manifest's own size and mtime."""

    if (manifest.is_dir() or manifest.suffix == ".parquet") and has_audio(manifest):
        return ""  # shards: the audio is in the files, whose size and mtime are in the fingerprint
    root, h = manifest_root(manifest), hashlib.sha256()
    for _, row in iter_rows(manifest):
        if not row.get("path"):
            continue
        path = resolve_path(str(row["path"]), root)
        try:
            st = os.stat(path)
            h.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\tmissing\n".encode())
    return h.hexdigest()


def _fingerprint(model_hash: str, manifest: str | Path, **settings) -> dict:
    """What an embeddings cache depends on: the model, the manifest file(s) (size, mtime), the audio
    files the rows name (size, mtime) and ``settings``. A dataset source: its spec and its Arrow files (size,
    mtime), which hold or name its audio."""
    if is_source(manifest):
        return {"model": model_hash, "manifest": [str(manifest), *source_files(open_source(str(manifest)))], **settings}
    path = Path(manifest).resolve()
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return {
        "model": model_hash,
        "manifest": [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "audio": _audio_digest(path),
        **settings,
    }


def _cached_embeddings(model, manifest, path: Path, fingerprint: dict, **kw) -> EmbeddingTable:
    """Embeddings of ``manifest``, reused from ``path`` when its ``.source.json`` matches ``fingerprint``."""
    source = path.with_suffix(".source.json")
    if path.is_file():
        try:
            old = json.loads(source.read_text())
        except (OSError, ValueError):
            old = None
        if old == fingerprint:
            log.info("reusing %s (same model, manifest and settings)", path)
            return load_embeddings(path)
        why = (
            "no record of what made it"
            if old is None
            else "made with another " + ", ".join(k for k in fingerprint if old.get(k) != fingerprint[k])
        )
        log.warning("%s: %s; embedding %s again", path, why, manifest)
    source.unlink(missing_ok=True)
    table = embed_manifest(model, manifest, **kw)
    save_embeddings(table, path)
    source.write_text(json.dumps(fingerprint, indent=2) + "\n")
    return table


def evaluate_model(
    model_dir: str | Path,
    *,
    manifest: str,
    trials: list[str],
    out_dir: str | Path,
    cohort: str | None = None,
    top_k: int = ASNORM_TOP_K,
    calibration_pairs: int = 30000,
    batch_seconds: float = 120.0,
    chunk_seconds: float | None = None,
    device: str | None = None,
    plots: bool = True,
    threshold_manifest: str | None = None,
    threshold_trials: str | None = None,
    precision: str = "fp32",
    calibration_snr: bool = False,
) -> dict:
    """Embeds, scores every trial list at each stage, calibrates, and writes results.

    Args:
        model_dir: a model folder (``save_pretrained``).
        manifest: the utterances the trial lists name.
        trials: trial list paths (VoxCeleb format).
        out_dir: results folder.
        cohort: a manifest of cohort utterances (with speakers) for AS-norm and the QMF calibration
            pairs, or their embeddings ``.npz`` (with speakers) made with this model; never the test
            speakers. None: cosine scoring only.
        top_k: AS-norm cohort size.
        calibration_pairs: QMF training pairs drawn from the cohort.
        calibration_snr: the QMF calibration also uses the recordings' SNR estimates (``snr_e``, ``snr_t``).
            Either way its conditions guard is recorded, and calibrated metrics also count the trials
            outside it and give the metrics of those inside (``inside_calibration``).
        threshold_manifest, threshold_trials: a held-out (validation) list whose scores set the
            model's decision thresholds and false-accept tables on every score scale; without it
            the threshold is the calibration's (EER point of the cohort pairs).
        chunk_seconds: the embedding window: 0 whole utterances, > 0 overlapping windows of this length,
            averaged. None (the default): the window the model stores; when it stores none, records its
            training crop length and a held-out list is given, the better on that list (cosine EER) of
            whole utterances and chunks of the training crop length, stored in the model
            (``embedding_chunk_seconds``) and reported under ``embedding_window`` in ``results.json``.
        precision: "fp32", or "bf16"/"fp16" autocast for the embedding pass (a GPU's fast path; the
            GPU equivalence test bounds the difference at a cosine of 0.999 per embedding).

    Returns:
        ``{"metrics": {stage: {list: metrics}}, "final_stage": ..., "model": out_dir/model}``
    """

    if top_k < 2:
        raise ValueError(f"top_k (--asnorm-top-k) must be at least 2, got {top_k}")
    dev = check_device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_distinct_names([Path(t).stem for t in trials], trials)
    trial_lists = [read_trials(t) for t in trials]
    _check_before_embedding(
        manifest,
        trial_lists,
        cohort,
        top_k=top_k,
        calibration_pairs=calibration_pairs,
        threshold=(threshold_manifest or manifest, threshold_trials) if threshold_trials else None,
    )
    with FolderLock(out_dir, "mlsv evaluate"):
        return _evaluate(
            model_dir,
            manifest=manifest,
            trial_lists=trial_lists,
            out=Path(out_dir),
            cohort=cohort,
            top_k=top_k,
            calibration_pairs=calibration_pairs,
            batch_seconds=batch_seconds,
            chunk_seconds=chunk_seconds,
            device=dev,
            plots=plots,
            threshold_manifest=threshold_manifest,
            threshold_trials=threshold_trials,
            precision=precision,
            calibration_snr=calibration_snr,
        )


def _evaluate(
    model_dir,
    *,
    manifest: str,
    trial_lists: list,
    out: Path,
    cohort: str | None,
    top_k: int,
    calibration_pairs: int,
    batch_seconds: float,
    chunk_seconds: float | None,
    device: torch.device,
    plots: bool,
    threshold_manifest: str | None,
    threshold_trials: str | None,
    precision: str,
    calibration_snr: bool = False,
) -> dict:
    """``evaluate_model``'s work, its arguments checked and the output folder locked."""
    dev = device
    model = load_model(model_dir)
    window, held_table = None, None
    if chunk_seconds is None:
        window, held_table = _choose_window(
            model, out, threshold_manifest or manifest, threshold_trials, precision, batch_seconds, dev
        )
        chunk_seconds = stored_chunk_seconds(model.config)
    embed = _Embeddings(
        model,
        _model_fingerprint(model),
        out,
        precision=precision,
        chunk_seconds=chunk_seconds,
        batch_seconds=batch_seconds,
        device=dev,
    )
    table = embed(manifest, "embeddings.npz")
    if cohort and is_embeddings_file(cohort):  # a table made with this model: used as it is
        cohort_table: EmbeddingTable | None = load_cohort_table(cohort)
        if cohort_table.embeddings.shape[1] != table.embeddings.shape[1]:
            raise ValueError(
                f"{cohort}: cohort embeddings have {cohort_table.embeddings.shape[1]} dimensions, the model "
                f"gives {table.embeddings.shape[1]} (a cohort must be embedded with the model it scores)"
            )
    else:
        cohort_table = embed(cohort, "cohort.npz") if cohort else None
    if cohort_table is not None and cohort_table.speakers is None:
        raise ValueError(f"{cohort}: the cohort manifest needs a speaker on every row")
    mean = _scoring_mean(model, table, cohort_table)
    calibrator = None
    if cohort_table is not None:
        calibrator = fit_calibration(
            cohort_table, mean=mean, top_k=top_k, n_pairs=calibration_pairs, with_snr=calibration_snr
        )
        calibrator.save(out / "calibration.json")
    scored = score_trial_lists(table, trial_lists, mean=mean, cohort=cohort_table, top_k=top_k, calibrator=calibrator)
    outside = None if calibrator is None else [calibration_outside(table, tr, calibrator) for tr in trial_lists]
    metrics = _write_results(out, trial_lists, scored, plots=plots, model_name=Path(model_dir).name, outside=outside)
    final = list(metrics)[-1]
    _record_in_model(model, mean, metrics, trial_lists, top_k, calibrator, cohort_table)
    if threshold_trials:
        held_out = read_trials(threshold_trials)
        if held_table is None:  # else the held-out list's embeddings in the window just chosen on it
            held_table = embed(threshold_manifest or manifest, "threshold_embeddings.npz")
        held_scores = score_trial_lists(
            held_table, [held_out], mean=mean, cohort=cohort_table, top_k=top_k, calibrator=calibrator
        )[0]
        record_score_statistics(model.config, held_scores, held_out.labels, trial_list=held_out.name)
    model_out = out / "model"
    if model_out.exists():
        shutil.rmtree(model_out)
    model.save_pretrained(model_out)
    log.info("evaluation of %s: %s", model_dir, json.dumps(metrics[final]))
    if window is not None:
        (out / "embedding_window.json").write_text(json.dumps(window, indent=2) + "\n")
    return {"metrics": metrics, "final_stage": final, "model": str(model_out), "embedding_window": window}


#: Chunks replace whole utterances only when they lower the held-out EER by more than 10 %: the gap they close
#: is large (1.2-5x on real speech with crop-trained models), and a held-out list of a few hundred trials moves
#: by a few percent between equivalent windows (the main job's SUPERB: 12.87 against 13.05 on validation, then
#: 13.19 against 12.64 on the test list).
WINDOW_MARGIN = 0.9


def _choose_window(model, out: Path, manifest: str, trials: str | None, precision: str, batch_seconds: float, device):
    """The embedding window of a model that stores none: windows of its training crop length when they give a
    cosine EER (mean-subtracted) on the held-out list ``trials`` below ``WINDOW_MARGIN`` times whole utterances,
    else whole utterances; stored in the model's config. Returns what was measured and the held-out list's
    embeddings in the chosen window ((None, None) when nothing was measured: a window stored already, no
    training crop length, or no held-out list)."""
    crop = getattr(model.config, "train_crop_seconds", None)
    if getattr(model.config, "embedding_chunk_seconds", None) is not None or not crop or not trials:
        return None, None
    held_out = read_trials(trials)
    eers, tables = {}, {}
    for name, seconds in (("whole", 0.0), ("chunked", float(crop))):
        embed = _Embeddings(
            model,
            _model_fingerprint(model),
            out,
            precision=precision,
            chunk_seconds=seconds,
            batch_seconds=batch_seconds,
            device=device,
        )
        table = tables[name] = embed(manifest, f"window_{name}_embeddings.npz")
        scores = score_trial_lists(table, [held_out], mean=embedding_mean(table.embeddings))[0]
        eers[name] = float(eer(scores["cosine"], held_out.labels)[0])
    chosen = float(crop) if eers["chunked"] < WINDOW_MARGIN * eers["whole"] else 0.0
    model.config.embedding_chunk_seconds = chosen
    log.info(
        "embedding window: %s (held-out EER whole %.2f %%, chunks of %g s %.2f %%)",
        "chunks" if chosen else "whole utterances",
        eers["whole"],
        crop,
        eers["chunked"],
    )
    window = {
        "trials": str(trials),
        "chunk_seconds": float(crop),
        "eer_whole": eers["whole"],
        "eer_chunked": eers["chunked"],
        "chosen_chunk_seconds": chosen,
    }
    return window, tables["chunked" if chosen else "whole"]


def _check_before_embedding(
    manifest: str,
    trial_lists: list,
    cohort: str | None,
    *,
    top_k: int,
    calibration_pairs: int,
    threshold: tuple[str, str] | None,
) -> None:
    """What can be checked before anything is embedded (which takes minutes): every trial's ids are in the
    manifest, every cohort row has a speaker, and the cohort can give calibration pairs."""
    ids = {str(row["id"]) for _, row in iter_rows(manifest)}
    for trials in trial_lists:
        check_trial_ids(trials, ids, source=f"manifest {manifest}")
    if threshold is not None:
        held_manifest, held_trials = threshold
        check_trial_ids(
            read_trials(held_trials),
            ids if held_manifest == manifest else {str(row["id"]) for _, row in iter_rows(held_manifest)},
            source=f"manifest {held_manifest}",
        )
    if cohort and is_embeddings_file(cohort):
        speakers = load_cohort_table(cohort).speakers.tolist()
        check_calibration_cohort(speakers, n_pairs=calibration_pairs, top_k=top_k, source=f"cohort {cohort}")
    elif cohort:
        speakers = []
        for line, row in iter_rows(cohort):
            if row.get("speaker") in (None, ""):
                raise ValueError(f"{cohort}:{line}: the cohort manifest needs a speaker on every row")
            speakers.append(row["speaker"])
        check_calibration_cohort(speakers, n_pairs=calibration_pairs, top_k=top_k, source=f"cohort {cohort}")


class _Embeddings:
    """Embeds a manifest with the evaluated model into ``out/NAME``, reusing the file when it was made
    with the same model, manifest, audio and settings (``_cached_embeddings``)."""

    def __init__(
        self,
        model,
        model_hash: str,
        out: Path,
        *,
        precision: str,
        chunk_seconds: float,
        batch_seconds: float,
        device: torch.device,
    ):
        self.model, self.model_hash, self.out = model.to(device).eval(), model_hash, out
        self.precision, self.chunk_seconds = precision, chunk_seconds
        self.kw = dict(
            batch_seconds=batch_seconds,
            chunk_seconds=chunk_seconds,
            device=device,
            autocast_dtype=autocast_dtype(precision),
        )

    def __call__(self, manifest: str, name: str) -> EmbeddingTable:
        fingerprint = _fingerprint(
            self.model_hash, manifest, precision=self.precision, chunk_seconds=self.chunk_seconds
        )
        return _cached_embeddings(self.model, manifest, self.out / name, fingerprint, **self.kw)


def _scoring_mean(model, table: EmbeddingTable, cohort_table: EmbeddingTable | None) -> np.ndarray:
    """The mean subtracted before scoring: the cohort's, else the model's training mean, else the test set's."""
    if cohort_table is not None:
        return embedding_mean(cohort_table.embeddings)
    if model.config.training_mean:
        return np.asarray(model.config.training_mean, np.float32)
    return embedding_mean(table.embeddings)


def _write_results(
    out: Path,
    trial_lists: list,
    scored: list[dict],
    *,
    plots: bool,
    model_name: str,
    outside: list[np.ndarray] | None = None,
) -> dict:
    """Per-stage metrics of every trial list, written with the scores, plots and report; returns
    ``{stage: {list: metrics}}`` in pipeline order (the last stage is the final one). ``outside``: per list,
    the trials outside the calibration's conditions (counted, and left out of ``inside_calibration``)."""
    stages = list(scored[0])
    masks = outside or [None] * len(trial_lists)
    metrics = {
        stage: {tr.name: trial_metrics(tr, s, stage=stage, outside=m) for tr, s, m in zip(trial_lists, scored, masks)}
        for stage in stages
    }
    final = stages[-1]
    for tr, s in zip(trial_lists, scored):
        write_scores_tsv(out / f"scores_{tr.name}.tsv", tr, s)
    write_metrics_json(out / "metrics.json", metrics[final])
    write_metrics_json(out / "metrics_by_stage.json", metrics)
    pictures = []
    if plots:
        first, scores0 = trial_lists[0], scored[0]
        pictures.append(
            plot_det({st: (scores0[st], first.labels) for st in stages}, out / "det.png", title=f"DET: {first.name}")
        )
        pictures.append(
            plot_histogram(scores0[final], first.labels, out / "scores.png", title=f"{first.name}: {final} scores")
        )
    write_report(out, metrics[final], pictures, title=f"mlsv evaluation of {model_name} ({final} scores)")
    return metrics


def _record_in_model(
    model,
    mean: np.ndarray,
    metrics: dict,
    trial_lists: list,
    top_k: int,
    calibrator,
    cohort_table: EmbeddingTable | None,
) -> None:
    """The evaluated model carries its mean, its evaluation record (metrics, calibration, threshold) and
    the AS-norm cohort (speaker means, a buffer saved with the weights)."""
    cfg = model.config
    cfg.training_mean = [float(v) for v in mean]
    final = list(metrics)[-1]
    record = EvaluationRecord(
        final_stage=final,
        metrics=metrics[final],
        metrics_by_stage=metrics,
        trial_lists=tuple(tr.name for tr in trial_lists),
        top_k=top_k,
        threshold=cfg.threshold,
        calibration=cfg.calibration,
    )
    if calibrator is not None and cohort_table is not None:
        record = replace(
            record,
            calibration=calibrator.to_dict(),
            threshold=float(calibrator.threshold_),
            threshold_scale="calibrated",
        )
        cohort_means = cohort_from_table(cohort_table, mean)
        model.set_cohort(torch.from_numpy(np.asarray(cohort_means.vectors, np.float32)))
    record.apply(cfg)


#: The baselines a run's table shows, as the synthetic corpus's ``baseline.json`` names them: a cosine of
#: MFCC means, and an LDA trained on the training speakers' MFCC statistics (a linear speaker model).
BASELINES = (("mfcc_cosine_eer", "MFCC mean"), ("lda_eer", "MFCC LDA"))


def write_run_report(
    run_dir: str | Path, systems: dict[str, Path], *, baseline: str | None = None, model: str | None = None
) -> dict:
    """The run's ``results.json``, ``report.md`` (tables and plots) and final ``model`` folder.

    Args:
        run_dir: the run folder.
        systems: label -> evaluate-step folder (e.g. {"LAP": .../lap_eval, "SUPERB": .../superb_eval}).
        baseline: a JSON file with the baselines' EERs (the synthetic corpus writes one: ``BASELINES``).
        model: the label of the system whose evaluated model becomes ``run_dir/model``.
    """
    run_dir = Path(run_dir)
    results: dict = {"systems": {}}
    rows = []
    for label, folder in systems.items():
        by_stage = json.loads((folder / "metrics_by_stage.json").read_text())
        results["systems"][label] = by_stage
        if (folder / "embedding_window.json").is_file():  # what the evaluation measured to choose the window
            results.setdefault("embedding_window", {})[label] = json.loads(
                (folder / "embedding_window.json").read_text()
            )
        for stage, lists in by_stage.items():
            for name, m in lists.items():
                rows.append((label, stage, name, m))
    if baseline and Path(baseline).is_file():
        results["baseline"] = json.loads(Path(baseline).read_text())
    chosen = model or next(iter(systems))
    final_model = run_dir / "model"
    if final_model.exists():
        shutil.rmtree(final_model)
    shutil.copytree(systems[chosen] / "model", final_model)
    results["model"] = str(final_model)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    header = f"{'system':<10} {'scoring':<11} {'trials':<18} {'EER %':>7} {'minDCF.01':>10} {'minDCF.05':>10}"
    lines = [header, "-" * len(header)]
    for label, stage, name, m in rows:
        lines.append(
            f"{label:<10} {stage:<11} {name:<18} {m['eer']:>7.2f} {m['min_dcf_0.01']:>10.4f} {m['min_dcf_0.05']:>10.4f}"
        )
    base = results.get("baseline", {})
    trials_name = Path(base.get("trials", "test_trials")).stem
    for key, label in BASELINES:  # every baseline the corpus computed, the strong one too
        if base.get(key) is not None:
            lines.append(f"{label:<10} {'cosine':<11} {trials_name:<18} {float(base[key]):>7.2f}")
    table = "\n".join(lines)

    md = ["# mlsv run report", "", f"Run folder: `{run_dir}`", "", "```", table, "```", ""]
    for label, folder in systems.items():
        for png in ("det.png", "scores.png"):
            if (folder / png).is_file():
                md.append(f"![{label} {png[:-4]}]({(folder / png).relative_to(run_dir)})")
    (run_dir / "report.md").write_text("\n".join(md) + "\n")
    return {
        "table": table,
        "results": str(run_dir / "results.json"),
        "report": str(run_dir / "report.md"),
        "model": str(final_model),
    }
