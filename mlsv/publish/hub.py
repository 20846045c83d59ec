"""Publishing a trained model: the folder to upload (weights, config, code, model card) and the upload.

``python push_to_hub.py --model DIR --repo-id NAME [--private] [--revision REV] [--dry-run OUT]``

The folder holds ``config.json``, ``model.safetensors``, ``preprocessor_config.json``, the model code
(``configuration_mlsv.py``, ``modeling_mlsv.py`` and its siblings) so that
``AutoModel.from_pretrained(repo, trust_remote_code=True)`` works where mlsv is not installed, an ONNX
export when the model folder has one (refused when its report says it came from other weights), and a
``README.md`` model card with Hub metadata (huggingface_hub's ``ModelCardData``: tags, ``base_model``,
``pipeline_tag`` and a ``model-index`` of ``EvalResult``s) and the model's evaluation table: the metrics it records
in its own config (``mlsv evaluate`` stores every score scale's), never another model's (a training
stage's model has none), or a results file given explicitly. Only the model folder's own files are
published: a file that is a link to (or otherwise resolves to) a place outside it is refused. The upload
is one commit through ``huggingface_hub``; the token comes from ``huggingface-cli login`` /
``hf auth login`` or ``HF_TOKEN`` and is never written anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import mlsv.models
from mlsv.inference.export import WEIGHTS_NAME, check_export_weights, weights_fingerprint
from mlsv.inference.scorer import Scorer
from mlsv.models.loading import load_model
from mlsv.publish.space import publish_space
from mlsv.scoring.pipeline import STAGES
from mlsv.scoring.record import EvaluationRecord

__all__ = [
    "build_model_card",
    "build_publish_folder",
    "check_repo_id",
    "load_metrics",
    "main",
    "own_metrics",
    "upload_folder",
]

#: Files of the model folder copied as they are, when present.
EXTRA_FILES = ("model.onnx", "model.onnx.json")
_METRIC_COLUMNS = (
    ("eer", "EER (%)"),
    ("min_dcf_0.01", "minDCF (p=0.01)"),
    ("min_dcf_0.05", "minDCF (p=0.05)"),
    ("act_dcf_0.01", "actDCF (p=0.01)"),
    ("cllr", "Cllr"),
    ("n_trials", "trials"),
)


# ------------------------------------------------------------------------------------------------
# metrics


def own_metrics(config) -> list[tuple[str, dict]]:
    """The metrics a model records in its own config (``config.evaluation``, written by ``mlsv evaluate``):
    every score scale's (``"cosine / test_trials"``, ``"asnorm / ..."``, ``"calibrated / ..."``), or the
    final scale's alone for a model evaluated before those were stored; [] when it records none."""

    record = EvaluationRecord.from_config(config)
    by_stage = record.metrics_by_stage
    if by_stage:
        # in pipeline order, and the trial lists in the order evaluated (the saved config sorts its keys)
        def ordered(names, first: list) -> list:
            return sorted(names, key=lambda n: (first.index(n) if n in first else len(first), n))

        lists = list(record.trial_lists)
        return load_metrics(
            {
                stage: {name: by_stage[stage][name] for name in ordered(by_stage[stage], lists)}
                if isinstance(by_stage[stage], Mapping)
                else by_stage[stage]
                for stage in ordered(by_stage, list(STAGES))
            }
        )
    if not record.metrics:
        return []
    return load_metrics({str(record.final_stage or "evaluation"): record.metrics})


def load_metrics(source: Mapping | str | os.PathLike | None) -> list[tuple[str, dict]]:
    """Every metrics record (a dict with an ``eer``) in a results file or dict, with its path as a label.

    ``{"vox1_O": {"eer": ...}}`` gives ``[("vox1_O", {...})]``; nested results such as
    ``{"vox1_O": {"cosine": {"eer": ...}, "asnorm": {...}}}`` give ``"vox1_O / cosine"`` etc.
    """
    if source is None:
        return []
    if not isinstance(source, Mapping):
        path = Path(source)
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read results ({e})") from e
    found: list[tuple[str, dict]] = []

    def walk(node: Any, trail: list[str]) -> None:
        if isinstance(node, Mapping):
            if "eer" in node and isinstance(node["eer"], (int, float)):
                found.append((" / ".join(trail) or "evaluation", dict(node)))
                return
            for k, v in node.items():
                if k not in ("score_statistics", "baseline"):
                    # results.json groups by "systems" and the model config by "metrics": not row labels
                    walk(v, trail if k in ("systems", "metrics") and not trail else [*trail, str(k)])

    walk(source, [])
    return found


def _fmt(v: Any, key: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if key == "n_trials":
        return f"{int(v):,}"
    if key == "eer":
        return f"{float(v):.3f}"
    return f"{float(v):.4f}" if isinstance(v, (int, float)) else str(v)


def metrics_table(records: Sequence[tuple[str, dict]]) -> str:
    """A markdown table of metrics records (columns present in at least one record)."""
    cols = [(k, name) for k, name in _METRIC_COLUMNS if any(k in r for _, r in records)]
    lines = ["| trial list | " + " | ".join(name for _, name in cols) + " |", "|---|" + "---|" * len(cols)]
    for label, r in records:
        lines.append(f"| {label} | " + " | ".join(_fmt(r.get(k), k) for k, _ in cols) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# model card


#: The card's ``pipeline_tag``: a Hub task whose "Use this model" snippet transformers runs,
#: ``pipeline("feature-extraction", model=REPO, trust_remote_code=True)``; the saved config maps that task (and
#: ``speaker-verification``) to the model's own pipeline (``custom_pipelines``), so the snippet returns the
#: speaker-verification pipeline: embeddings of recordings, scores and decisions for pairs.
PIPELINE_TAG = "feature-extraction"
#: The metrics of the card's ``model-index`` (``EvalResult``): (key prefix, metric type, name).
_EVAL_METRICS = (("eer", "eer", "EER (%)"), ("min_dcf_", "min_dcf", "minDCF"))


def build_model_card(
    config,
    *,
    repo_id: str,
    metrics: Sequence[tuple[str, dict]] = (),
    datasets: Sequence[str] = (),
    license: str | None = None,
    parameter_counts: Mapping[str, int] | None = None,
    has_onnx: bool = False,
) -> str:
    """The model card (README.md): Hub metadata (``card_data``), then summary, metrics, usage, intended use
    and limitations, rendered through huggingface_hub's ``ModelCard``."""
    from huggingface_hub import ModelCard

    names = _card_names(config)
    lines = (
        _card_summary(config, names, repo_id, parameter_counts)
        + _card_evaluation(metrics)
        + _card_usage(config, repo_id, has_onnx)
        + _card_use_and_limits(datasets)
    )
    data = card_data(config, repo_id=repo_id, metrics=metrics, datasets=datasets, license=license)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


def card_data(
    config,
    *,
    repo_id: str,
    metrics: Sequence[tuple[str, dict]] = (),
    datasets: Sequence[str] = (),
    license: str | None = None,
):
    """The card's metadata as huggingface_hub's ``ModelCardData``: library, license, tags, datasets,
    ``base_model`` (the encoder's hub id, when it came from the Hub), ``pipeline_tag`` (:data:`PIPELINE_TAG`)
    and the evaluation as ``EvalResult``s (task ``speaker-verification``, one per trial list, score scale and
    metric: EER and minDCF; the scale is the metric's ``config``), which the Hub reads as the ``model-index``."""
    from huggingface_hub import ModelCardData

    names = _card_names(config)
    family, agg = names["family"], names["agg"]
    tags = ["speaker-verification", "speaker-embedding", "audio", "mlsv", family, agg, config.backend]
    if agg == "lap":
        tags.append("layer-attentive-pooling")
    tags.append("custom_code")  # the model code ships with the weights: the Hub's snippets pass trust_remote_code
    return ModelCardData(
        library_name="transformers",
        license=license or None,
        tags=list(dict.fromkeys(t for t in tags if t)),
        datasets=list(datasets) or None,
        base_model=encoder_hub_id(config),
        pipeline_tag=PIPELINE_TAG,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(metrics) or None,
    )


def encoder_hub_id(config) -> str | None:
    """The hub id the model's encoder came from (``encoder_name_or_path``): a hub id, or a snapshot folder of the
    Hub's cache (``.../models--NAMESPACE--NAME/snapshots/REV``); None for a built-in tiny encoder, another local
    folder (one that exists here, or a path that is not ``NAMESPACE/NAME``) or none recorded."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = str(getattr(config, "encoder_name_or_path", "") or "")
    cached = re.search(r"(?:^|[/\\])models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]", name)
    if cached:
        name = f"{cached.group(1)}/{cached.group(2)}"
    elif name.count("/") != 1 or name.startswith((".", "/", "~")) or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def eval_results(metrics: Sequence[tuple[str, dict]]) -> list:
    """``EvalResult``s of metrics records (:func:`own_metrics`, :func:`load_metrics`): per record, its EER and
    each minDCF (``min_dcf_<p>``, the target prior in the metric's ``args``), on the record's trial list, with
    its score scale (``cosine``, ``asnorm``, ``calibrated``; from the record's label) as the metric's config.
    Labels such as ``"LAP / calibrated / vox1_O"`` name the system too: it becomes the dataset's config."""
    from huggingface_hub import EvalResult

    out = []
    for label, record in metrics:
        parts = [p for p in label.split(" / ") if p]
        stage = next((p for p in parts if p in STAGES), None)
        rest = [p for p in parts if p != stage] or ["evaluation"]
        trial_list, system = rest[-1], " / ".join(rest[:-1]) or None
        for key in sorted(record, key=lambda k: (k != "eer", k)):
            value = record[key]
            kind = next(((t, n) for prefix, t, n in _EVAL_METRICS if key == prefix or key.startswith(prefix)), None)
            if kind is None or key == "min_dcf_" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(float(value)):
                continue
            metric_type, name = kind
            args = None
            if metric_type == "min_dcf":
                try:
                    args = {"p_target": float(key[len("min_dcf_") :])}
                except ValueError:
                    continue
                name = f"{name} (p={args['p_target']:g})"
            out.append(
                EvalResult(
                    task_type="speaker-verification",
                    task_name="Speaker Verification",
                    dataset_type=trial_list,
                    dataset_name=trial_list,
                    dataset_config=system,
                    metric_type=metric_type,
                    metric_name=f"{name}, {stage}" if stage else name,
                    metric_value=float(value),
                    metric_config=stage,
                    metric_args=args,
                )
            )
    return out


def _card_names(config) -> dict[str, Any]:
    """The encoder family, its depth, and the aggregation's and backend's names in words."""
    enc = dict(config.encoder_config or {})
    family = enc.get("model_type", "encoder")
    return {
        "family": family,
        "n_layers": enc.get("encoder_layers") if family == "whisper" else enc.get("num_hidden_layers"),
        "agg": config.aggregation,
        "agg_name": {"lap": "Layer Attentive Pooling (LAP)", "superb": "SUPERB weighted sum", "last": "last layer"}.get(
            config.aggregation, config.aggregation
        ),
        "backend": {"astp": "ASTP", "xvector": "x-vector TDNN", "ecapa": "ECAPA-TDNN", "mhfa": "MHFA"}.get(
            config.backend, config.backend
        ),
    }


def _card_summary(config, names: dict, repo_id: str, parameter_counts: Mapping[str, int] | None) -> list[str]:
    """The title, one paragraph and the table of what the model is."""
    family, n_layers, agg, agg_name, backend = (names[k] for k in ("family", "n_layers", "agg", "agg_name", "backend"))
    name = repo_id.split("/")[-1]
    lines = [
        f"# {name}",
        "",
        f"A speaker-verification model trained with mlsv (multi-layer speaker "
        f"verification): a {family} encoder ({n_layers} layers"
        f"{', from ' + config.encoder_name_or_path if config.encoder_name_or_path else ''}) whose hidden "
        f"states are aggregated by {agg_name}, then pooled by {backend} into a "
        f"{config.embedding_size}-dimensional speaker embedding.",
        "",
        "| | |",
        "|---|---|",
        f"| input | mono waveform, {config.sampling_rate} Hz, float32 |",
        f"| output | `embeddings` ({config.embedding_size}-d) |",
        f"| aggregation | {agg_name}"
        + (f", {config.lap_heads} heads, {config.lap_channels} channels" if agg == "lap" else "")
        + " |",
        f"| backend | {backend} |",
    ]
    crop = getattr(config, "train_crop_seconds", None)
    if crop:
        lines.append(f"| training crops | {crop:g} s (the context the model was trained on) |")
    if parameter_counts:
        lines.append(
            f"| parameters | {parameter_counts.get('total', 0) / 1e6:.2f} M "
            f"(aggregation + backend {parameter_counts.get('aggregation+backend', 0) / 1e6:.2f} M) |"
        )
    lines.append(
        "| scoring | cosine after subtracting the training mean"
        + (" (stored)" if config.training_mean is not None else "")
        + " |"
    )
    n_cohort = int(getattr(config, "cohort_size", 0) or 0)
    if n_cohort:
        top_k = EvaluationRecord.from_config(config).top_k
        lines.append(
            f"| AS-norm cohort | {n_cohort} speaker means stored with the weights"
            + (f" (top {top_k})" if top_k else "")
            + " |"
        )
    if config.calibration:
        lines.append("| calibration | QMF logistic calibration of AS-norm scores to log-likelihood ratios |")
    if config.threshold is not None:
        scale = EvaluationRecord.from_config(config).default_threshold_scale
        scale = "calibrated LLR" if scale == "calibrated" else scale
        lines.append(f"| threshold | {config.threshold:.4f} ({scale} scores, EER point) |")
    lines.append("")
    return lines


def _card_evaluation(metrics: Sequence[tuple[str, dict]]) -> list[str]:
    """The metrics table, or a line saying none is recorded."""
    lines = []
    lines += ["## Evaluation", ""]
    if metrics:
        lines += [
            metrics_table(metrics),
            "",
            "EER in percent; minDCF with the target prior given. Scores as named in each row "
            "(cosine, AS-norm, calibrated).",
            "",
        ]
    else:
        lines += [
            "No evaluation is recorded for this model: it was not published from the output of "
            "`mlsv evaluate`, which stores the metrics, AS-norm cohort and calibration with the model.",
            "",
        ]
    return lines


def _card_usage(config, repo_id: str, has_onnx: bool) -> list[str]:
    """How to use the model: with mlsv, from the command line, with transformers alone, with ONNX Runtime."""
    lines: list[str] = []
    lines += [
        "## How to use",
        "",
        "With mlsv (not on a package index yet: install it from its source repository, `pip install -e .` in a "
        "clone): embeddings, scores and decisions, any sample rate or channel count.",
        "",
        "```python",
        "from mlsv.api import Verifier",
        "",
        f'verifier = Verifier.from_pretrained("{repo_id}")',
        'result = verifier.verify("enroll.wav", "test.flac")',
        "print(result.score, result.threshold, result.decision)",
        'emb = verifier.embed(["a.wav", "b.wav"])  # (2, E)',
        "```",
        "",
        "From the command line: `mlsv verify --model " + repo_id + " a.wav b.wav` and "
        "`mlsv embed --model " + repo_id + " FILES... --out emb.npz`.",
        "",
    ]
    lines += _card_pipeline(config, repo_id)
    lines += _card_transformers_only(config, repo_id)
    lines += [
        "Batches may be padded: pass `attention_mask` (1 for real samples); padding does not change an embedding.",
        "",
    ]
    if has_onnx:
        lines += [
            "An ONNX export (`model.onnx`, inputs `input_values` float32 (B, S) and `attention_mask` "
            "int64 (B, S), output `embeddings`) runs with onnxruntime: "
            f'`Verifier.from_pretrained("{repo_id}", runtime="onnx")`. `model.onnx.json` records its '
            "parity with PyTorch and a fingerprint of the weights it was exported from.",
            "",
        ]
    return lines


def _card_pipeline(config, repo_id: str) -> list[str]:
    """The transformers pipeline snippet: ``pipeline("speaker-verification", ...)`` gives what ``mlsv verify``
    gives (the scale and threshold mlsv uses for this model), and embeddings."""
    scale, threshold = "cosine", None
    try:  # what mlsv verify scores this model on: only the stored cohort's size matters here
        n_cohort = int(getattr(config, "cohort_size", 0) or 0)
        cohort = np.zeros((n_cohort, int(config.embedding_size)), np.float32) if n_cohort else None
        scorer = Scorer(config, stored_cohort=cohort)
        scale = scorer.score_scale
        threshold = scorer.threshold()
    except (ValueError, KeyError, TypeError):  # no threshold on that scale, or a calibration mlsv cannot read
        pass
    code = [
        "```python",
        "from transformers import pipeline",
        "",
        f'verify = pipeline("speaker-verification", model="{repo_id}", trust_remote_code=True)',
    ]
    if threshold is None:
        code += [
            f"threshold = None  # this model stores no threshold for its {scale} scores: set one chosen on your trials",
            'result = verify("enroll.wav", "test.wav", threshold=threshold)',
        ]
    else:
        code.append('result = verify("enroll.wav", "test.wav")')
    code += [
        'print(result["score"], result["threshold"], result["label"])  # e.g. 0.71 0.43 same speaker',
        f'embedding = verify("a.wav")["embedding"]  # ({config.embedding_size},) numpy array',
        "```",
        "",
    ]
    where = "" if threshold is None else f" at the model's threshold ({threshold.value:.4f}, {threshold.source})"
    return [
        "With transformers' pipeline (the model code and its pipeline ship with the weights; "
        "`pip install transformers torch soundfile soxr`): scores, thresholds and decisions as `mlsv verify` "
        f"gives them, here on the {scale} scale ({_SCALE_WORDS.get(scale, 'cosine after subtracting the mean')})"
        f"{where}, and embeddings.",
        "",
        *code,
        'A recording is a path, `{"array": samples, "sampling_rate": rate}` (any rate, resampled), or samples '
        "with `sampling_rate=`; a pair is two arguments or a tuple, and a list of recordings or pairs is a batch. "
        'The Hub\'s `pipeline("feature-extraction", ...)` snippet gives this same pipeline.',
        "",
    ]


#: How the score scales mlsv decides on are made, in words (for the card).
_SCALE_WORDS = {
    "asnorm": "AS-norm against the cohort stored with the weights",
    "calibrated": "AS-norm against the cohort stored with the weights, then the stored calibration to "
    "a log-likelihood ratio",
}


def _card_transformers_only(config, repo_id: str) -> list[str]:
    """The "transformers only" part: the embedding and the cosine score as mlsv computes them, and a decision
    only against a threshold on that same scale: the one mlsv's Verifier uses without a cohort
    (``Scorer.threshold(scale="cosine")``), never a threshold of the AS-norm or calibrated scale."""
    record = EvaluationRecord.from_config(config)
    try:  # no cohort: the cosine scale, with the mean and threshold mlsv uses on it
        scorer: Scorer | None = Scorer(config)
    except (ValueError, KeyError, TypeError):  # a calibration mlsv cannot read: no threshold from it either
        scorer = None
    try:
        threshold = scorer.threshold(scale="cosine") if scorer is not None else None
    except ValueError:
        threshold = None
    stats = record.statistics("cosine")
    if threshold is None:
        threshold_line = None
    elif stats is not None and threshold.value == stats.eer_threshold:
        threshold_line = 'threshold = cfg.evaluation["score_statistics"]["cosine"]["eer_threshold"]  # cosine scale'
    elif record.threshold is not None and threshold.value == record.threshold:
        threshold_line = "threshold = cfg.threshold  # on the cosine scale for this model"
    else:
        threshold_line = f"threshold = {threshold.value!r}  # cosine scale"
    if config.training_mean is not None:
        mean_line = "mean = torch.tensor(cfg.training_mean)  # subtracted before scoring"
    elif scorer is not None and scorer.mean is not None:  # the mean stored with the calibration only
        mean_line = 'mean = torch.tensor(cfg.calibration["info"]["mean"])  # subtracted before scoring'
    else:
        mean_line = "mean = 0.0  # this model stores no mean: plain cosine"
    code = [
        "```python",
        "import soundfile as sf, torch",
        "from transformers import AutoModel",
        "",
        f'model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()',
        "cfg = model.config",
        mean_line,
    ]
    if threshold_line:
        code.append(threshold_line)
    code += [
        "",
        "",
        "def embed(path):",
        '    wav, sr = sf.read(path, dtype="float32")',
        "    if wav.ndim > 1:",
        "        wav = wav.mean(axis=1)  # mono",
        "    if sr != cfg.sampling_rate:",
        '        raise ValueError(f"{path}: {sr} Hz; resample it to {cfg.sampling_rate} Hz first")',
        "    x = torch.from_numpy(wav)[None]",
        "    with torch.no_grad():",
        "        emb = model(x, attention_mask=torch.ones_like(x, dtype=torch.long)).embeddings[0]",
        "    return (emb - mean).double()",
        "",
        "",
        'a, b = embed("enroll.wav"), embed("test.wav")',
        "score = float(a @ b / (a.norm() * b.norm()))  # cosine after subtracting the mean",
    ]
    if threshold_line:
        code += [
            "same = score >= threshold",
            'print(f"score {score:.4f}, threshold {threshold:.4f}:", "same speaker" if same else "different speakers")',
        ]
    else:
        code += ['print(f"score {score:.4f} (cosine)")']
    code += ["```", ""]

    n_cohort = int(getattr(config, "cohort_size", 0) or 0)
    mlsv_scale = ("calibrated" if record.calibration else "asnorm") if n_cohort else "cosine"
    lines = [
        "Without mlsv, with transformers only (the model code ships with the weights): the embedding and "
        "the score mlsv computes on the cosine scale, the cosine similarity of the two embeddings after "
        "subtracting the model's mean.",
        "",
        *code,
    ]
    if threshold is not None:
        where = f"{threshold.value:.4f}, {threshold.source}"
        if mlsv_scale == "cosine":
            lines += [
                f"It decides on the cosine scale at the model's cosine threshold ({where}), as mlsv does "
                f"for this model: the decision of `mlsv verify --model {repo_id} enroll.wav test.wav` "
                "(without `--cohort`) and of the Verifier above, for recordings at the model's sample rate.",
                "",
            ]
        else:
            thr_scale = record.default_threshold_scale
            lines += [
                f"It decides on the cosine scale at the model's cosine threshold ({where}): the decision of "
                f'`Verifier.from_pretrained("{repo_id}", use_stored_cohort=False).verify("enroll.wav", '
                '"test.wav")`. `mlsv verify` and the Verifier by default score this model on the '
                f"{mlsv_scale} scale instead ({_SCALE_WORDS[mlsv_scale]}) with a threshold on that scale; "
                "their decisions can differ from this one, so for those decisions use mlsv. "
                + (
                    f"Do not compare the cosine with `model.config.threshold`: it is on the {thr_scale} scale."
                    if record.threshold is not None and thr_scale != "cosine"
                    else ""
                ),
                "",
            ]
    else:
        if record.threshold is not None:
            thr_scale = record.default_threshold_scale
            have = (
                f"its threshold ({record.threshold:.4f}, `model.config.threshold`) is on the {thr_scale} "
                f"scale ({_SCALE_WORDS.get(thr_scale, thr_scale)}), which only mlsv applies; comparing the "
                "cosine with it gives wrong decisions"
            )
        else:
            have = "it was not evaluated with held-out threshold trials (`mlsv evaluate --threshold-trials`)"
        if mlsv_scale != "cosine":
            advice = (
                f"For decisions use mlsv (`mlsv verify --model {repo_id} enroll.wav test.wav`, or the "
                f"Verifier above, which score on the {mlsv_scale} scale), or choose a cosine threshold on "
                "trials of your own."
            )
        else:
            advice = "Choose a cosine threshold on trials of your own (`mlsv verify --threshold` takes one too)."
        lines += [f"This model stores no decision threshold for cosine scores: {have}. {advice}", ""]
    return lines


def _card_use_and_limits(datasets: Sequence[str]) -> list[str]:
    """Intended use, limitations, training data and the method's reference."""
    lines: list[str] = []
    lines += [
        "## Intended use",
        "",
        "Speaker verification (is this the same speaker?) and speaker embeddings for clustering, "
        "diarization or search, on speech similar to the training data, by people who have the consent of "
        "the speakers concerned.",
        "",
        "## Limitations",
        "",
        "- Error rates depend on the trial conditions: language, channel, noise, duration and speaker "
        "population differ from the evaluation lists above; measure on your own data before relying on a "
        "threshold.",
        "- The stored threshold is an EER operating point of the evaluation data; choose your own for the "
        "false-accept rate you can afford (`verify(..., far=...)` where the model stores score "
        "statistics or a calibration).",
        "- The calibration expects AS-norm scores against the cohort it was fitted with; without that "
        "cohort, scores are plain cosine similarities.",
        "- Very short (< 1 s), silent or heavily overlapped audio gives unreliable embeddings.",
        "- Not a liveness or anti-spoofing system: recordings and synthetic speech can fool it. Do not "
        "use it as the only factor for access to anything that matters, nor to identify people without "
        "their knowledge.",
        "",
    ]
    if datasets:
        lines += ["## Training data", "", ", ".join(datasets), ""]
    lines += [
        "## Method",
        "",
        "Layer Attentive Pooling and the staged training follow Kim et al., *Rethinking Leveraging "
        "Pre-Trained Multi-Layer Representations for Speaker Verification*, Interspeech 2025 "
        "(arXiv:2512.22148).",
        "",
    ]
    return lines


# ------------------------------------------------------------------------------------------------
# the folder


def build_publish_folder(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    repo_id: str,
    results: str | os.PathLike | Mapping | None = None,
    datasets: Sequence[str] = (),
    license: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Builds the folder to upload from a model folder made by ``save_pretrained``.

    The model is loaded and saved again, so the folder always has the current model code for
    ``trust_remote_code`` and the ``auto_map`` entries; the ONNX export is copied when present, after
    checking that its report (``model.onnx.json``) records the model's weights: an export made before
    the weights changed raises :class:`mlsv.inference.export.StaleExportError` (a ValueError) naming the
    re-export command. A file it is built from that resolves outside the model folder (a symbolic link to
    elsewhere) raises ValueError naming the file and its target; links inside the folder are followed.

    Args:
        model_dir: the trained model folder.
        out: the folder to write. An existing one is replaced (when ``overwrite``) only once the new
            folder is built, and only when it is empty or an earlier publish folder: a file, a folder
            holding the model folder or other files raise ValueError before any work.
        repo_id: the hub repository (for the card's examples).
        results: a ``results.json`` path or dict, used as given; default: the metrics the model
            records in its ``config.evaluation`` (``mlsv evaluate``; a run's ``results.json`` beside it
            may be about another model, and is not read); the card says when there are none.
        datasets: training / evaluation dataset names for the card's metadata.
        license: license identifier for the metadata.
    """

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir}: not a model folder (no config.json); give the folder "
            "save_pretrained wrote (e.g. runs/NAME/model)"
        )
    _check_files_inside(model_dir)
    out = Path(out)
    _check_publish_target(out, model_dir, overwrite=overwrite)
    model = load_model(model_dir)
    _check_onnx_export(model_dir, model)
    # build beside OUT, so that OUT is replaced only by a complete folder (a failed build leaves it as it was)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.publish-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        for name in EXTRA_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        records = load_metrics(results) if results is not None else own_metrics(model.config)
        card = build_model_card(
            model.config,
            repo_id=repo_id,
            metrics=records,
            datasets=datasets,
            license=license,
            parameter_counts=model.parameter_counts(),
            has_onnx=(tmp / "model.onnx").is_file(),
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if out.exists():
            # checked above to be an earlier publish folder: moved aside, replaced, then removed
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.replace(old / "folder")
            try:
                tmp.replace(out)
            except BaseException:
                (old / "folder").replace(out)
                old.rmdir()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


#: A file name of sharded weights (``model-00001-of-00003.safetensors``).
_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")


def _is_publish_file(name: str) -> bool:
    """Whether a file of this name is one a publish folder holds (weights, config, card, model code, ONNX)."""

    code = {p.name for p in Path(mlsv.models.__file__).parent.glob("*.py")} - {"__init__.py"}
    return (
        name
        in {
            "config.json",
            "model.safetensors",
            "model.safetensors.index.json",
            "preprocessor_config.json",
            "README.md",
            *EXTRA_FILES,
            *code,
        }
        or _SHARD.fullmatch(name) is not None
    )


def _check_files_inside(model_dir: Path) -> None:
    """Refuses (ValueError) a file the publish folder is built from that resolves outside the model folder.

    The files are the model folder's publish files (weights and their shards, configs, model code, the
    ONNX export and its report; not its README.md, which is written anew) and the shards its weights
    index names. A symbolic link to elsewhere (``ln -s ~/secret.txt MODEL/model.onnx``), a chain of
    links ending there or an index entry with ``..`` would publish a file from outside the folder: the
    error names the file and where it points. Links that stay inside the folder are allowed.
    """
    root = model_dir.resolve()
    paths = [p for p in sorted(model_dir.iterdir()) if p.name != "README.md" and _is_publish_file(p.name)]
    index = model_dir / "model.safetensors.index.json"
    named_by: dict[Path, Path] = {}
    if index.is_file() and _inside(index, root):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
            shards = sorted({str(v) for v in weight_map.values()} if isinstance(weight_map, Mapping) else ())
        except (OSError, ValueError, AttributeError):
            shards = []  # the loader names a broken index
        for name in shards:
            named_by[model_dir / name] = index
        paths += [p for p in named_by if p not in paths]
    for path in paths:
        if _inside(path, root):
            continue
        where = f" (named by {named_by[path]})" if path in named_by else ""
        try:
            target = path.resolve()
        except (OSError, RuntimeError):
            raise ValueError(f"{path}{where} is a loop of symbolic links; publish a folder of real files") from None
        how = "is a symbolic link to" if path.is_symlink() else "resolves to"
        raise ValueError(
            f"{path}{where} {how} {target}, outside the model folder {root}: only the model folder's "
            "own files are published; copy the file into the folder instead of linking it"
        )


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, its links followed, lies in the folder ``root`` (already resolved)."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a loop of links
        return False


def _check_publish_target(out: Path, model_dir: Path, *, overwrite: bool) -> None:
    """Refuses a publish folder ``out`` that is not safe to replace; checked before any work.

    ``out`` may be missing, empty or a folder this tool built before (only the files a publish folder
    holds, no subfolders): anything else (a file, the model folder or a folder holding it, other files)
    raises ValueError / FileExistsError, so that nothing but an earlier publish folder is ever deleted.
    """
    if not out.exists() and not out.is_symlink():
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ValueError(f"{parent} is a file, not a folder; give a new folder for the publish folder")
        return
    if out.is_symlink():
        raise ValueError(f"{out} is a symbolic link; give a new folder for the publish folder")
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; give a new folder for the publish folder")
    if not overwrite:
        raise FileExistsError(f"{out} exists")
    model, target = model_dir.resolve(), out.resolve()
    if target == model or target in model.parents:
        raise ValueError(
            f"{out} holds the model folder {model_dir}; give a new folder for the publish folder "
            "(it is replaced when built again)"
        )
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise ValueError(
            f"{out} holds the current folder; give a new folder for the publish folder "
            "(it is replaced when built again)"
        )
    others = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in out.iterdir()
        if p.is_dir() or p.is_symlink() or not _is_publish_file(p.name)
    )
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ValueError(
            f"{out} exists and is not a publish folder made by push_to_hub.py (it holds {shown}); "
            "give a new or empty folder, or remove it yourself"
        )
    if any(out.iterdir()) and not _made_by_publish(out):
        raise ValueError(
            f"{out} exists and is not a publish folder made by push_to_hub.py (no mlsv config.json, "
            "weights and model card); give a new or empty folder, or remove it yourself"
        )


def _made_by_publish(folder: Path) -> bool:
    """The folder holds what a publish build writes: an mlsv ``config.json``, weights and the model card
    (file names alone would take a user's folder with a README.md and a config.json for one)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        card = (folder / "README.md").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if not (isinstance(config, dict) and config.get("model_type") == "mlsv" and weights and card.startswith("---\n")):
        return False
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(card, ignore_metadata_errors=True).data
    except Exception:  # metadata that is not YAML (yaml's errors), or not a mapping (ValueError)
        return False
    return data.get("library_name") == "transformers" and "mlsv" in (data.get("tags") or [])


def _check_onnx_export(model_dir: Path, model) -> None:
    """Refuses (StaleExportError) a ``model.onnx`` whose report records other weights than ``model``'s.

    Warns when it cannot tell (no report, or one written before exports recorded a fingerprint).
    """
    onnx = model_dir / "model.onnx"
    if not onnx.is_file():
        return

    weights = model_dir / WEIGHTS_NAME if (model_dir / WEIGHTS_NAME).is_file() else model_dir
    reason = check_export_weights(onnx, weights, model_ref=os.fspath(model_dir), fingerprint=weights_fingerprint(model))
    if reason is not None:
        warnings.warn(f"{reason}; publishing it unchecked", stacklevel=3)


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload mlsv speaker-verification model",
) -> str:
    """Creates the repository if needed and uploads ``folder`` as one commit. Returns the commit URL.

    The token is huggingface_hub's own (``hf auth login`` or ``HF_TOKEN``); it is never read or stored here.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=os.fspath(folder),
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
        )
    except Exception as e:  # network, login or permission: one line, not the HTTP stack's traceback
        raise ConnectionError(
            f"could not upload to the Hub repository {repo_id!r} ({type(e).__name__}: {e}); "
            "check the network and your login (hf auth login or HF_TOKEN), or check the "
            "package first with --dry-run"
        ) from e
    return str(getattr(info, "commit_url", info))


# ------------------------------------------------------------------------------------------------
# command line


EXAMPLE = """example:
  python push_to_hub.py --model runs/default/model --repo-id me/mlsv-wavlm-lap --dry-run /tmp/publish
  python push_to_hub.py --model runs/default/model --repo-id me/mlsv-wavlm-lap --private
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="push_to_hub.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLE,
        description="Publish a trained mlsv model folder to the Hugging Face Hub with its code and model card. "
        "Log in first (hf auth login) or set HF_TOKEN.",
    )
    p.add_argument("--model", required=True, help="model folder written by training (save_pretrained)")
    p.add_argument("--repo-id", required=True, help="hub repository, e.g. user/mlsv-wavlm-lap")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", default=None, help="branch to push to (created when missing)")
    p.add_argument(
        "--results",
        default=None,
        help="results.json with the metrics for the card, used as given (default: the metrics "
        "the model records, which mlsv evaluate stores in it)",
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        dest="datasets",
        help="dataset name for the card's metadata (repeatable), e.g. voxceleb2",
    )
    p.add_argument("--license", default=None, help="license identifier for the card, e.g. mit")
    p.add_argument("--commit-message", default="Upload mlsv speaker-verification model")
    p.add_argument(
        "--dry-run",
        metavar="OUT",
        default=None,
        help="build the folder that would be uploaded in OUT and upload nothing; OUT must be new, "
        "empty or an earlier dry run's folder (it is replaced once the new one is built)",
    )
    p.add_argument(
        "--space",
        nargs="?",
        const=True,
        default=None,
        metavar="SPACE_ID",
        help="also publish the model's demo page as a Gradio Space (default name: --repo-id's); with "
        "--dry-run it is built in OUT-space",
    )
    return p


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is a hub model repository name ``NAMESPACE/NAME``; else ValueError saying why.

    The characters and length are huggingface_hub's own rules (``validate_repo_id``: letters, digits,
    ``-``, ``_``, ``.``, no ``--`` or ``..``, no leading or trailing ``-`` / ``.``, at most 96 characters);
    the namespace is required so that the card's loading examples name the repository others can reach.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(
            f"--repo-id {repo_id!r}: give the hub repository as NAMESPACE/NAME (your user or "
            "organisation, then the model's name), e.g. me/mlsv-wavlm-lap"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"--repo-id {repo_id!r} is not a valid hub repository name: {e}") from None
    return repo_id


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_repo_id(args.repo_id)
        if args.dry_run:
            out = build_publish_folder(
                args.model,
                args.dry_run,
                repo_id=args.repo_id,
                results=args.results,
                datasets=args.datasets,
                license=args.license,
            )
            print(f"dry run: built {out} ({', '.join(sorted(p.name for p in out.iterdir()))}); nothing uploaded")
            if args.space:
                print(publish_space(args))
            return 0
        with tempfile.TemporaryDirectory(prefix="mlsv-publish-") as tmp:
            folder = build_publish_folder(
                args.model,
                Path(tmp) / "model",
                repo_id=args.repo_id,
                results=args.results,
                datasets=args.datasets,
                license=args.license,
            )
            url = upload_folder(
                folder, args.repo_id, private=args.private, revision=args.revision, commit_message=args.commit_message
            )
        print(f"uploaded {args.model} to https://huggingface.co/{args.repo_id} ({url})")
        if args.space:
            print(publish_space(args))
        return 0
    except (OSError, ValueError) as e:  # ConnectionError and FileNotFoundError are OSErrors
        print(f"push_to_hub.py: error: {e}", file=sys.stderr)
        return 2
