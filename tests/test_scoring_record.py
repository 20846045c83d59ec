"""The typed evaluation record (mlsv.scoring.record): round trips, the legacy spelling, and models saved
before the record existed deciding exactly as they did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlsv.inference.verifier import Verifier
from mlsv.models import MLSVConfig, MLSVModel
from mlsv.scoring.record import SCALES, EvaluationRecord, ScoreStatistics, as_scale, record_score_statistics

DATA = Path(__file__).parent / "fixtures"

# Written by mlsv before this record existed (commit 73e6d38: `evaluate_model` of a tiny model, with a
# cohort, and for the first one a held-out threshold list), and what its Verifier decided then.
EXPECTED = {
    "model_v0_statistics": {
        ("cosine", None): (0.9344230890274048, "EER point of the model's evaluation on trials"),
        ("cosine", 0.5): (0.9035491347312928, "FAR <= 0.5 on 3 stored non-target cosine scores of trials"),
        ("asnorm", None): (2.003206199904686, "EER point of the model's evaluation on trials"),
        ("asnorm", 0.5): (1.343116072850669, "FAR <= 0.5 on 3 stored non-target asnorm scores of trials"),
        ("calibrated", None): (0.9466328858101145, "EER point of the model's evaluation on trials"),
        ("calibrated", 0.5): (0.9466328858101146, "FAR <= 0.5 on 3 stored non-target calibrated scores of trials"),
    },
    "model_v0_calibration": {
        ("cosine", None): "this model stores no decision threshold for cosine scores",
        ("cosine", 0.5): "far=0.5 needs the non-target cosine score distribution",
        ("asnorm", None): "this model stores no decision threshold for asnorm scores",
        ("asnorm", 0.5): "far=0.5 needs the non-target asnorm score distribution",
        ("calibrated", None): (0.04092832082748618, "the model's stored threshold"),
        ("calibrated", 0.5): (
            0.6931471805599453,
            "log(1/far) for calibrated LLRs: guarantees FAR <= 0.5 (an upper bound)",
        ),
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_model_saved_before_the_record_decides_as_it_did(name):
    config = MLSVConfig.from_pretrained(DATA / name)
    v = Verifier(MLSVModel(config))  # random weights: thresholds come from the config alone
    assert v.score_scale == "calibrated"
    for (scale, far), expected in EXPECTED[name].items():
        if isinstance(expected, str):
            with pytest.raises(ValueError, match=expected):
                v.threshold(far=far, scale=scale)
        else:
            t = v.threshold(far=far, scale=scale)
            assert (t.value, t.source, t.scale) == (*expected, scale)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_stored_form_round_trips(name):
    stored = json.loads((DATA / name / "config.json").read_text())
    record = EvaluationRecord.from_dict(
        stored["evaluation"], threshold=stored["threshold"], calibration=stored["calibration"]
    )
    assert record.final_stage == "calibrated" and record.threshold_scale == "calibrated"  # legacy spelling read
    again = EvaluationRecord.from_dict(record.to_dict(), threshold=record.threshold, calibration=record.calibration)
    assert again == record
    expected = dict(stored["evaluation"], threshold_scale="calibrated")
    assert json.loads(json.dumps(record.to_dict())) == expected
    config = MLSVConfig.from_pretrained(DATA / name)
    record.apply(config)
    assert EvaluationRecord.from_config(config) == record


def test_an_unevaluated_model_has_an_empty_record():
    record = EvaluationRecord.from_config(MLSVConfig.from_pretrained(DATA / "model_v0_calibration").__class__())
    assert record == EvaluationRecord() and record.to_dict() == {}
    assert record.default_threshold_scale == "cosine"


def test_scales_are_one_literal_and_bad_ones_are_named():
    assert SCALES == ("cosine", "asnorm", "calibrated")
    assert as_scale("calibrated_llr") == "calibrated"
    with pytest.raises(
        ValueError, match="evaluation threshold_scale must be one of cosine, asnorm, calibrated, got 'llr'"
    ):
        EvaluationRecord.from_dict({"threshold_scale": "llr"})


def test_record_score_statistics_writes_the_record_and_keeps_the_rest():
    config = MLSVConfig.from_pretrained(DATA / "model_v0_calibration")
    before = EvaluationRecord.from_config(config)
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], [50, 200])
    scores = {"cosine": np.concatenate([rng.normal(0.6, 0.1, 50), rng.normal(0.1, 0.1, 200)])}
    stats = record_score_statistics(config, scores, labels, trial_list="dev")
    after = EvaluationRecord.from_config(config)
    assert after.threshold_scale == "cosine" and after.threshold == stats["cosine"]["eer_threshold"]
    assert after.metrics == before.metrics and after.calibration == before.calibration
    cos = after.statistics("cosine")
    assert isinstance(cos, ScoreStatistics) and cos.n_nontarget == 200 and cos.trial_list == "dev"
    # each tabulated threshold keeps the measured FAR at or below its level
    non = scores["cosine"][labels == 0]
    for level, threshold in zip(cos.far, cos.thresholds):
        assert (non >= threshold).mean() <= level
