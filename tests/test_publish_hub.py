"""Publishing (mlsv.publish.hub, push_to_hub.py): the dry-run folder (code, weights, model card) loads without
mlsv; the upload call sequence; a dry run never deletes what it did not make; repository ids checked first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from conftest import cli_error, saved_tiny_model
from huggingface_hub import ModelCard

from mlsv.publish import hub
from mlsv.publish.hub import build_model_card, load_metrics, main

warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")

RESULTS = {
    "systems": {
        "LAP": {
            "cosine": {"test_trials": {"eer": 4.321, "min_dcf_0.01": 0.3141, "min_dcf_0.05": 0.2718, "n_trials": 4000}},
            "calibrated": {
                "test_trials": {
                    "eer": 3.9876,
                    "min_dcf_0.01": 0.2999,
                    "min_dcf_0.05": 0.25,
                    "cllr": 0.41,
                    "n_trials": 4000,
                }
            },
        }
    },
    "baseline": {"mfcc_eer": 20.0},
}
SUPERB = {
    "cosine": {"test_trials": {"eer": 36.486, "min_dcf_0.01": 0.9, "min_dcf_0.05": 0.8, "n_trials": 4000}},
    "calibrated": {
        "test_trials": {"eer": 35.125, "min_dcf_0.01": 0.95, "min_dcf_0.05": 0.85, "cllr": 0.9, "n_trials": 4000}
    },
}


def evaluation_of(by_stage: dict) -> dict:
    """``config.evaluation`` as ``mlsv evaluate`` writes it for a system of a run's results."""
    return {
        "final_stage": "calibrated",
        "metrics": by_stage["calibrated"],
        "metrics_by_stage": by_stage,
        "trial_lists": ["test_trials"],
        "top_k": 600,
    }


def save_tiny(folder, *, seed: int = 0, evaluation: dict | None = None):
    return saved_tiny_model(
        folder, seed=seed, config={"training_mean": [0.1] * 16, "threshold": 0.42, "evaluation": evaluation}
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run as the report step leaves it: results.json about the evaluated model copied to run/model."""
    root = tmp_path_factory.mktemp("run")
    save_tiny(root / "model", evaluation=evaluation_of(RESULTS["systems"]["LAP"]))
    (root / "results.json").write_text(json.dumps({**RESULTS, "model": str(root / "model")}))
    return root


LOAD_WITHOUT_MLSV = textwrap.dedent("""
    import sys
    sys.modules["mlsv"] = None  # any import of mlsv fails
    import numpy as np, torch
    from transformers import AutoModel, AutoModelForAudioXVector
    folder, out = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__name__ == "MLSVModel" and not type(model).__module__.startswith("mlsv.")
    assert type(AutoModelForAudioXVector.from_pretrained(folder, trust_remote_code=True)).__name__ == "MLSVModel"
    g = torch.Generator().manual_seed(3)
    x = 0.1 * torch.randn(2, 7000, generator=g)
    mask = torch.ones(2, 7000, dtype=torch.long)
    mask[1, 5000:] = 0
    with torch.no_grad():
        emb = model(x, attention_mask=mask).embeddings
    np.save(out, emb.numpy())
    print("threshold", model.config.threshold)
""")


def test_dry_run_folder_loads_without_mlsv(run_dir, tmp_path, capsys):
    import torch

    from mlsv.models import MLSVModel

    out = tmp_path / "publish"
    assert (
        main(
            [
                "--model",
                str(run_dir / "model"),
                "--repo-id",
                "someone/mlsv-tiny",
                "--dry-run",
                str(out),
                "--dataset",
                "voxceleb2",
                "--license",
                "mit",
            ]
        )
        == 0
    )
    assert "nothing uploaded" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "configuration_mlsv.py",
        "modeling_mlsv.py",
    } <= names
    # the card: metadata and the model's metrics
    card = (out / "README.md").read_text()
    meta = ModelCard.load(out / "README.md").data  # the metadata as the Hub's own library reads it
    assert card.startswith("---\n") and meta.library_name == "transformers"
    for tag in ("speaker-verification", "mlsv", "wavlm", "lap"):
        assert tag in meta.tags
    assert meta.datasets == ["voxceleb2"] and meta.license == "mit"
    assert "| calibrated / test_trials | 3.988 | 0.2999 | 0.2500 | 0.4100 | 4,000 |" in card
    assert "4.321" in card and "trust_remote_code=True" in card and "Limitations" in card

    # a fresh process where mlsv cannot be imported, run elsewhere, with its own module cache
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_MLSV)
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(tmp_path / "emb.npy")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threshold 0.42" in proc.stdout
    model = MLSVModel.from_pretrained(run_dir / "model").eval()
    g = torch.Generator().manual_seed(3)
    x = 0.1 * torch.randn(2, 7000, generator=g)
    mask = torch.ones(2, 7000, dtype=torch.long)
    mask[1, 5000:] = 0
    with torch.no_grad():
        ref = model(x, attention_mask=mask).embeddings.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), ref, atol=1e-5)


def test_upload_is_one_commit_with_the_card(run_dir, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def create_branch(self, repo_id, **kw):
            calls.append(("create_branch", repo_id, kw))

        def upload_folder(self, *, folder_path, repo_id, **kw):
            files = sorted(os.listdir(folder_path))
            calls.append(("upload_folder", repo_id, {**kw, "files": files}))
            return type("Info", (), {"commit_url": "https://hub/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    assert main(["--model", str(run_dir / "model"), "--repo-id", "me/tiny", "--private", "--revision", "v1"]) == 0
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][2]["exist_ok"] is True and calls[0][2]["private"] is True
    assert calls[1][2]["branch"] == "v1" and calls[2][2]["revision"] == "v1"
    assert "README.md" in calls[2][2]["files"] and "model.safetensors" in calls[2][2]["files"]
    assert "hf_secret_token_value" not in json.dumps(calls, default=str) + capsys.readouterr().out


def test_card_without_results_and_metric_discovery(run_dir):
    from mlsv.models import MLSVConfig

    cfg = MLSVConfig.from_pretrained(run_dir / "model")
    card = build_model_card(cfg, repo_id="a/b")
    cfg.evaluation = None
    card = build_model_card(cfg, repo_id="a/b")
    assert "No evaluation is recorded for this model" in card and "datasets:" not in card
    found = load_metrics(RESULTS)
    assert [label for label, _ in found] == ["LAP / cosine / test_trials", "LAP / calibrated / test_trials"]
    assert load_metrics({"vox1_O": {"eer": 1.0}}) == [("vox1_O", {"eer": 1.0})]
    assert main(["--model", str(run_dir / "missing"), "--repo-id", "a/b", "--dry-run", str(run_dir / "x")]) == 2


def test_an_unreachable_hub_is_one_line(run_dir, monkeypatch, capsys):
    import huggingface_hub

    class OfflineApi:
        def create_repo(self, repo_id, **kw):
            raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    assert main(["--model", str(run_dir / "model"), "--repo-id", "me/tiny"]) == 2
    err = capsys.readouterr().err
    assert "could not upload to the Hub repository 'me/tiny' (OSError: Name or service not known)" in err
    assert "--dry-run" in err and "Traceback" not in err


def test_a_stale_onnx_export_is_refused_before_any_upload(run_dir, tmp_path, monkeypatch, capsys):
    import shutil

    import huggingface_hub
    import torch

    from mlsv.inference.export import export_onnx
    from mlsv.models import MLSVModel

    pytest.importorskip("onnxruntime")
    folder = tmp_path / "model"
    shutil.copytree(run_dir / "model", folder)
    model = MLSVModel.from_pretrained(folder)
    export_onnx(model, folder / "model.onnx", trace_seconds=0.4, check=False)
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append("create_repo")

        def upload_folder(self, *, folder_path, **kw):
            calls.append(sorted(os.listdir(folder_path)))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    argv = ["--model", str(folder), "--repo-id", "me/tiny"]
    assert main(argv) == 0  # an export of these weights goes up with them
    assert {"model.onnx", "model.onnx.json", "model.safetensors"} <= set(calls[-1])

    with torch.no_grad():  # a retrain overwrites the weights; the export stays behind
        next(model.backend.parameters()).view(-1)[0] += 0.01
    model.save_pretrained(folder)
    calls.clear()
    capsys.readouterr()
    assert main(argv) == 2 and main([*argv, "--dry-run", str(tmp_path / "publish")]) == 2
    err = capsys.readouterr().err
    assert calls == [] and not (tmp_path / "publish").exists()
    assert f"{folder / 'model.onnx'} was exported from other weights than {folder / 'model.safetensors'}" in err
    assert f"mlsv export --model {folder} --out {folder / 'model.onnx'}" in err

    report = json.loads((folder / "model.onnx.json").read_text())
    del report["weights_fingerprint"]  # an export made before reports recorded the weights: cannot tell
    (folder / "model.onnx.json").write_text(json.dumps(report))
    with pytest.warns(UserWarning, match="records no weights fingerprint"):
        assert main(argv) == 0
    assert "model.onnx" in calls[-1]


def publish(model_dir, out) -> tuple[str, list[str]]:
    """push_to_hub.py --dry-run: the card and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["--model", str(model_dir), "--repo-id", "me/tiny", "--dry-run", str(out)]) == 0
    return (out / "README.md").read_text(), [str(w.message) for w in caught if "model card" in str(w.message)]


def table_rows(card: str) -> list[str]:
    return [
        line.split(" | ")[0].lstrip("| ")
        for line in card.split("## Evaluation")[1].split("## How")[0].splitlines()
        if line.startswith("| ") and not line.startswith("| trial list")
    ]


def test_a_card_shows_only_the_metrics_the_model_records(tmp_path):
    """The card shows what ``mlsv evaluate`` stored in the model's config, every score scale; a run's
    results.json beside it (the run's systems, about another model folder) is not read, so a training
    stage's model (never evaluated: no cohort, no calibration) or the run's other system shows none of
    its rows. A results file given explicitly is used as given."""
    run = tmp_path / "run"
    save_tiny(run / "model", seed=0, evaluation=evaluation_of(RESULTS["systems"]["LAP"]))
    save_tiny(run / "lap_stage1" / "model", seed=1)
    save_tiny(run / "superb_eval" / "model", seed=2, evaluation=evaluation_of(SUPERB))
    results = {"systems": {**RESULTS["systems"], "SUPERB": SUPERB}, "model": str(run / "model")}
    (run / "results.json").write_text(json.dumps(results))
    own_rows = ["cosine / test_trials", "calibrated / test_trials"]

    card, warned = publish(run / "lap_stage1" / "model", tmp_path / "stage1")
    assert table_rows(card) == [] and "No evaluation is recorded for this model" in card and warned == []
    assert not any(v in card for v in ("4.321", "3.988", "36.486", "35.125"))

    card, _ = publish(run / "superb_eval" / "model", tmp_path / "superb")
    assert table_rows(card) == own_rows and "36.486" in card and "35.125" in card and "3.988" not in card

    card, _ = publish(run / "model", tmp_path / "run_model")
    assert table_rows(card) == own_rows and "36.486" not in card
    assert "| calibrated / test_trials | 3.988 | 0.2999 | 0.2500 | 0.4100 | 4,000 |" in card

    # a model evaluated before every scale was stored: its final scale's row
    final_only = {"final_stage": "calibrated", "metrics": SUPERB["calibrated"], "top_k": 600}
    card, _ = publish(save_tiny(tmp_path / "older", evaluation=final_only), tmp_path / "older_card")
    assert table_rows(card) == ["calibrated / test_trials"] and "35.125" in card and "36.486" not in card

    out = tmp_path / "given"
    assert (
        main(
            [
                "--model",
                str(run / "lap_stage1" / "model"),
                "--repo-id",
                "me/tiny",
                "--dry-run",
                str(out),
                "--results",
                str(run / "results.json"),
            ]
        )
        == 0
    )
    assert table_rows((out / "README.md").read_text()) == [
        f"{system} / {row}" for system in ("LAP", "SUPERB") for row in own_rows
    ]


# ------------------------------------------------------------------------------------------------
# only the model folder's own files are published


@pytest.mark.parametrize(
    "name", ["model.onnx", "model.onnx.json", "modeling_mlsv.py", "preprocessor_config.json", "config.json"]
)
def test_a_file_linking_outside_the_model_folder_is_refused(tmp_path, capsys, name):
    """``ln -s ~/secret.txt MODEL/model.onnx`` must not put the secret into the publish folder: any file
    the folder is built from that resolves outside the model folder is refused, naming it and its target."""
    model = save_tiny(tmp_path / "model")
    secret = tmp_path / "home" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("SECRET-VALUE-1234\n")
    link = model / name
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    out = tmp_path / "publish"
    capsys.readouterr()
    assert main(["--model", str(model), "--repo-id", "me/tiny", "--dry-run", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("push_to_hub.py: error: ") and str(link) in err and str(secret) in err
    assert "outside the model folder" in err
    published = [p for p in tmp_path.rglob("*") if p.is_file() and "home" not in p.parts and "model" not in p.parts]
    assert not any(b"SECRET-VALUE" in p.read_bytes() for p in published)
    assert not out.exists()

    # a chain of links that ends outside is the same; a dangling link outside too
    hop = model / "inside-hop"
    hop.symlink_to(secret)
    link.unlink()
    link.symlink_to("inside-hop")
    assert main(["--model", str(model), "--repo-id", "me/tiny", "--dry-run", str(out)]) == 2
    assert str(link) in capsys.readouterr().err and not out.exists()


def test_links_inside_the_model_folder_are_published_and_shards_outside_refused(tmp_path, capsys):
    """A link that stays inside the model folder is allowed (its content is published as a file); a
    weights index naming a shard outside the folder is refused."""
    model = save_tiny(tmp_path / "model")
    (model / "weights").mkdir()
    (model / "model.safetensors").replace(model / "weights" / "v1.safetensors")
    (model / "model.safetensors").symlink_to(os.path.join("weights", "v1.safetensors"))
    out = tmp_path / "publish"
    assert main(["--model", str(model), "--repo-id", "me/tiny", "--dry-run", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors").is_symlink()

    # sharded weights: the index names a shard (any name) that links outside
    shard = tmp_path / "elsewhere" / "weights.safetensors"
    shard.parent.mkdir()
    (model / "weights" / "v1.safetensors").replace(shard)
    (model / "model.safetensors").unlink()
    (model / "part.safetensors").symlink_to(shard)
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as f:
        index = {"metadata": {}, "weight_map": {k: "part.safetensors" for k in f.keys()}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert main(["--model", str(model), "--repo-id", "me/tiny", "--dry-run", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err
    assert str(model / "part.safetensors") in err and str(shard) in err and "model.safetensors.index.json" in err
    assert "outside the model folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p2").exists()


# ------------------------------------------------------------------------------------------------
# the card's "transformers only" snippet decides as mlsv does


SR = 16000


def _voice(seconds: float, f0: float, seed: int) -> np.ndarray:
    """A speech-like signal: a harmonic tone with a syllable-rate envelope and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 5) * t) ** 2
    return (0.2 * x * env + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _manifest(path, speakers: dict[str, float], per_speaker: int, seed: int) -> list[str]:
    """WAV files beside ``path`` (``per_speaker`` of each speaker, at its pitch) and their manifest; the ids."""
    import soundfile as sf

    rows = []
    for s, (speaker, f0) in enumerate(speakers.items()):
        for u in range(per_speaker):
            uid = f"{speaker}_{u}"
            wav = path.parent / f"{uid}.wav"
            x = _voice(0.5 + 0.1 * u, f0 * (1 + 0.02 * u), seed=seed + 10 * s + u)
            sf.write(wav, x, SR, subtype="FLOAT")
            rows.append({"id": uid, "path": str(wav), "speaker": speaker, "duration": len(x) / SR, "sample_rate": SR})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [r["id"] for r in rows]


def _trials(path, ids: list[str]):
    lines = [f"{int(a.split('_')[0] == b.split('_')[0])} {a} {b}" for i, a in enumerate(ids) for b in ids[i + 1 :]]
    path.write_text("\n".join(lines) + "\n")
    return path


def _transformers_only(card: str) -> tuple[str, str]:
    """The card's "transformers only" part (up to the next heading) and its python code block."""
    part = card[card.index("with transformers only") :]
    part = part[: part.index("\n## ")] if "\n## " in part else part
    code = part.split("```python\n", 1)[1].split("\n```", 1)[0]
    return part, code


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny model evaluated as ``mlsv evaluate`` does: AS-norm cohort and calibration stored, the threshold on
    the calibrated scale, and every scale's score statistics from held-out threshold trials."""
    from mlsv.inference.evaluation import evaluate_model

    root = tmp_path_factory.mktemp("evaluated")
    model = saved_tiny_model(root / "model", seed=4)
    (root / "test").mkdir()
    (root / "cohort").mkdir()
    ids = _manifest(root / "test" / "m.jsonl", {"a": 110.0, "b": 160.0, "c": 230.0}, 3, seed=1)
    _manifest(root / "cohort" / "m.jsonl", {f"co{i}": 100.0 + 25 * i for i in range(6)}, 2, seed=100)
    evaluate_model(
        model,
        manifest=str(root / "test" / "m.jsonl"),
        trials=[str(_trials(root / "test" / "list.txt", ids[::2]))],
        out_dir=root / "ev",
        cohort=str(root / "cohort" / "m.jsonl"),
        top_k=4,
        calibration_pairs=200,
        device="cpu",
        plots=False,
        threshold_trials=str(_trials(root / "test" / "heldout.txt", ids)),
    )
    return root, root / "ev" / "model", [str(root / "test" / f"{u}.wav") for u in ids]


def test_the_transformers_only_snippet_decides_as_mlsv_on_the_cosine_scale(evaluated, tmp_path):
    """Run as the card gives it, where mlsv cannot be imported, the snippet's decision on each pair is the
    Verifier's on the cosine scale; the card says which scale that is and how it relates to mlsv verify
    (which scores this model with its stored cohort and calibration)."""
    from mlsv.api import Verifier
    from mlsv.publish.hub import build_publish_folder

    _, model_dir, wavs = evaluated
    out = build_publish_folder(model_dir, tmp_path / "publish", repo_id="me/tiny")
    card = (out / "README.md").read_text()
    part, code = _transformers_only(card)
    config = json.loads((model_dir / "config.json").read_text())
    cosine_threshold = config["evaluation"]["score_statistics"]["cosine"]["eer_threshold"]
    assert config["evaluation"]["threshold_scale"] == "calibrated" and config["threshold"] != cosine_threshold
    assert "model.config.threshold" not in code and "cfg.threshold" not in code  # the calibrated one
    assert "cosine scale" in part and "use_stored_cohort=False" in part and "mlsv verify" in part
    assert "calibrated" in part  # what mlsv verify scores this model on

    cosine = Verifier.from_pretrained(model_dir, use_stored_cohort=False)
    assert cosine.score_scale == "cosine" and Verifier.from_pretrained(model_dir).score_scale == "calibrated"
    assert cosine.threshold().value == cosine_threshold
    pairs, expected = [], []
    for i, a in enumerate(wavs):
        for b in wavs[i + 1 :]:
            r = cosine.verify(a, b)
            if abs(r.score - r.threshold) > 1e-4:  # embedding alone or in a padded batch: float rounding
                pairs.append((a, b))
                expected.append((r.decision, r.score))
    assert sum(d for d, _ in expected) >= 2 and sum(not d for d, _ in expected) >= 2, expected
    keep = [i for i, (d, _) in enumerate(expected) if d][:6] + [i for i, (d, _) in enumerate(expected) if not d][:6]
    pairs, expected = [pairs[i] for i in keep], [expected[i] for i in keep]

    assert code.count('"me/tiny"') == 1 and code.count('"enroll.wav"') == 1 and code.count('"test.wav"') == 1
    (tmp_path / "snippet.py").write_text(code.replace('"me/tiny"', repr(str(out))))
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    runner = textwrap.dedent("""
        import contextlib, io, json, sys
        sys.modules["mlsv"] = None  # any import of mlsv fails
        code = open(sys.argv[1]).read()
        printed = []
        for a, b in json.load(open(sys.argv[2])):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(code.replace('"enroll.wav"', repr(a)).replace('"test.wav"', repr(b)), "card", "exec"),
                     {"__name__": "__main__"})
            printed.append(buf.getvalue())
        print(json.dumps(printed))
    """)
    (tmp_path / "run.py").write_text(runner)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "snippet.py"), str(tmp_path / "pairs.json")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    for (a, b), text, (decision, score) in zip(pairs, printed, expected):
        said = {"same speaker" in text, "different speakers" in text}
        assert said == {True, False}, text
        assert ("same speaker" in text) == decision, (a, b, text, score)
        assert (
            f"score {score:.4f}" in text or f"score {score + 1e-5:.4f}" in text or f"score {score - 1e-5:.4f}" in text
        ), (text, score)


def test_the_card_gives_no_cosine_decision_without_a_cosine_threshold(evaluated, tmp_path):
    """A model whose only threshold is on the calibrated scale (evaluated with a cohort, no held-out
    threshold trials): the snippet scores, the card says plainly that it has no cosine threshold and
    points to mlsv, instead of comparing a cosine with a calibrated threshold."""
    from mlsv.inference.scorer import Scorer
    from mlsv.models import MLSVConfig

    _, model_dir, _ = evaluated
    config = MLSVConfig.from_pretrained(model_dir)
    config.evaluation = {k: v for k, v in config.evaluation.items() if k != "score_statistics"}
    with pytest.raises(ValueError, match="no decision threshold for cosine"):
        Scorer(config).threshold(scale="cosine")
    part, code = _transformers_only(build_model_card(config, repo_id="me/tiny"))
    assert ">=" not in code and "config.threshold" not in code
    assert "no decision threshold for cosine scores" in part and "mlsv verify" in part

    # a model whose stored threshold is on the cosine scale (no calibration) decides with it
    config = MLSVConfig.from_pretrained(model_dir)
    config.evaluation, config.calibration, config.threshold = None, None, 0.25
    assert Scorer(config).threshold(scale="cosine").value == 0.25
    part, code = _transformers_only(build_model_card(config, repo_id="me/tiny"))
    assert "score >= threshold" in code and "threshold = cfg.threshold" in code


def test_the_card_does_not_claim_mlsv_is_on_a_package_index(run_dir):
    from mlsv.models import MLSVConfig

    card = build_model_card(MLSVConfig.from_pretrained(run_dir / "model"), repo_id="a/b")
    assert "pip install mlsv" not in card
    assert "pip install -e ." in card and "repository" in card


# -- push_to_hub.py --dry-run never deletes what it did not make; repository ids checked first ---------------


def _dry_run(model, out, repo_id="me/x") -> int:
    return hub.main(["--model", str(model), "--repo-id", repo_id, "--dry-run", str(out)])


def test_dry_run_refuses_a_folder_with_other_files(small_model_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious\n")
    assert _dry_run(small_model_dir, out) == 2
    assert "not a publish folder" in cli_error(capsys)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "precious\n"


def test_dry_run_refuses_a_folder_holding_the_model(small_model_dir, tmp_path, capsys):
    import shutil

    run = tmp_path / "runX"
    shutil.copytree(small_model_dir, run / "model")
    before = sorted(p.name for p in (run / "model").iterdir())
    assert _dry_run(run / "model", run) == 2
    assert "holds the model folder" in cli_error(capsys)
    assert _dry_run(run / "model", run / "model") == 2
    assert sorted(p.name for p in (run / "model").iterdir()) == before


def test_dry_run_refuses_the_current_folder(small_model_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "config.json").write_text("{}")  # a publish-like file: still the folder the user stands in
    monkeypatch.chdir(tmp_path)
    assert _dry_run(small_model_dir, ".") == 2
    assert "holds the current folder" in cli_error(capsys)
    assert (tmp_path / "config.json").read_text() == "{}"


def test_dry_run_out_that_is_a_file(small_model_dir, cli_files, capsys):
    assert _dry_run(small_model_dir, cli_files / "afile") == 2
    assert "afile is a file, not a folder" in cli_error(capsys)
    assert _dry_run(small_model_dir, cli_files / "afile" / "sub") == 2
    assert "afile is a file, not a folder" in cli_error(capsys)
    assert (cli_files / "afile").read_text() == "keep me\n"


def test_dry_run_rerun_replaces_its_own_output(small_model_dir, tmp_path, capsys):
    out = tmp_path / "pub"
    assert _dry_run(small_model_dir, out) == 0
    first = sorted(p.name for p in out.iterdir())
    assert {"config.json", "model.safetensors", "README.md", "modeling_mlsv.py"} <= set(first)
    (out / "README.md").write_text((out / "README.md").read_text() + "\nold edit\n")
    assert _dry_run(small_model_dir, out, repo_id="me/y") == 0
    assert sorted(p.name for p in out.iterdir()) == first
    assert "me/y" in (out / "README.md").read_text() and "old edit" not in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pub"]  # no temporary folder left beside it


def test_dry_run_recognises_its_cards_by_their_metadata(small_model_dir, tmp_path, capsys):
    """An earlier dry run's folder is recognised by its card's parsed metadata: one an earlier mlsv wrote
    (hand-made YAML, quoted tags) is replaced; a card without the mlsv tag is not mlsv's and stays."""
    out = tmp_path / "pub"
    assert _dry_run(small_model_dir, out) == 0
    body = (out / "README.md").read_text().split("---\n", 2)[2]
    old_meta = '---\nlibrary_name: transformers\ntags:\n- "speaker-verification"\n- "mlsv"\n'
    (out / "README.md").write_text(old_meta + "pipeline_tag: feature-extraction\n---\n" + body)
    assert _dry_run(small_model_dir, out, repo_id="me/y") == 0
    assert ModelCard.load(out / "README.md").data.eval_results is None  # rebuilt: no evaluation recorded
    assert "me/y" in (out / "README.md").read_text()
    (out / "README.md").write_text("---\nlibrary_name: transformers\ntags:\n- other\n---\n" + body)
    assert _dry_run(small_model_dir, out) == 2
    assert "not a publish folder" in cli_error(capsys)
    (out / "README.md").write_text("---\n[not: a mapping\n---\n" + body)
    assert _dry_run(small_model_dir, out) == 2


def test_failed_build_keeps_the_previous_output(small_model_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "pub"
    assert _dry_run(small_model_dir, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad"
    shutil.copytree(small_model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(Exception):  # noqa: B017  (the loader's error; a clear one is api.load_model's business)
        hub.build_publish_folder(bad, out, repo_id="me/x")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "pub"]


def test_dry_run_refuses_a_folder_with_publish_file_names_that_it_did_not_build(tmp_path):
    """File names alone do not make a publish folder: a user's README.md and config.json stay."""
    from mlsv.publish.hub import main

    model = saved_tiny_model(tmp_path / "model", lap_heads=2, lap_channels=16, embedding_size=8)
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    (mine / "config.json").write_text('{"mine": 1}')
    assert main(["--model", str(model), "--repo-id", "me/x", "--dry-run", str(mine)]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["README.md", "config.json"]
    assert (mine / "README.md").read_text() == "# my notes\n"
    (mine / "__init__.py").write_text("")
    assert main(["--model", str(model), "--repo-id", "me/x", "--dry-run", str(mine)]) == 2
    assert (mine / "__init__.py").is_file()
    built = tmp_path / "built"  # an earlier dry run's folder is replaced
    assert main(["--model", str(model), "--repo-id", "me/x", "--dry-run", str(built)]) == 0
    assert main(["--model", str(model), "--repo-id", "me/x", "--dry-run", str(built)]) == 0


@pytest.mark.parametrize("repo_id", ["bad repo id!!", "me/a--b", "me/-a", "me/a.", "x", "a/b/c", "me/" + "a" * 97])
def test_bad_repo_id_is_refused_before_building(small_model_dir, tmp_path, capsys, repo_id):
    assert _dry_run(small_model_dir, tmp_path / "p4", repo_id=repo_id) == 2
    assert "--repo-id" in cli_error(capsys)
    assert not (tmp_path / "p4").exists()
    # and before an upload (nothing is built, nothing reaches the network)
    assert hub.main(["--model", str(small_model_dir), "--repo-id", repo_id]) == 2
    assert "--repo-id" in cli_error(capsys)


def test_repo_id_check_accepts_hub_names():
    assert hub.check_repo_id("Me_1/mlsv-wavlm.lap") == "Me_1/mlsv-wavlm.lap"


def test_hub_main_reports_os_errors(small_model_dir, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "pub"))

    monkeypatch.setattr(hub, "build_publish_folder", refuse)
    assert _dry_run(small_model_dir, tmp_path / "pub") == 2
    assert "push_to_hub.py: error: [Errno 13] Permission denied" in cli_error(capsys)


def test_the_card_says_the_training_crop_length(tmp_path):
    from mlsv.models import MLSVConfig
    from mlsv.publish.hub import build_model_card

    config = MLSVConfig(encoder_config={"model_type": "wavlm", "num_hidden_layers": 2})
    assert "training crops" not in build_model_card(config, repo_id="me/x")
    config.train_crop_seconds = 2.0
    assert "| training crops | 2 s (the context the model was trained on) |" in build_model_card(config, repo_id="me/x")


# ------------------------------------------------------------------------------------------------
# Hub-native metadata (ModelCardData / EvalResult) and the pipeline the card shows


def test_card_metadata_parses_with_huggingface_hub(run_dir, tmp_path, monkeypatch):
    """The card's metadata is huggingface_hub's: the model-index holds one speaker-verification result per
    trial list, score scale and metric (EER, minDCF with its prior), equal to what the model records; the
    pipeline tag is one whose Hub snippet runs; base_model is the encoder's hub id when it came from one."""
    from mlsv.models import MLSVConfig
    from mlsv.publish.hub import build_publish_folder

    out = build_publish_folder(run_dir / "model", tmp_path / "publish", repo_id="someone/mlsv-tiny", license="mit")
    data = ModelCard.load(out / "README.md").data
    assert data.pipeline_tag == "feature-extraction" and data.library_name == "transformers"
    assert "custom_code" in data.tags and "speaker-verification" in data.tags
    assert data.base_model is None  # a built-in tiny encoder
    assert data.model_name == "mlsv-tiny"
    got = {
        (r.dataset_type, r.metric_config, r.metric_type, (r.metric_args or {}).get("p_target")): r.metric_value
        for r in data.eval_results
    }
    assert {r.task_type for r in data.eval_results} == {"speaker-verification"}
    expected = {}
    for stage, lists in RESULTS["systems"]["LAP"].items():
        for trial_list, m in lists.items():
            expected[(trial_list, stage, "eer", None)] = m["eer"]
            expected[(trial_list, stage, "min_dcf", 0.01)] = m["min_dcf_0.01"]
            expected[(trial_list, stage, "min_dcf", 0.05)] = m["min_dcf_0.05"]
    assert got == expected
    # the config names the pipeline for both tasks the card's snippets use
    config = json.loads((out / "config.json").read_text())
    assert set(config["custom_pipelines"]) == {"speaker-verification", "feature-extraction"}

    cfg = MLSVConfig.from_pretrained(run_dir / "model")
    cfg.encoder_name_or_path = "microsoft/wavlm-base-plus"
    assert hub.card_data(cfg, repo_id="a/b").base_model == "microsoft/wavlm-base-plus"
    cfg.encoder_name_or_path = str(tmp_path)  # a local folder
    assert hub.card_data(cfg, repo_id="a/b").base_model is None
    (tmp_path / "enc" / "wavlm").mkdir(parents=True)  # a local folder named like a hub id
    monkeypatch.chdir(tmp_path)
    cfg.encoder_name_or_path = "enc/wavlm"
    assert hub.card_data(cfg, repo_id="a/b").base_model is None
    cfg.encoder_name_or_path = "enc/hubert"  # no such folder here: a hub id
    assert hub.card_data(cfg, repo_id="a/b").base_model == "enc/hubert"
    # a snapshot of the Hub's cache names the repository it came from
    cfg.encoder_name_or_path = "/cache/hub/models--microsoft--wavlm-base-plus/snapshots/0123abcd"
    assert hub.card_data(cfg, repo_id="a/b").base_model == "microsoft/wavlm-base-plus"
    # a results file: the system becomes the dataset's config, a record without a scale has none
    results = hub.eval_results(load_metrics(RESULTS) + [("vox1_O", {"eer": 1.5, "min_dcf_0.01": float("nan")})])
    first, last = results[0], results[-1]
    assert (first.dataset_config, first.metric_config, first.dataset_type) == ("LAP", "cosine", "test_trials")
    assert (last.dataset_type, last.metric_config, last.metric_type, last.metric_value) == ("vox1_O", None, "eer", 1.5)
    assert sum(r.dataset_type == "vox1_O" for r in results) == 1  # NaN left out


CARD_PIPELINE = textwrap.dedent("""
    import json, sys
    sys.modules["mlsv"] = None  # any import of mlsv fails
    from transformers import pipeline
    code, folder, enroll, test, out = sys.argv[1:6]
    namespace = {"__name__": "__main__"}
    for name, value in (('"me/tiny"', folder), ('"enroll.wav"', enroll), ('"test.wav"', test), ('"a.wav"', enroll)):
        code = code.replace(name, repr(value))
    exec(compile(code, "card", "exec"), namespace)
    # the Hub's "Use this model" snippet for the card's pipeline tag
    hub = pipeline("feature-extraction", model=folder, trust_remote_code=True)
    with open(out, "w") as f:
        json.dump({"card": namespace["result"], "hub": hub(enroll, test), "dim": len(namespace["embedding"]),
                   "hub_embedding": hub(enroll)["embedding"].tolist()}, f)
""")


def test_the_cards_pipeline_snippet_gives_what_mlsv_verify_gives(evaluated, tmp_path):
    """The card's pipeline snippet, run where mlsv cannot be imported, and the Hub's feature-extraction snippet
    give the score, threshold and decision of ``mlsv verify`` on this model's calibrated scale."""
    from mlsv.api import Verifier
    from mlsv.publish.hub import build_publish_folder

    _, model_dir, wavs = evaluated
    out = build_publish_folder(model_dir, tmp_path / "publish", repo_id="me/tiny")
    card = (out / "README.md").read_text()
    part = card[card.index("With transformers' pipeline") :]
    code = part.split("```python\n", 1)[1].split("\n```", 1)[0]
    assert 'pipeline("speaker-verification", model="me/tiny", trust_remote_code=True)' in code
    assert "calibrated scale" in part.split("```")[0]
    (tmp_path / "run.py").write_text(CARD_PIPELINE)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    a, b = wavs[0], wavs[-1]
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), code, str(out), a, b, str(tmp_path / "out.json")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out.json").read_text())
    verifier = Verifier.from_pretrained(model_dir)
    want = verifier.verify(a, b).to_dict()
    assert want["scale"] == "calibrated"
    for result in (got["card"], got["hub"]):
        assert result["scale"] == want["scale"] and result["threshold"] == want["threshold"]
        assert result["decision"] == want["decision"] and result["threshold_source"] == want["threshold_source"]
        assert result["score"] == pytest.approx(want["score"], rel=1e-6, abs=1e-6)
    assert got["dim"] == verifier.embedding_size
    np.testing.assert_allclose(got["hub_embedding"], verifier.embed(a), rtol=0, atol=1e-6)
