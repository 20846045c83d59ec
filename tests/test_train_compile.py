"""Speed settings in the training loop (mlsv.train.loop): ``stage.compile``, ``stage.attention``, fused Adam.

The compiled stage runs use the "aot_eager" backend (graphs traced through dynamo and AOT autograd, no
kernels generated), which takes seconds on a CPU where inductor's code generation takes about a minute;
the one inductor run is marked slow.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_FAMILIES, padded_batch, tiny_model
from safetensors import safe_open
from safetensors.torch import load_file

from mlsv.config import ConfigError, load_config
from mlsv.models import runtime
from mlsv.train import checkpoint as ckpt
from mlsv.train import loop
from mlsv.train.processes import accelerate_settings

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")


# -- config ---------------------------------------------------------------------------------------------


def test_speed_fields_default_and_parse(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    cfg = load_config()
    st = cfg.stage  # precision and accumulation default to accelerate's configuration: "no" and 1 without one
    assert st.compile is False and st.attention == "sdpa" and st.mixed_precision == "auto" and st.grad_accum is None
    assert (accelerate_settings(cfg).stage.mixed_precision, accelerate_settings(cfg).stage.grad_accum) == ("no", 1)
    st = load_config(None, ["stage.compile=true", "stage.attention=eager", "stage.mixed_precision=bf16"]).stage
    assert st.compile is True and st.attention == "eager" and st.mixed_precision == "bf16"
    (tmp_path / "s.yaml").write_text("stage:\n  compile: true\n  attention: sdpa\n")
    assert load_config(tmp_path / "s.yaml").stage.compile is True
    (tmp_path / "n.yaml").write_text("stage:\n  mixed_precision: no\n")  # YAML reads a bare no as false
    assert load_config(tmp_path / "n.yaml").stage.mixed_precision == "no"
    assert load_config(None, ["stage.mixed_precision=no"]).stage.mixed_precision == "no"
    for path in sorted((ROOT / "configs").rglob("*.yaml")):  # every shipped stage config still loads
        if "steps" not in path.read_text():
            load_config(path)


@pytest.mark.parametrize(
    "override,message",
    [
        ("stage.attention=flash", "stage.attention: 'flash' is not one of sdpa, eager (did you mean 'sdpa'?)"),
        ("stage.attention=1", "stage.attention: expected str"),
        ("stage.compile=yes please", "stage.compile: expected true or false"),
        ("stage.compile=1", "stage.compile: expected true or false"),
        ("stage.mixed_precision=bf61", "stage.mixed_precision: 'bf61' is not one of auto, no, bf16, fp16, fp8"),
        ("stage.compiled=true", "unknown config key 'stage.compiled' (did you mean 'compile'?)"),
    ],
)
def test_bad_speed_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


@pytest.mark.integration
def test_train_py_rejects_a_bad_attention_before_training(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--config",
            str(ROOT / "configs/synthetic/stage1_frozen.yaml"),
            "--output-dir",
            str(tmp_path / "run"),
            "--set",
            "stage.attention=flash",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "stage.attention: 'flash' is not one of sdpa, eager" in r.stderr
    assert not (tmp_path / "run").exists()


# -- eager evaluation of a compiled model ------------------------------------------------------------------


def test_eager_block_runs_compiled_modules_without_recompiling():
    """A model compiled for one crop shape embeds other lengths eagerly inside ``loop.eager``: the same
    embeddings as the uncompiled model, no new graphs, and the compiled call is back afterwards."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = tiny_model()
    x, mask = padded_batch([5000, 3100, 1700])
    with torch.no_grad():
        ref = model.eval()(x, attention_mask=mask).embeddings
        runtime.compile_model(model, dynamic=False, backend="aot_eager")
        model(torch.randn(2, 3200))  # graphs for one crop shape (eval mode: BatchNorm statistics stay put)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    impls = {n: m._compiled_call_impl for n, m in model.named_modules() if runtime.is_compiled(m)}
    assert set(impls) == {"frontend", "aggregation", "backend"}
    with torch.no_grad(), loop.eager(model) as m:
        assert not any(runtime.is_compiled(s) for s in m.modules())
        out = m.eval()(x, attention_mask=mask).embeddings
        alone = m(x[2:, :1700]).embeddings
    assert counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(alone, ref[2:], rtol=1e-5, atol=1e-5)
    assert {n: m._compiled_call_impl for n, m in model.named_modules() if runtime.is_compiled(m)} == impls


def test_head_compiled_for_training_follows_the_margin_schedule():
    """The head's margin moves every step: ``compile_for_training`` compiles it with automatic dynamic
    shapes, so a few graphs serve every margin (a static graph would recompile for each value)."""
    from torch._dynamo.utils import counters

    from mlsv.models import SubCenterAAMSoftmax

    torch._dynamo.reset()
    counters.clear()
    model, head = tiny_model(), SubCenterAAMSoftmax(16, 10)
    loop.compile_for_training(model, head, backend="aot_eager")
    emb, y = torch.randn(4, 16), torch.tensor([1, 2, 3, 9])
    for i in range(12):
        head.set_margin(0.02 * (i + 1))
        loss, _ = head(emb, y)
        torch.testing.assert_close(loss, SubCenterAAMSoftmax.forward(head, emb, y)[0])
    assert counters["stats"]["unique_graphs"] <= 3


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_every_frontend_traces_as_one_graph(name):
    """No graph breaks: the frozen frontend, a stage-2 frontend and a padded evaluation batch each trace
    as one graph, so compiled parts fuse and CUDA graphs cover them whole."""
    frozen, trained = tiny_model(name), tiny_model(name)
    trained.configure_training(trainable="all")
    wav, mask = padded_batch([4000, 2500])
    for module, args in (
        (frozen.frontend.train(), (wav,)),
        (trained.frontend.train(), (wav,)),
        (frozen.eval(), (wav, mask)),
    ):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(module)(*args)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("name", ["tiny-wavlm", "tiny-whisper"])
def test_compiled_frontend_takes_layerdrop_and_masks_as_inputs(name):
    """LayerDrop and SpecAugment are drawn on the host before the compiled graph (one graph break) and
    enter it as tensors: new draws never recompile it, and it computes what the eager frontend does with
    the same draws (a dropped layer's output is its input; its weights get a zero gradient)."""
    from torch._dynamo.utils import counters

    model = tiny_model(name)
    model.configure_training(trainable="transformer", layerdrop=0.5, mask_time_prob=0.4)
    for m in model.frontend.encoder.modules():  # no dropout, so that the two runs can be compared
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for attr in ("dropout", "activation_dropout", "attention_dropout"):  # rates kept as floats
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)
    compiled = copy.deepcopy(model)
    torch._dynamo.reset()
    counters.clear()
    compiled.frontend.compile(backend="aot_eager", dynamic=False)
    wav, trained = torch.randn(3, 6000), [n for n, p in model.frontend.named_parameters() if p.requires_grad]
    kept = []
    for step in range(6):
        outputs = []
        for m in (model, compiled):
            random.seed(step)
            np.random.seed(step)
            states, _ = m.frontend.train()(wav)
            states.square().mean().backward()
            grads = {n: p.grad for n, p in m.frontend.named_parameters() if p.requires_grad}
            outputs.append((states.detach(), grads))
            m.zero_grad(set_to_none=True)
        random.seed(step)
        kept.append(model.frontend._training_draws(3, 6000, None).keep)
        (a, ga), (b, gb) = outputs
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        for n in trained:  # eager: no gradient for a skipped layer; compiled: a zero one
            torch.testing.assert_close(
                gb[n], ga[n] if ga[n] is not None else torch.zeros_like(gb[n]), rtol=1e-4, atol=1e-6, msg=n
            )
        if step == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert len(set(kept)) > 1  # the draws changed between steps...
    assert counters["stats"]["unique_graphs"] == graphs  # ...and nothing was traced again
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.frontend)(wav)
    assert explained.graph_break_count == 1 and "_training_draws" in explained.break_reasons[0].reason


def test_stage_compile_mode_reaches_every_compiled_part(monkeypatch):
    """stage.compile_mode goes to torch.compile for the model's parts and the head; the config offers
    exactly torch's modes, and a training batch marks a new CUDA-graph iteration only in their modes."""
    from mlsv.config import StageConfig, from_dict
    from mlsv.models import SubCenterAAMSoftmax

    seen = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append((type(self).__name__, kw)))
    loop.compile_for_training(tiny_model(), SubCenterAAMSoftmax(16, 10), backend="inductor", mode="reduce-overhead")
    assert [name for name, _ in seen] == ["WavLMFrontend", "LayerAttentivePooling", "ASTP", "SubCenterAAMSoftmax"]
    assert all(kw["mode"] == "reduce-overhead" for _, kw in seen)
    field = StageConfig.__dataclass_fields__["compile_mode"]
    assert field.metadata["choices"] == runtime.COMPILE_MODES
    with pytest.raises(ValueError, match="reduce-overhead"):
        from_dict(StageConfig, {"compile_mode": "fast"})
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    for mode in runtime.COMPILE_MODES:
        runtime.step_begin(mode)
    assert len(marks) == len(runtime.CUDAGRAPH_MODES) == 2


# -- stage runs ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from mlsv.data.synthetic import make_synthetic_corpus

    return make_synthetic_corpus(
        tmp_path_factory.mktemp("corpus"),
        n_speakers=6,
        utts_per_speaker=4,
        n_validation_speakers=3,
        n_test_speakers=2,
        max_seconds=2.0,
        seed=3,
    )


def _sets(corpus, **extra) -> list[str]:
    sets = {
        "data.train_manifest": corpus.train,
        "data.validation_manifest": corpus.validation,
        "data.validation_trials": corpus.validation_trials,
        "data.batch_size": 6,
        "data.crop_seconds": 0.5,
        "data.num_workers": 0,
        "augment.probability": 0.0,
        "model.encoder": "tiny-wavlm",
        "model.random_init": True,
        "model.lap_heads": 4,
        "model.lap_channels": 32,
        "model.embedding_size": 16,
        "stage.epochs": 1,
        "stage.steps_per_epoch": 2,
        "stage.mean_utterances": 8,
        "stage.attention": "eager",
        "log.progress": False,
        "optim.lr": 0.01,
        "optim.min_lr": 0.001,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def _train(corpus, out, **extra) -> Path:
    return loop.run_stage(load_config(None, _sets(corpus, **extra)), out)


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), "pt") as f:
        return sorted(f.keys())


def _spy_evaluation(monkeypatch) -> list[tuple[str, bool]]:
    """Records, for each validation and training-mean call, whether any module of the model it got would
    run compiled."""
    seen = []
    for name in ("validation_eer", "training_mean"):
        real = getattr(loop, name)

        def spy(model, *args, _real=real, _name=name, **kwargs):
            seen.append((_name, any(runtime.is_compiled(m) for m in model.modules())))
            return _real(model, *args, **kwargs)

        monkeypatch.setattr(loop, name, spy)
    return seen


def _rows(out: Path) -> list[dict]:
    import csv

    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def plain_run(corpus, tmp_path_factory):
    """The reference stage: eager modules, transformers' eager attention."""
    return _train(corpus, tmp_path_factory.mktemp("plain") / "out")


@pytest.mark.integration
def test_compiled_stage_trains_like_eager_and_saves_the_same_names(corpus, plain_run, tmp_path, monkeypatch):
    """stage.compile=true: the stage trains, validates (variable lengths, eagerly) and saves a model, head
    and checkpoint with exactly the plain run's names; aot_eager graphs also give its numbers."""
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "aot_eager")
    compiled_for = []
    real_compile, real_attention = loop.compile_for_training, runtime.set_attention
    attention_seen = []

    def spy_compile(model, head, backend=None, mode="default"):
        compiled_for.append((type(model).__name__, type(head).__name__, mode))
        return real_compile(model, head, backend, mode)

    def spy_attention(model, mode="sdpa", fused_qkv=None):
        attention_seen.append(mode)
        return real_attention(model, mode, fused_qkv)

    monkeypatch.setattr(loop, "compile_for_training", spy_compile)
    monkeypatch.setattr(runtime, "set_attention", spy_attention)
    evaluated = _spy_evaluation(monkeypatch)
    out = _train(corpus, tmp_path / "compiled", **{"stage.compile": True})
    assert compiled_for == [("MLSVModel", "SubCenterAAMSoftmax", "default")] and attention_seen == ["eager"]
    assert evaluated == [("validation_eer", False), ("training_mean", False)]
    assert (out / "COMPLETE").is_file()
    for name in ("model/model.safetensors", "head.safetensors"):
        assert _keys(out / name) == _keys(plain_run / name), name
    last = ckpt.checkpoint_dirs(out / "checkpoints")[-1]
    plain_last = ckpt.checkpoint_dirs(plain_run / "checkpoints")[-1]
    assert sorted(p.name for p in last.iterdir()) == sorted(p.name for p in plain_last.iterdir())
    for f in last.glob("*.safetensors"):
        assert _keys(f) == _keys(plain_last / f.name), f.name
    a = load_file(str(plain_run / "model/model.safetensors"))
    b = load_file(str(out / "model/model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    row, plain_row = _rows(out)[0], _rows(plain_run)[0]
    assert float(row["loss"]) == pytest.approx(float(plain_row["loss"]), rel=1e-5)
    assert row["validation_eer"]
    assert float(row["validation_eer"]) == pytest.approx(float(plain_row["validation_eer"]))
    config = json.loads((out / "model" / "config.json").read_text())
    assert len(config["training_mean"]) == 16


@pytest.mark.integration
def test_compiled_stage_resumes_a_plain_checkpoint(corpus, plain_run, tmp_path, monkeypatch):
    """A checkpoint written without compile loads into a compiled stage (strict names); training goes on."""
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "aot_eager")
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(plain_run / "checkpoints", out / "checkpoints")
    _train(corpus, out, **{"stage.compile": True, "stage.epochs": 2})
    rows = _rows(out)
    assert [int(r["epoch"]) for r in rows] == [2] and int(rows[0]["step"]) == 4
    assert _keys(out / "model/model.safetensors") == _keys(plain_run / "model/model.safetensors")


def test_stage_with_ema_and_compile_evaluates_the_average(corpus, tmp_path, monkeypatch):
    """The EMA copy of a compiled model runs eagerly and evaluates its own weights."""
    monkeypatch.setattr(loop, "COMPILE_BACKEND", "aot_eager")
    evaluated = _spy_evaluation(monkeypatch)
    out = _train(corpus, tmp_path / "ema", **{"stage.compile": True, "optim.ema_decay": 0.5})
    assert (out / "COMPLETE").is_file() and _rows(out)[0]["validation_eer"]
    assert evaluated == [("validation_eer", False), ("training_mean", False)]


@pytest.mark.slow
def test_inductor_compiled_stage_matches_eager(corpus, tmp_path):
    """stage.compile with inductor's generated kernels (about a minute on 2 CPU cores; no dropout, whose
    compiled RNG differs): the epoch's loss, the weight matrices, BatchNorm scales and variances and the
    head within rounding of the plain run. Biases that feed a BatchNorm or a softmax are left out: their
    gradient is zero in exact arithmetic, so Adam moves them by about +-lr on the sign of rounding noise in
    any two runs (plain ones too), and the BatchNorm running means follow them."""
    nodrop = {"model.lap_dropout": 0.0, "model.backend_dropout": 0.0}
    plain = _train(corpus, tmp_path / "plain", **nodrop)
    out = _train(corpus, tmp_path / "inductor", **{"stage.compile": True, **nodrop})
    assert float(_rows(out)[0]["loss"]) == pytest.approx(float(_rows(plain)[0]["loss"]), rel=1e-4)
    a, b = load_file(str(plain / "model/model.safetensors")), load_file(str(out / "model/model.safetensors"))
    assert a.keys() == b.keys()
    compared = {k for k in a if not k.endswith((".bias", ".running_mean"))}
    assert {"aggregation.proj_out.weight", "backend.embedding.weight", "aggregation.excite_bias"} <= compared
    for k in compared:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    torch.testing.assert_close(
        load_file(str(out / "head.safetensors"))["weight"],
        load_file(str(plain / "head.safetensors"))["weight"],
        rtol=1e-3,
        atol=1e-4,
    )


# -- the optimiser ---------------------------------------------------------------------------------------


def test_adam_runs_fused_on_a_gpu_only():
    """The stage optimiser asks for the fused Adam/AdamW kernel when the accelerator's device is a GPU."""
    cfg = load_config()
    groups = lambda: [{"params": [torch.nn.Parameter(torch.randn(3))], "lr": 1e-3}]  # noqa: E731
    for name in ("adam", "adamw"):
        cfg.optim.optimizer = name
        assert loop._optimizer(groups(), cfg, torch.device("cuda")).defaults["fused"] is True
        assert not loop._optimizer(groups(), cfg, torch.device("cpu")).defaults["fused"]
        assert not loop._optimizer(groups(), cfg).defaults["fused"]
    cfg.optim.optimizer = "sgd"
    assert isinstance(loop._optimizer(groups(), cfg, torch.device("cuda")), torch.optim.SGD)
