"""Layer inspection (mlsv.inference.inspect_layers, `mlsv inspect`): LAP's per-frame layer scores and max-pool
winners, SUPERB's weights, figure and table; bad figure names and lengths refused."""

from __future__ import annotations

import argparse
import csv
import warnings

import numpy as np
import pytest
import soundfile as sf
from conftest import cli_error

from mlsv.cli import main

warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")


def build(encoder: str, **settings):
    import torch

    from mlsv.models import MLSVModel

    torch.manual_seed(0)
    return MLSVModel.from_encoder(encoder, embedding_size=16, **settings).eval()


def run_inspect(argv: list[str]) -> int:
    from mlsv.commands import inspect

    parser = argparse.ArgumentParser()
    inspect.register(parser.add_subparsers())
    args = parser.parse_args(["inspect", *argv])
    return args.func(args)


def test_lap_analysis_matches_the_model():
    import torch

    from mlsv.inference.inspect_layers import analyze_layers

    model = build("tiny-wavlm", lap_heads=4, lap_channels=32)
    wav = (0.1 * np.random.default_rng(0).standard_normal(6000)).astype(np.float32)
    a = analyze_layers(model, wav)
    with torch.no_grad():
        ref = model(torch.from_numpy(wav)[None], output_layer_scores=True).layer_scores[0].numpy()
    L = model.config.encoder_config["num_hidden_layers"] + 1
    T = ref.shape[1]
    assert a.scores.shape == (4, T, L) == ref.shape
    np.testing.assert_allclose(a.scores, ref, atol=1e-6)
    assert a.wins.shape == (L,) and a.wins.sum() == T * 32  # every frame x channel has one winner
    assert a.mean_scores.shape == (L,) and np.isclose(a.win_share.sum(), 1.0)


def test_inspect_command_lap(tmp_path, capsys):
    model = build("tiny-hubert", lap_heads=4, lap_channels=32)
    model.save_pretrained(tmp_path / "model")
    t = np.arange(int(0.4 * 22050)) / 22050
    sf.write(tmp_path / "a.wav", np.stack([0.3 * np.sin(2 * np.pi * 150 * t)] * 2, axis=1), 22050)
    png, table = tmp_path / "layers.png", tmp_path / "layers.csv"
    assert (
        run_inspect(
            ["--model", str(tmp_path / "model"), str(tmp_path / "a.wav"), "--out", str(png), "--table", str(table)]
        )
        == 0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(table)))
    assert [int(r["layer"]) for r in rows] == list(range(model.frontend.num_states))
    assert all(0.0 <= float(r["mean_score"]) <= 1.0 for r in rows)
    assert sum(float(r["win_share"]) for r in rows) == pytest.approx(1.0)
    assert all(r["superb_weight"] == "" for r in rows)
    assert "max-pool wins" in capsys.readouterr().out


def test_inspect_superb_shows_weights_only(tmp_path):
    from mlsv.inference.inspect_layers import analyze_layers, plot_layers, write_layer_table

    model = build("tiny-wavlm", aggregation="superb")
    a = analyze_layers(model, np.ones(4000, np.float32))
    assert a.scores is None and a.wins is None
    np.testing.assert_allclose(a.superb_weights, model.layer_weights().numpy())
    rows = list(csv.DictReader(open(write_layer_table(a, tmp_path / "t.csv"))))
    assert len(rows) == model.frontend.num_states and rows[0]["mean_score"] == ""
    assert plot_layers(a, tmp_path / "s.png").stat().st_size > 0


def test_inspect_refuses_other_aggregations():
    from mlsv.inference.inspect_layers import analyze_layers

    with pytest.raises(ValueError, match="LAP scores or SUPERB weights"):
        analyze_layers(build("tiny-hubert", aggregation="last"), np.ones(4000, np.float32))


# -- mlsv inspect at the command line ------------------------------------------------------------------------


def test_inspect_reports_the_file_it_wrote(small_model_dir, cli_files, capsys, monkeypatch):
    monkeypatch.chdir(cli_files)
    assert main(["inspect", "--model", str(small_model_dir), "good.wav", "--out", "exp", "--max-seconds", "0"]) == 0
    assert "wrote exp.png" in capsys.readouterr().out
    assert (cli_files / "exp.png").is_file() and not (cli_files / "exp").exists()


def test_inspect_refuses_bad_figure_names_and_lengths(small_model_dir, cli_files, capsys):
    assert (
        main(
            ["inspect", "--model", str(small_model_dir), str(cli_files / "good.wav"), "--out", str(cli_files / "x.xyz")]
        )
        == 2
    )
    assert "cannot write .xyz figures" in cli_error(capsys)
    for value in ("-1", "nan"):
        with pytest.raises(SystemExit) as e:
            main(
                [
                    "inspect",
                    "--model",
                    str(small_model_dir),
                    str(cli_files / "good.wav"),
                    "--out",
                    str(cli_files / "x.png"),
                    "--max-seconds",
                    value,
                ]
            )
        assert e.value.code == 2
        assert "argument --max-seconds:" in cli_error(capsys)
