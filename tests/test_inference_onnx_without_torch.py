"""The ONNX runtime without torch: ``Verifier.from_pretrained(dir, runtime="onnx")`` in a process where
importing torch, transformers, huggingface_hub, safetensors and every training or evaluation package fails,
with the same scores as the PyTorch runtime; and the torch-free readers of a model folder
(mlsv.inference.model_files) agree with mlsv.models' own rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_FAMILIES, tiny_model

from mlsv.inference import model_files
from mlsv.models.loading import min_samples as torch_min_samples
from mlsv.models.loading import weights_fingerprint

ROOT = Path(__file__).resolve().parents[1]

# what the torch-free process may not import: the ONNX runtime needs onnxruntime, numpy, soundfile, soxr
BLOCKED = (
    "torch",
    "transformers",
    "huggingface_hub",
    "safetensors",
    "tqdm",
    "yaml",
    "accelerate",
    "datasets",
    "pyarrow",
    "pandas",
    "sklearn",
    "scipy",
    "matplotlib",
    "psutil",
)

SCRIPT = """
import json, sys
BLOCKED = set(sys.argv[1].split(","))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
from mlsv import Verifier

model, a, b, c = sys.argv[2:6]
v = Verifier.from_pretrained(model, runtime="onnx")
r = v.verify(a, b)
scores = v.score_embeddings(*v.embed([a, c]))
loaded = sorted({m.partition(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps({"score": r.score, "scale": r.scale, "decision": bool(r.decision), "threshold": r.threshold,
                  "embeddings": v.embed([a, b, c]).tolist(), "scores": scores, "loaded": loaded}))
"""


def exported_model(root: Path):
    from mlsv.inference.export import export_onnx
    from mlsv.models import MLSVModel

    torch.manual_seed(0)
    model = MLSVModel.from_encoder("tiny-wavlm", lap_heads=4, lap_channels=32, embedding_size=16)
    model.config.training_mean = [0.01] * 16
    model.config.threshold = 0.3
    model.config.evaluation = {"threshold_scale": "asnorm", "top_k": 4}
    model.set_cohort(torch.randn(6, 16))  # AS-norm speaker means stored in the weights
    model.save_pretrained(root / "model")
    report = export_onnx(model, root / "model" / "model.onnx", trace_seconds=0.4, check_seconds=(0.7, 0.25))
    return root / "model", report


@pytest.mark.integration
def test_onnx_runtime_runs_without_torch_and_scores_as_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from mlsv import Verifier

    model_dir, report = exported_model(tmp_path)
    rng = np.random.default_rng(0)
    files = []
    for name, n, rate in (("a", 9000, 16000), ("b", 6000, 11025), ("c", 12000, 22050)):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32), rate, subtype="FLOAT")
        files.append(str(tmp_path / f"{name}.wav"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BLOCKED), str(model_dir), *files],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["loaded"] == []

    torch_v = Verifier.from_pretrained(model_dir)
    expected = torch_v.verify(files[0], files[1])
    assert got["scale"] == expected.scale == "asnorm" and got["threshold"] == expected.threshold == 0.3
    # the export's tolerance (its parity check, export_onnx's report) on embeddings; scores follow them
    tolerance = max(1e-4, 10 * report.max_abs_diff)
    np.testing.assert_allclose(got["embeddings"], torch_v.embed(files), atol=tolerance)
    assert got["score"] == pytest.approx(expected.score, abs=1e-3) and got["decision"] == bool(expected.decision)
    want = torch_v.score_embeddings(*torch_v.embed([files[0], files[2]]))
    assert set(got["scores"]) == set(want) == {"cosine", "asnorm"}
    for scale in want:
        assert got["scores"][scale] == pytest.approx(want[scale], abs=1e-3)


@pytest.mark.parametrize("encoder", TINY_FAMILIES)
def test_torch_free_readers_agree_with_the_model_code(tmp_path, encoder):
    """min_samples from config.json read as JSON, and the weights fingerprint read with numpy (float32 and
    bf16 files), equal mlsv.models' own; the stored cohort reads back."""
    torch.manual_seed(0)
    model = tiny_model(encoder)
    model.set_cohort(torch.randn(3, model.config.embedding_size))
    model.save_pretrained(tmp_path / "m")
    config = model_files.read_model_config(str(tmp_path / "m"))
    assert model_files.min_samples(config) == torch_min_samples(model.config)
    assert model_files.saved_weights_fingerprint(tmp_path / "m") == weights_fingerprint(model)
    np.testing.assert_array_equal(
        model_files.read_stored_cohort(str(tmp_path / "m"), config), model.cohort_embeddings.numpy()
    )
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert model_files.saved_weights_fingerprint(tmp_path / "bf16") == weights_fingerprint(model)


def test_torch_free_config_reader_names_what_is_wrong(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wavlm"}))
    with pytest.raises(ValueError, match=rf"{tmp_path}: a 'wavlm' model, not an mlsv model"):
        model_files.read_model_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mlsv", "encoder_config": {}}))
    with pytest.raises(ValueError, match="no encoder_config with a model_type"):
        model_files.read_model_config(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ValueError, match="corrupt or truncated weights file"):
        model_files.saved_weights_fingerprint(tmp_path)


def test_cohort_statistics_on_numpy_equal_torch(monkeypatch):
    """Without torch the Verifier's AS-norm statistics and cohort means run on numpy: the same numbers."""
    from mlsv.scoring import backend
    from mlsv.scoring.embeddings import EmbeddingTable

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((7, 16)).astype(np.float32)
    table = EmbeddingTable(
        ids=np.array([f"u{i}" for i in range(30)]),
        embeddings=rng.standard_normal((30, 16)).astype(np.float32),
        durations=np.ones(30, np.float32),
        speakers=np.array([f"s{i % 9}" for i in range(30)]),
    )
    cohort = backend.cohort_from_table(table)
    exclude = np.array([[0, -1], [1, 2], [-1, -1], [3, 4], [5, -1], [6, 7], [8, 0]])
    want = backend.cohort_stats(emb, cohort, 4, exclude)
    monkeypatch.setattr(backend, "torch", None)
    got_cohort = backend.cohort_from_table(table)
    np.testing.assert_allclose(got_cohort.vectors, cohort.vectors, atol=1e-6)
    got = backend.cohort_stats(emb, got_cohort, 4, exclude)
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    with pytest.raises(ValueError, match="without torch, cohort statistics run on the CPU"):
        backend.cohort_stats(emb, got_cohort, 4, device="cuda")
