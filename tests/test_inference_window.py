"""The embedding window a model stores (``embedding_chunk_seconds``): chosen by ``mlsv evaluate`` on held-out
trials, then applied by every entry point unless an explicit option says otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import saved_tiny_model
from data_helpers import voice, write_voice_manifest

from mlsv.cli import main
from mlsv.models import MLSVConfig
from mlsv.scoring.embeddings import load_embeddings


@pytest.fixture(scope="module")
def long_inputs(tmp_path_factory):
    """Four 1.6-1.8 s recordings of two voices (long enough to be cut into chunks of 0.5 s), a trial list."""
    d = tmp_path_factory.mktemp("long")
    manifest = write_voice_manifest(
        d / "m.jsonl",
        {
            "a1": ("a", voice(1.8, seed=1)),
            "a2": ("a", voice(1.6, seed=2)),
            "b1": ("b", voice(1.8, f0=210, seed=3)),
            "b2": ("b", voice(1.6, f0=210, seed=4)),
        },
    )
    trials = d / "list.txt"
    trials.write_text("1 a1 a2\n0 a1 b1\n1 b1 b2\n0 a2 b2\n0 a1 b2\n0 a2 b1\n")
    return manifest, trials


@pytest.fixture(scope="module")
def windowed_model(tmp_path_factory):
    """A tiny model that stores a window of 0.5 s (and a threshold, so that verify decides)."""
    return saved_tiny_model(
        tmp_path_factory.mktemp("model") / "model",
        config={"embedding_chunk_seconds": 0.5, "train_crop_seconds": 0.5, "threshold": 0.2},
    )


def test_evaluate_chooses_the_better_window_on_the_held_out_list_and_stores_it(long_inputs, tmp_path):
    from mlsv.inference.evaluation import WINDOW_MARGIN, embed_manifest, evaluate_model
    from mlsv.models.loading import load_model
    from mlsv.scoring.metrics import eer

    manifest, trials = long_inputs
    model_dir = saved_tiny_model(tmp_path / "model", config={"train_crop_seconds": 0.5})
    result = evaluate_model(
        model_dir,
        manifest=str(manifest),
        trials=[str(trials)],
        out_dir=tmp_path / "ev",
        device="cpu",
        plots=False,
        threshold_manifest=str(manifest),
        threshold_trials=str(trials),
    )
    window = json.loads((tmp_path / "ev" / "embedding_window.json").read_text())
    assert window == result["embedding_window"]
    # the two EERs are what the two windows give on the held-out list, and the lower one is chosen
    model = load_model(model_dir)
    labels = np.array([int(line.split()[0]) for line in trials.read_text().splitlines()])
    pairs = [line.split()[1:] for line in trials.read_text().splitlines()]
    for name, seconds in (("whole", 0.0), ("chunked", 0.5)):
        table = embed_manifest(model, manifest, chunk_seconds=seconds, device="cpu", progress=False)
        x = table.embeddings - table.embeddings.mean(0)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        scores = np.array([x[table.lookup([e])[0]] @ x[table.lookup([t])[0]] for e, t in pairs])
        assert window[f"eer_{name}"] == pytest.approx(eer(scores, labels)[0], abs=1e-6)
    chosen = 0.5 if window["eer_chunked"] < WINDOW_MARGIN * window["eer_whole"] else 0.0
    assert window["chosen_chunk_seconds"] == chosen
    assert MLSVConfig.from_pretrained(result["model"]).embedding_chunk_seconds == chosen
    # a model with a stored window is not re-chosen; an explicit window wins and nothing is chosen
    again = evaluate_model(
        result["model"],
        manifest=str(manifest),
        trials=[str(trials)],
        out_dir=tmp_path / "ev2",
        device="cpu",
        plots=False,
        threshold_trials=str(trials),
    )
    assert again["embedding_window"] is None and not (tmp_path / "ev2" / "embedding_window.json").exists()
    # the held-out list is embedded once per window: its thresholds come from the chosen window's embeddings,
    # equal to those of an evaluation that embeds it anew in the stored window
    assert not (tmp_path / "ev" / "threshold_embeddings.npz").exists()
    assert (tmp_path / "ev2" / "threshold_embeddings.npz").exists()
    first, second = (MLSVConfig.from_pretrained(r["model"]) for r in (result, again))
    assert first.threshold is not None and first.threshold == pytest.approx(second.threshold, abs=1e-6)
    explicit = evaluate_model(
        model_dir,
        manifest=str(manifest),
        trials=[str(trials)],
        out_dir=tmp_path / "ev3",
        device="cpu",
        plots=False,
        threshold_trials=str(trials),
        chunk_seconds=0.0,
    )
    assert explicit["embedding_window"] is None
    assert MLSVConfig.from_pretrained(explicit["model"]).embedding_chunk_seconds is None


def test_the_stored_window_is_applied_by_every_entry_point(windowed_model, long_inputs, tmp_path, capsys):
    from mlsv.api import Verifier
    from mlsv.inference.evaluation import embed_manifest
    from mlsv.models.loading import load_model

    manifest, trials = long_inputs
    folder = manifest.parent
    a1, b1 = str(folder / "a1.wav"), str(folder / "b1.wav")
    v = Verifier.from_pretrained(windowed_model)
    chunked = v.embed([a1, b1], chunk_seconds=0.5)
    whole = v.embed([a1, b1], chunk_seconds=0.0)
    assert not np.allclose(chunked, whole, atol=1e-4), "1.8 s in chunks of 0.5 s must differ from the whole"
    np.testing.assert_allclose(v.embed([a1, b1]), chunked, atol=1e-6)  # the Verifier
    np.testing.assert_allclose(v.embed_table([a1, b1], ids=["a", "b"]).embeddings, chunked, atol=1e-6)
    # verify scores the stored window's embeddings (cosine after the mean; none stored: the raw vectors)
    expected = float(chunked[0] @ chunked[1] / np.linalg.norm(chunked[0]) / np.linalg.norm(chunked[1]))
    assert v.verify(a1, b1).score == pytest.approx(expected, abs=1e-5)
    # evaluation's manifest path
    table = embed_manifest(load_model(windowed_model), manifest, device="cpu", progress=False)
    np.testing.assert_allclose(table.embeddings[table.lookup(["a1", "b1"])], chunked, atol=1e-5)
    # mlsv embed, and its explicit option
    assert main(["embed", "--model", str(windowed_model), a1, b1, "--out", str(tmp_path / "e.npz")]) == 0
    np.testing.assert_allclose(load_embeddings(tmp_path / "e.npz").embeddings, chunked, atol=1e-5)
    out = tmp_path / "w.npz"
    assert main(["embed", "--model", str(windowed_model), a1, b1, "--out", str(out), "--chunk-seconds", "0"]) == 0
    np.testing.assert_allclose(load_embeddings(out).embeddings, whole, atol=1e-5)
    # mlsv verify prints the stored window's score
    capsys.readouterr()
    assert main(["verify", "--model", str(windowed_model), a1, b1, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(expected, abs=1e-5)


def test_a_model_without_a_window_embeds_whole_utterances(model_dir, long_inputs):
    from mlsv.api import Verifier

    folder = long_inputs[0].parent
    v = Verifier.from_pretrained(model_dir)
    assert v.config.embedding_chunk_seconds is None
    files = [str(folder / "a1.wav"), str(folder / "b2.wav")]
    np.testing.assert_allclose(v.embed(files), v.embed(files, chunk_seconds=0.0), atol=1e-6)
