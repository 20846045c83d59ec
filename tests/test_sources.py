"""``datasets`` datasets as manifests (``hf:...`` sources) and the Kaldi / lhotse recipes, on small data made here."""

from __future__ import annotations

import gzip
import io
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli
from data_helpers import tone, voice, write_wav

from mlsv.data.manifest import iter_rows, load_manifest, speaker_labels
from mlsv.data.sources import SourceError, parse_source, resolve_source

datasets = pytest.importorskip("datasets")


def _flac(x: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="FLAC")
    return buf.getvalue()


def _audio_dataset(rows: list[dict]):
    """A Dataset whose ``audio`` column is an ``Audio()`` feature (as datasets on the hub have), built without
    torchcodec: the structs are cast, not encoded."""
    return datasets.Dataset.from_list(rows).cast_column("audio", datasets.Audio())


@pytest.fixture(scope="module")
def disk_dataset(tmp_path_factory):
    """A DatasetDict saved with save_to_disk: train (6 FLAC items in the rows, ClassLabel speakers, a
    session column, an utt column) and test (3 items named by path)."""
    root = tmp_path_factory.mktemp("hfds")
    train = []
    for i in range(6):
        x = tone(0.5 + 0.1 * i, 120 + 60 * (i % 3), seed=i)
        train.append(
            {"audio": {"bytes": _flac(x), "path": f"u{i}.flac"}, "spk": i % 3, "sess": f"v{i % 2}", "utt": f"u{i}"}
        )
    train_ds = _audio_dataset(train).cast_column("spk", datasets.ClassLabel(names=["ann", "bob", "cy"]))
    test = []
    for i in range(3):
        path = write_wav(root / "files" / f"t{i}.wav", voice(0.4 + 0.2 * i, seed=10 + i))
        test.append({"audio": str(path), "speaker": f"s{i % 2}"})
    test_ds = datasets.Dataset.from_list(test).cast_column("audio", datasets.Audio())
    datasets.DatasetDict({"train": train_ds, "test": test_ds}).save_to_disk(str(root / "ds"))
    return root / "ds"


def test_a_saved_dataset_reads_as_a_manifest(disk_dataset):
    spec = f"hf:{disk_dataset}?split=train&speaker=spk&session=sess&id=utt"
    rows = load_manifest(spec)
    assert list(rows["id"]) == [f"u{i}" for i in range(6)]
    assert list(rows["speaker"]) == ["ann", "bob", "cy"] * 2  # ClassLabel names, not numbers
    assert list(rows["session"]) == ["v0", "v1"] * 3
    np.testing.assert_allclose(rows["duration"], [0.5 + 0.1 * i for i in range(6)], atol=1e-4)
    assert set(rows["sample_rate"]) == {16000}
    # the audio stays encoded (FLAC bytes), decoded per item with soundfile
    x, rate = sf.read(io.BytesIO(rows[2]["audio"]), dtype="float32")
    np.testing.assert_allclose(x, tone(0.7, 240, seed=2), atol=1e-4)
    assert speaker_labels(spec) == {"ann": 0, "bob": 1, "cy": 2}
    assert [row["id"] for _, row in iter_rows(spec)] == list(rows["id"])
    assert "audio" not in next(iter_rows(spec))[1]  # iter_rows leaves the bytes alone
    # ids are row numbers when there is no id column (save_to_disk stored the files' bytes)
    test = load_manifest(f"hf:{disk_dataset}?split=test")
    assert list(test["id"]) == ["0", "1", "2"] and all(test["audio"])
    np.testing.assert_allclose(test["duration"], [0.4, 0.6, 0.8], atol=1e-4)


def test_a_streamed_source_is_split_across_processes(disk_dataset):
    spec = f"hf:{disk_dataset}?split=train&speaker=spk&id=utt"
    shares = [
        [row["id"] for row in load_manifest(spec, streaming=True, process_index=k, num_processes=2)] for k in range(2)
    ]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == [f"u{i}" for i in range(6)]


def test_source_errors_name_the_culprit(disk_dataset, tmp_path, monkeypatch):
    def error(spec):
        with pytest.raises(SourceError) as e:
            load_manifest(spec)
        return str(e.value)

    assert "splits ['test', 'train']: name one with ?split=NAME" in error(f"hf:{disk_dataset}")
    assert "unknown split 'dev'; the dataset has ['test', 'train']" in error(f"hf:{disk_dataset}?split=dev")
    message = error(f"hf:{disk_dataset}?split=train")
    assert "no speaker column 'speaker'" in message and "'spk'" in message and "?speaker=COLUMN" in message
    assert "no session column 'video'" in error(f"hf:{disk_dataset}?split=train&speaker=spk&session=video")
    assert "unknown key 'spk'" in error(f"hf:{disk_dataset}?split=train&spk=spk")
    assert "dataset folder" in error(f"hf:{tmp_path}/nothing?split=train") and "not found" in error(
        f"hf:{tmp_path}/nothing"
    )
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    message = error("hf:someone/not-cached?split=train")
    assert (
        "someone/not-cached is neither a dataset folder here nor a hub dataset in the local datasets cache" in message
    )
    assert str(tmp_path / "cache") in message
    # an item whose audio cannot be read is named by its row
    bad = _audio_dataset(
        [{"audio": {"bytes": _flac(tone(0.3)), "path": "ok.flac"}, "speaker": "a"}]
        + [{"audio": {"bytes": b"not audio at all", "path": "broken.flac"}, "speaker": "b"}]
    )
    bad.save_to_disk(str(tmp_path / "bad"))
    assert "row 1 (broken.flac)" in error(f"hf:{tmp_path / 'bad'}")


def test_a_hub_dataset_in_the_local_cache_is_read_offline(tmp_path, monkeypatch):
    """What load_dataset leaves in the cache for a hub id (``someone___tiny/CONFIG/VERSION/HASH``), made here
    from a local parquet file (no hub): the source reads it without the network."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    rows = [{"audio": {"bytes": _flac(tone(0.3 + 0.1 * i)), "path": f"{i}.flac"}, "speaker": f"s{i}"} for i in range(3)]
    _audio_dataset(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.load_dataset("parquet", data_files={"test": str(tmp_path / "d.parquet")}, cache_dir=str(cache))
    built = next((cache / "parquet").iterdir())
    shutil.copytree(built, cache / "someone___tiny" / "default")
    for f in (cache / "someone___tiny").rglob("parquet-*.arrow"):
        f.rename(f.with_name(f.name.replace("parquet-", "tiny-")))
    shutil.rmtree(cache / "parquet")
    manifest = load_manifest("hf:someone/tiny?config=default&split=test")
    assert list(manifest["speaker"]) == ["s0", "s1", "s2"]
    np.testing.assert_allclose(manifest["duration"], [0.3, 0.4, 0.5], atol=1e-4)


def test_source_specs_parse_and_resolve(tmp_path):
    src = parse_source("hf:data/vox?split=test&speaker=spk&session=video&id=utt")
    assert (src.path, src.split, src.speaker, src.session, src.id, src.audio) == (
        "data/vox",
        "test",
        "spk",
        "video",
        "utt",
        "audio",
    )
    assert str(src) == "hf:data/vox?split=test&speaker=spk&session=video&id=utt"
    (tmp_path / "data" / "vox").mkdir(parents=True)
    assert resolve_source("hf:data/vox?split=test", tmp_path) == f"hf:{tmp_path / 'data' / 'vox'}?split=test"
    assert resolve_source("hf:someone/vox?split=test", tmp_path) == "hf:someone/vox?split=test"  # a hub id
    with pytest.raises(SourceError, match="split given twice"):
        parse_source("hf:x?split=a&split=b")


def _as_dataset(manifest, folder):
    """The manifest's rows as a saved dataset: audio column from the files, the same order."""
    from mlsv.data.manifest import manifest_root, resolve_path

    root = manifest_root(manifest)
    rows = [
        {"audio": resolve_path(r["path"], root), "speaker": r["speaker"], "id": r["id"]} for _, r in iter_rows(manifest)
    ]
    datasets.Dataset.from_list(rows).cast_column("audio", datasets.Audio()).save_to_disk(str(folder))
    return f"hf:{folder}"


def test_training_crops_and_embeddings_from_a_source_match_the_manifest(small_corpus, model_dir, tmp_path):
    """The same rows as a saved dataset give the same training batches and the same embeddings."""
    import torch

    from mlsv.config import DataConfig
    from mlsv.data.loader import build_train_loader
    from mlsv.inference.evaluation import embed_manifest
    from mlsv.models.modeling_mlsv import MLSVModel

    spec = _as_dataset(small_corpus.train, tmp_path / "train_ds")
    labels = speaker_labels(small_corpus.train)
    assert speaker_labels(spec) == labels
    cfg = DataConfig(crop_seconds=0.5, batch_size=4, num_workers=0, speed_factors=[1.0, 0.9])
    batches = [
        list(build_train_loader(m, cfg, None, labels=labels, epoch=1, seed=3)) for m in (small_corpus.train, spec)
    ]
    assert len(batches[0]) == len(batches[1]) == 3
    for a, b in zip(*batches):
        torch.testing.assert_close(a["waveforms"], b["waveforms"])
        assert torch.equal(a["labels"], b["labels"])
    streamed = DataConfig(**{**cfg.__dict__, "streaming": True})
    stream = iter(build_train_loader(spec, streamed, None, labels=labels, epoch=0, seed=0))
    for _ in range(4):  # more batches than one pass holds: the stream repeats
        batch = next(stream)
        assert batch["waveforms"].shape == (4, 8000) and batch["labels"].max() < 2 * len(labels)
    model = MLSVModel.from_pretrained(model_dir).eval()
    test = _as_dataset(small_corpus.test, tmp_path / "test_ds")
    a = embed_manifest(model, small_corpus.test, progress=False)
    b = embed_manifest(model, test, progress=False)
    assert a.ids.tolist() == b.ids.tolist() and a.speakers.tolist() == b.speakers.tolist()
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)


def test_a_stage_trains_and_validates_on_sources(small_corpus, tiny_stage, tmp_path):
    """A stage config names its training and validation data as sources (a relative folder, against the
    config's)."""
    from conftest import metrics_rows

    from mlsv.config import load_config
    from mlsv.train.loop import run_stage

    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    _as_dataset(small_corpus.train, cfg_dir / "train_ds")
    _as_dataset(small_corpus.validation, cfg_dir / "val_ds")
    config = cfg_dir / "stage.yaml"
    config.write_text(tiny_stage.read_text())
    cfg = load_config(
        config,
        [
            "data.train_manifest=hf:train_ds",
            "data.validation_manifest=hf:val_ds",
            f"data.validation_trials={small_corpus.validation_trials}",
            "stage.epochs=1",
        ],
    )
    out = tmp_path / "run"
    run_stage(cfg, out, config_dir=cfg_dir)
    rows = metrics_rows(out)
    assert any(r.get("validation_eer") not in (None, "") for r in rows)
    assert json.loads((out / "labels.json").read_text()) == speaker_labels(small_corpus.train)


# -- Kaldi and lhotse -----------------------------------------------------------------------------------------


def _two_recordings(folder):
    """Two recordings (2.0 s and 1.5 s) of different voices."""
    a = write_wav(folder / "audio" / "recA.wav", voice(2.0, f0=130, seed=1))
    b = write_wav(folder / "audio" / "recB.wav", voice(1.5, f0=220, seed=2))
    return a, b


def test_prepare_kaldi_with_segments_and_trials(tmp_path, capsys):
    a, b = _two_recordings(tmp_path)
    data = tmp_path / "kaldi"
    data.mkdir()
    (data / "wav.scp").write_text(f"recA {a}\nrecB {b}\n")
    (data / "segments").write_text("a-1 recA 0.0 0.8\na-2 recA 1.0 2.0\nb-1 recB 0.25 -1\nb-2 recB 0 1.5\n")
    (data / "utt2spk").write_text("a-1 ann\na-2 ann\nb-1 bob\nb-2 bob\n")
    (data / "trials").write_text("a-1 a-2 target\na-1 b-1 nontarget\n")
    rc, err = run_cli(["prepare", "kaldi", str(data), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert rc == 0, err
    rows = {r["id"]: r for _, r in iter_rows(tmp_path / "out" / "manifest.jsonl")}
    assert {u: (r["speaker"], r["session"]) for u, r in rows.items()} == {
        "a-1": ("ann", "recA"),
        "a-2": ("ann", "recA"),
        "b-1": ("bob", "recB"),
        "b-2": ("bob", "recB"),
    }
    assert {u: r["duration"] for u, r in rows.items()} == {"a-1": 0.8, "a-2": 1.0, "b-1": 1.25, "b-2": 1.5}
    cut, _ = sf.read(tmp_path / "out" / rows["a-2"]["path"], dtype="float32")
    whole, _ = sf.read(a, dtype="float32")
    np.testing.assert_array_equal(cut, whole[16000:32000])  # lossless: PCM 16 in, FLAC 16 out
    assert (tmp_path / "out" / "trials.txt").read_text() == "1 a-1 a-2\n0 a-1 b-1\n"
    assert list(load_manifest(tmp_path / "out" / "manifest.jsonl")["id"]) == ["a-1", "a-2", "b-1", "b-2"]


def test_prepare_kaldi_whole_files_and_errors(tmp_path, capsys):
    a, b = _two_recordings(tmp_path)
    data = tmp_path / "kaldi"
    data.mkdir()
    (data / "wav.scp").write_text(f"recA {a}\nrecB {b}\n")
    (data / "utt2spk").write_text("recA ann\nrecB bob\n")
    rc, err = run_cli(["prepare", "kaldi", str(data), "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert rc == 0, err
    rows = [r for _, r in iter_rows(tmp_path / "out" / "manifest.jsonl")]
    assert [(r["id"], r["duration"], "session" in r) for r in rows] == [("recA", 2.0, False), ("recB", 1.5, False)]
    assert not (tmp_path / "out" / "trials.txt").exists() and not (tmp_path / "out" / "segments").exists()
    (data / "wav.scp").write_text(f"recA {a}\nrecB sox {b} -t wav - |\n")
    rc, err = run_cli(["prepare", "kaldi", str(data), "--out", str(tmp_path / "o2")], capsys)
    assert rc != 0 and "wav.scp:2: 'recB' is a command" in err
    (data / "wav.scp").write_text(f"recA {a}\n")
    rc, err = run_cli(["prepare", "kaldi", str(data), "--out", str(tmp_path / "o3")], capsys)
    assert rc != 0 and "utt2spk:2: utterance 'recB' is not in wav.scp" in err
    (data / "wav.scp").write_text(f"recA {a}\nrecB {b}\n")
    (data / "trials").write_text("recA recB maybe\n")
    rc, err = run_cli(["prepare", "kaldi", str(data), "--out", str(tmp_path / "o4")], capsys)
    assert rc != 0 and "trials:1: label 'maybe' is neither target nor nontarget" in err
    rc, err = run_cli(["prepare", "kaldi", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o5")], capsys)
    assert rc != 0 and "wav.scp not found" in err


def test_prepare_lhotse_from_gzipped_manifests(tmp_path, capsys):
    a, b = _two_recordings(tmp_path)
    stereo = tmp_path / "audio" / "stereo.wav"
    sf.write(stereo, np.stack([voice(1.0, f0=150, seed=5), voice(1.0, f0=300, seed=6)], 1), 16000, subtype="PCM_16")

    def recording(rid, path, seconds, channels=(0,)):
        return {
            "id": rid,
            "sources": [{"type": "file", "channels": list(channels), "source": str(path)}],
            "sampling_rate": 16000,
            "num_samples": int(seconds * 16000),
            "duration": seconds,
        }

    recs = [recording("recA", a, 2.0), recording("recB", b, 1.5), recording("st", stereo, 1.0, (0, 1))]
    sups = [
        {"id": "a-1", "recording_id": "recA", "start": 0.5, "duration": 1.0, "channel": 0, "speaker": "ann"},
        {"id": "b-all", "recording_id": "recB", "start": 0.0, "duration": 1.5, "channel": 0, "speaker": "bob"},
        {"id": "st-r", "recording_id": "st", "start": 0.0, "duration": 1.0, "channel": 1, "speaker": "cy"},
    ]
    with gzip.open(tmp_path / "recordings.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    (tmp_path / "supervisions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sups))
    argv = ["prepare", "lhotse", "--recordings", str(tmp_path / "recordings.jsonl.gz")]
    argv += ["--supervisions", str(tmp_path / "supervisions.jsonl"), "--out", str(tmp_path / "out"), "--no-progress"]
    rc, err = run_cli(argv, capsys)
    assert rc == 0, err
    rows = {r["id"]: r for _, r in iter_rows(tmp_path / "out" / "manifest.jsonl")}
    assert {u: (r["speaker"], r["session"], r["duration"]) for u, r in rows.items()} == {
        "a-1": ("ann", "recA", 1.0),
        "b-all": ("bob", "recB", 1.5),
        "st-r": ("cy", "st", 1.0),
    }
    out = tmp_path / "out"
    assert (out / rows["b-all"]["path"]).resolve() == b.resolve()  # a whole recording: its own file, not cut
    right, _ = sf.read(out / rows["st-r"]["path"], dtype="float32")
    both, _ = sf.read(stereo, dtype="float32")
    assert right.ndim == 1
    np.testing.assert_array_equal(right, both[:, 1])  # the supervision's channel alone
    sups[0]["recording_id"] = "recZ"
    (tmp_path / "supervisions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sups))
    rc, err = run_cli(argv[:-1] + ["--no-progress"], capsys)
    assert rc != 0 and "supervisions.jsonl:1: recording 'recZ' is not in" in err
    sups[0]["recording_id"], sups[0]["speaker"] = "recA", None
    (tmp_path / "supervisions.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sups))
    rc, err = run_cli(argv, capsys)
    assert rc != 0 and "supervisions.jsonl:1: supervision 'a-1' has no speaker" in err


def test_mlsv_evaluate_and_embed_take_a_source(model_dir, eval_inputs, tmp_path, capsys):
    """The evaluation reads its utterances from a source, and a rerun reuses the embeddings of the same
    dataset files."""
    manifest, trials = eval_inputs
    spec = _as_dataset(manifest, tmp_path / "ds")
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(model_dir), "--manifest", spec, "--trials", str(trials), "--out", str(out)]
    rc, err = run_cli(argv, capsys)
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["list"]["n_trials"] == 4
    made = (out / "embeddings.npz").stat().st_mtime_ns
    rc, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert (out / "embeddings.npz").stat().st_mtime_ns == made  # reused: same model, dataset and settings
    embed = ["embed", "--model", str(model_dir), "--manifest", spec, "--out", str(tmp_path / "e.npz")]
    rc, err = run_cli(embed, capsys)
    assert rc == 0, err
    emb = np.load(tmp_path / "e.npz")
    assert sorted(emb["ids"].tolist()) == ["a1", "a2", "b1", "b2"]
    rc, err = run_cli(argv[:4] + [spec + "?speaker=nobody"] + argv[5:], capsys)
    assert rc != 0 and "no speaker column 'nobody'" in err


def test_a_recipe_checks_its_evaluation_sources_before_training(disk_dataset, tmp_path):
    import yaml

    from mlsv.config import ConfigError
    from mlsv.recipe import check_evaluations, load_recipe

    def recipe(manifest: str):
        (tmp_path / "t.txt").write_text("1 u0 u1\n")
        evaluate = {"model": "stage1", "manifest": manifest, "trials": [str(tmp_path / "t.txt")]}
        steps = [{"name": "stage1", "train": "missing_stage.yaml"}, {"name": "eval", "evaluate": evaluate}]
        (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "steps": steps}))
        return load_recipe(tmp_path / "recipe.yaml")

    check_evaluations(recipe(f"hf:{disk_dataset}?split=train&speaker=spk&id=utt"), 0)
    with pytest.raises(ConfigError, match=r"step 'eval': manifest: hf:.*unknown split 'dev'"):
        check_evaluations(recipe(f"hf:{disk_dataset}?split=dev"), 0)


def test_a_folder_of_parquet_files_with_items_named_by_path(tmp_path):
    """A folder of data files datasets reads (not save_to_disk), whose Audio items are paths (no bytes):
    the files are read where they are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [write_wav(tmp_path / "wav" / f"{i}.wav", voice(0.5 + 0.25 * i, seed=i)) for i in range(3)]
    audio = pa.array(
        [{"bytes": None, "path": str(p)} for p in paths], pa.struct({"bytes": pa.binary(), "path": pa.string()})
    )
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"audio": audio, "who": ["x", "y", "x"]}), tmp_path / "data" / "train.parquet")
    spec = f"hf:{tmp_path / 'data'}?split=train&speaker=who"
    rows = load_manifest(spec)
    assert list(rows["path"]) == [str(p) for p in paths] and list(rows["audio"]) == [None] * 3
    np.testing.assert_allclose(rows["duration"], [0.5, 0.75, 1.0], atol=1e-4)
    assert speaker_labels(spec) == {"x": 0, "y": 1}
    paths[1].unlink()  # a file gone since: named with its row
    with pytest.raises(SourceError, match=r"row 1 \(.*1\.wav\)"):
        # items named by path: their headers are not cached beside the dataset (a new process would read them
        # again; this one keeps a source's rows by its spec, so the same source is spelt another way here)
        load_manifest(spec + "&audio=audio")
