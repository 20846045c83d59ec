"""Training and evaluation streams: partial reads, speed labels, seeding, process split, bad files."""

from __future__ import annotations

import dataclasses
import itertools
import sys

import numpy as np
import pytest
import torch
from data_helpers import tiny_corpus, tone, write_wav

import mlsv.data.loader as loader_mod
from mlsv.config import AugmentConfig, DataConfig
from mlsv.data.audio import AudioError, MissingDependencyError
from mlsv.data.loader import (
    TrainCrops,
    build_eval_loader,
    build_train_loader,
    chunk_shares,
    chunk_spans,
    label_offset,
    plan_eval_batches,
    read_crop,
    speed_perturb_classes,
    utterance_subset,
)
from mlsv.data.manifest import iter_rows, load_manifest, speaker_labels, write_manifest


def _cfg(**kw) -> DataConfig:
    base = {"batch_size": 4, "num_workers": 0, "crop_seconds": 0.5, "speed_factors": [1.0]}
    return DataConfig(**{**base, **kw})


def test_speed_perturb_labels():
    paper = [1.0, 1.0, 1.0, 0.9, 1.1]
    assert speed_perturb_classes(100, paper) == 300
    assert [label_offset(f, paper) for f in (1.0, 0.9, 1.1)] == [0, 1, 2]
    assert label_offset(1.1, [1.1, 1.0, 0.9]) == 2  # order does not depend on how the list is written
    assert speed_perturb_classes(7, [1.0]) == 7
    with pytest.raises(ValueError, match="not among"):
        label_offset(1.2, paper)


def test_speed_perturbed_crops_get_shifted_labels_and_keep_length(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=3, utts=4)
    labels = speaker_labels(manifest)
    dl = build_train_loader(manifest, _cfg(speed_factors=[1.0, 0.9, 1.1]), None, labels=labels, epoch=0, seed=0)
    seen = torch.cat([b["labels"] for b in dl])
    assert {b["waveforms"].shape for b in dl} == {(4, 8000)}
    assert seen.max() < speed_perturb_classes(3, [1.0, 0.9, 1.1]) and seen.max() >= 3


def test_crop_reads_only_what_it_needs(tmp_path, monkeypatch):
    path = write_wav(tmp_path / "long.wav", tone(20.0))
    calls = []
    real = loader_mod.read_audio

    def spy(source, start=0, frames=-1, **kw):
        calls.append((start, frames))
        return real(source, start, frames, **kw)

    monkeypatch.setattr(loader_mod, "read_audio", spy)
    rng = np.random.default_rng(0)
    x = read_crop(str(path), 320000, 16000, 32000, 16000, rng)
    assert x.shape == (32000,) and calls[-1][1] == 32000
    y = read_crop(str(path), 320000, 16000, 32000, 16000, rng, factor=1.1)
    assert y.shape == (32000,) and calls[-1][1] == 35200  # crop * factor, then resampled to the crop
    short = write_wav(tmp_path / "short.wav", tone(0.3))
    z = read_crop(str(short), 4800, 16000, 16000, 16000, rng)
    np.testing.assert_array_equal(z[4800:9600], z[:4800])  # wrap-padded


def test_train_stream_is_seeded_and_reshuffled_each_epoch(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=4, utts=4)
    labels = speaker_labels(manifest)

    def epoch(e, seed=0):
        dl = build_train_loader(manifest, _cfg(), None, labels=labels, epoch=e, seed=seed)
        return [b for b in dl]

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert len(a) == 4
    for x, y in zip(a, b):
        torch.testing.assert_close(x["waveforms"], y["waveforms"])
        assert torch.equal(x["labels"], y["labels"])
    assert not all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, c))


def test_a_resumed_epoch_starts_at_its_batch_without_decoding_the_earlier_ones(tmp_path, monkeypatch):
    """Each crop draws from a generator of its own (seed, epoch, process, place in the share): the stream
    is the same for any number of loader workers, and ``start_batch`` gives exactly the rest of the
    epoch, augmented and with bad files refilled as before, decoding nothing before it."""
    from mlsv.data.synthetic import make_synthetic_corpus

    c = make_synthetic_corpus(
        tmp_path / "syn",
        n_speakers=3,
        utts_per_speaker=6,
        n_validation_speakers=0,
        n_test_speakers=0,
        bank_files=1,
        bank_seconds=3.0,
        n_rirs=2,
        max_seconds=2.0,
    )
    rows = [{**r, "path": str(c.root / r["path"])} for _, r in iter_rows(c.train)]
    (tmp_path / "broken.wav").write_bytes(b"RIFF....garbage")
    for i in (2, 9, 15):
        rows[i] = {**rows[i], "path": str(tmp_path / "broken.wav")}
    manifest = write_manifest(rows, tmp_path / "bad.jsonl")
    labels = speaker_labels(manifest)
    aug = AugmentConfig(probability=1.0, noise_manifest=str(c.noise), rir_manifest=str(c.rirs))
    cfg = _cfg(batch_size=3, speed_factors=[1.0, 0.9, 1.1])

    def batches(workers, start=0):
        dl = build_train_loader(
            manifest,
            dataclasses.replace(cfg, num_workers=workers),
            aug,
            labels=labels,
            epoch=1,
            seed=5,
            start_batch=start,
        )
        out = list(dl)
        assert len(out) == len(dl)
        return out, dl.num_bad_files

    whole, bad = batches(0)
    assert len(whole) == 6 and bad > 0
    for other in (batches(1)[0], batches(2)[0]):
        for x, y in zip(whole, other, strict=True):
            assert torch.equal(x["labels"], y["labels"]) and torch.equal(x["waveforms"], y["waveforms"])
    ids = _spy_crops(monkeypatch)
    for start, workers in ((1, 0), (4, 2), (5, 2), (6, 0)):
        rest, _ = batches(workers, start)
        assert len(rest) == 6 - start
        for x, y in zip(whole[start:], rest, strict=True):
            assert torch.equal(x["labels"], y["labels"]) and torch.equal(x["waveforms"], y["waveforms"])
    ids.clear()
    rest, rest_bad = batches(0, 4)
    assert len(ids) == 2 * 3 + rest_bad  # the last two batches' crops and their refills, nothing before


def test_two_processes_get_disjoint_shares_covering_the_data(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=3, utts=4)
    rows = load_manifest(manifest)
    labels = speaker_labels(manifest)
    shares = [TrainCrops(rows, labels, _cfg(), epoch=2, seed=1, process_index=p, num_processes=2) for p in range(2)]
    items = [set(s.worker_items(0, 1).tolist()) for s in shares]
    assert not items[0] & items[1] and items[0] | items[1] == set(range(len(rows)))
    workers = [set(shares[0].worker_items(w, 2).tolist()) for w in range(2)]
    assert not workers[0] & workers[1] and workers[0] | workers[1] == items[0]
    dl = build_train_loader(
        manifest, _cfg(batch_size=4), None, labels=labels, epoch=0, seed=0, process_index=1, num_processes=2
    )
    assert {b["waveforms"].shape[0] for b in dl} == {2}


def test_bad_files_are_skipped_and_counted(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=2, utts=4)
    rows = [r for _, r in iter_rows(manifest)]
    (tmp_path / "broken.wav").write_bytes(b"RIFF....garbage")
    rows[3] = {**rows[3], "path": "broken.wav"}
    rows[5] = {**rows[5], "path": "gone.wav"}
    bad_manifest = write_manifest(rows, tmp_path / "bad.jsonl")
    labels = speaker_labels(bad_manifest)
    dl = build_train_loader(bad_manifest, _cfg(batch_size=2), None, labels=labels, epoch=0, seed=0)
    batches = list(dl)
    assert len(batches) == len(dl) == 4  # slots refilled: every process keeps the same number of batches
    assert dl.num_bad_files == 2 and any("broken.wav" in b for b in dl.bad_files)
    strict = build_train_loader(bad_manifest, _cfg(batch_size=2, strict=True), None, labels=labels, epoch=0, seed=0)
    with pytest.raises(AudioError):
        list(strict)


def test_workers_and_cpu_augmentation(tmp_path):
    from mlsv.data.synthetic import make_synthetic_corpus

    c = make_synthetic_corpus(
        tmp_path / "syn",
        n_speakers=2,
        utts_per_speaker=4,
        n_validation_speakers=0,
        n_test_speakers=0,
        bank_files=1,
        bank_seconds=3.0,
        n_rirs=2,
        max_seconds=2.0,
    )
    labels = speaker_labels(c.train)
    aug = AugmentConfig(probability=1.0, noise_manifest=str(c.noise), rir_manifest=str(c.rirs))
    dl = build_train_loader(c.train, _cfg(batch_size=2, num_workers=2), aug, labels=labels, epoch=0, seed=0)
    batches = list(dl)
    assert len(batches) == len(dl) == 4
    clean = list(
        build_train_loader(
            c.train, _cfg(batch_size=2, num_workers=2), AugmentConfig(where="device"), labels=labels, epoch=0, seed=0
        )
    )
    assert not torch.equal(batches[0]["waveforms"], clean[0]["waveforms"])


def _spy_crops(monkeypatch) -> list[str]:
    """The ids TrainCrops crops from, in order (appended to the returned list)."""
    ids, real = [], TrainCrops._crop

    def spy(self, row, rng):
        ids.append(row["id"])
        return real(self, row, rng)

    monkeypatch.setattr(TrainCrops, "_crop", spy)
    return ids


def test_streaming_train_stream_repeats_with_a_new_shuffle_each_pass(tmp_path, monkeypatch):
    """A stream shorter than the epoch's steps starts another pass instead of running dry: one process
    would train a short epoch, and with several the one that ran dry would leave the others waiting."""
    manifest = tiny_corpus(tmp_path, speakers=3, utts=4)  # 12 rows: 3 batches of 4 per pass
    labels = speaker_labels(manifest)
    ids = _spy_crops(monkeypatch)

    def first_batches(n, epoch=0, start=0):
        dl = build_train_loader(
            manifest, _cfg(streaming=True), None, labels=labels, epoch=epoch, seed=0, start_batch=start
        )
        return list(itertools.islice(dl, n))

    batches = first_batches(7)
    assert len(batches) == 7 and {b["waveforms"].shape for b in batches} == {(4, 8000)}
    passes = [ids[:12], ids[12:24]]
    assert sorted(passes[0]) == sorted(passes[1]) == sorted(r["id"] for _, r in iter_rows(manifest))
    assert passes[0] != passes[1]  # each pass its own shuffle
    first_run = ids[:28]
    ids.clear()
    again = first_batches(7)  # reproducible, as a resumed run needs
    assert ids[:28] == first_run
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(batches, again))
    resumed = first_batches(2, start=5)  # a resumed epoch: read through (a stream cannot skip), then dropped
    assert all(torch.equal(a["waveforms"], b["waveforms"]) for a, b in zip(batches[5:], resumed, strict=True))
    ids.clear()
    first_batches(3, epoch=1)
    assert ids[:12] != passes[0] and ids[:12] != passes[1]


def test_uneven_shards_give_every_process_the_steps_it_is_asked_for(tmp_path, monkeypatch):
    """Shards of 3/3/3/2 rows over 2 processes of 2 loader workers: every worker's stream repeats."""
    import datasets

    from mlsv.data.shards import write_shards

    # datasets pauses 5 s after each pass over interleaved parquet shards (an arrow workaround)
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)

    rows = [r for _, r in iter_rows(tiny_corpus(tmp_path, speakers=3, utts=4))][:11]
    manifest = write_manifest(rows, tmp_path / "eleven.jsonl")
    write_shards(manifest, tmp_path / "shards", rows_per_shard=3, progress=False)
    cfg = _cfg(streaming=True, num_workers=2)
    for process in range(2):
        dl = build_train_loader(
            tmp_path / "shards",
            cfg,
            None,
            labels=speaker_labels(manifest),
            epoch=0,
            seed=0,
            process_index=process,
            num_processes=2,
        )
        assert dl.num_workers == 2
        batches = list(itertools.islice(dl, 8))
        assert len(batches) == 8 and {b["waveforms"].shape for b in batches} == {(2, 8000)}


def test_streaming_train_stream_that_yields_nothing_raises(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=2, utts=2)
    labels = speaker_labels(manifest)
    empty = load_manifest(manifest, streaming=True).filter(lambda row: False)
    with pytest.raises(ValueError, match="training stream of process 0 holds no rows"):
        next(iter(TrainCrops(empty, labels, _cfg(streaming=True))))
    broken = write_manifest([{**r, "path": "gone.wav"} for _, r in iter_rows(manifest)], tmp_path / "gone.jsonl")
    dl = build_train_loader(broken, _cfg(streaming=True), None, labels=labels, epoch=0, seed=0)
    with pytest.raises(AudioError, match=r"every file of the training stream of process 0 failed .*gone\.wav"):
        next(iter(dl))


def test_max_utterances_is_a_seeded_subset_of_every_speaker(tmp_path):
    """Prepared manifests are sorted by speaker: the first rows would hold only the first speakers."""
    manifest = tiny_corpus(tmp_path, speakers=4, utts=4)
    labels = speaker_labels(manifest)
    rows = [r["id"] for _, r in iter_rows(manifest)]

    def kept(seed, epoch=0, process_index=0):
        dl = build_train_loader(
            manifest,
            _cfg(max_utterances=8, batch_size=2),
            None,
            labels=labels,
            epoch=epoch,
            seed=seed,
            process_index=process_index,
            num_processes=2,
        )
        return list(dl.dataset.rows["id"])

    subset = kept(seed=0)
    assert len(subset) == 8 and subset == [r for r in rows if r in set(subset)]  # in manifest order
    assert len({uid.split("/")[0] for uid in subset}) > 2  # the first 8 rows hold 2 speakers
    assert kept(seed=0, epoch=3, process_index=1) == subset  # every epoch and process agrees
    assert kept(seed=1) != subset
    np.testing.assert_array_equal(utterance_subset(16, 8, 0), utterance_subset(16, 8, 0))
    assert len(utterance_subset(5, 8, 0)) == 5


def test_missing_pyav_stops_training_and_evaluation_rather_than_skipping(tmp_path, monkeypatch):
    """Without PyAV every m4a file fails alike: skipping them would train on what is left, or nothing."""
    manifest = tiny_corpus(tmp_path, speakers=2, utts=4)
    rows = [r for _, r in iter_rows(manifest)]
    (tmp_path / "vox2.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(64))
    rows[1] = {**rows[1], "path": "vox2.m4a"}
    mixed = write_manifest(rows, tmp_path / "mixed.jsonl")
    monkeypatch.setitem(sys.modules, "av", None)  # import av fails
    message = r"vox2\.m4a: decoding m4a/AAC needs PyAV.*\.\[m4a\].*--convert-dir"
    for streaming in (False, True):
        dl = build_train_loader(
            mixed, _cfg(batch_size=2, streaming=streaming), None, labels=speaker_labels(mixed), epoch=0, seed=0
        )
        with pytest.raises(MissingDependencyError, match=message):
            list(itertools.islice(dl, 8))
        assert dl.num_bad_files == 0
    with pytest.raises(AudioError, match=message):
        list(build_eval_loader(mixed, batch_seconds=4.0, skip_bad=True))


def test_chunk_spans_are_overlapping_windows_of_the_chunk_length():
    np.testing.assert_array_equal(chunk_spans(16000, 16000, 0.0), [[0, 16000]])
    np.testing.assert_array_equal(chunk_spans(16000, 16000, 1.0), [[0, 16000]])  # not longer than a chunk
    # 3.3 s in 1 s windows: four windows of exactly 1 s from 0 to the end, 0.77 s apart (0.23 s overlap)
    np.testing.assert_array_equal(
        chunk_spans(52800, 16000, 1.0), [[0, 16000], [12267, 28267], [24533, 40533], [36800, 52800]]
    )
    spans = chunk_spans(212800, 16000, 5.0)  # 13.3 s: three windows of 5 s, no 3.3 s tail
    assert len(spans) == 3 and set(spans[:, 1] - spans[:, 0]) == {80000}
    assert spans[0, 0] == 0 and spans[-1, 1] == 212800 and (np.diff(spans[:, 0]) <= 80000).all()  # covered
    # the counted fractions: the utterance's 13.3 s divided equally, the overlap counted once
    shares = chunk_shares(spans)
    assert (spans[:, 1] - spans[:, 0]) @ shares == pytest.approx(212800)
    np.testing.assert_allclose(chunk_shares(chunk_spans(212800, 16000, 0.0)), [1.0])
    plan = plan_eval_batches(["u"], [13.3], batch_seconds=100.0, chunk_seconds=5.0)
    assert sorted((start, start + frames) for *_, start, frames in plan[0]) == [tuple(s) for s in spans]


def test_eval_loader_pads_sorts_chunks_and_splits(tmp_path):
    manifest = tiny_corpus(tmp_path, speakers=3, utts=3, seconds=(0.5, 3.0))
    rows = {r["id"]: r for _, r in iter_rows(manifest)}
    batches = list(build_eval_loader(manifest, batch_seconds=4.0))
    assert sorted(i for b in batches for i in b["ids"]) == sorted(rows)
    first = batches[0]
    assert first["attention_mask"].sum(1).tolist() == [round(d * 16000) for d in first["durations"].tolist()]
    assert first["waveforms"].shape[0] * first["waveforms"].shape[1] <= 4.0 * 16000 or len(first["ids"]) == 1
    lengths = [b["attention_mask"].sum(1).max().item() for b in batches]
    assert lengths == sorted(lengths, reverse=True)
    chunked = list(build_eval_loader(manifest, batch_seconds=4.0, chunk_seconds=1.0))
    total = {}
    for b in chunked:
        assert b["durations"].max() <= 1.0 + 1e-6
        for uid, d in zip(b["ids"], b["durations"].tolist()):
            total[uid] = total.get(uid, 0.0) + d
    assert all(abs(total[u] - rows[u]["duration"]) < 1e-3 for u in rows)
    shares = [
        {i for b in build_eval_loader(manifest, batch_seconds=2.0, process_index=p, num_processes=2) for i in b["ids"]}
        for p in range(2)
    ]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(rows)


def _with_bad_rows(tmp_path, manifest, bad: dict[int, str]):
    """The manifest with rows ``i`` pointing at broken files (``"nan"``: finite-looking WAV of NaNs)."""
    rows = [r for _, r in iter_rows(manifest)]
    (tmp_path / "broken.wav").write_bytes(b"RIFF....garbage")
    write_wav(tmp_path / "nan.wav", np.full(8000, np.nan, dtype=np.float32), subtype="FLOAT")
    for i, name in bad.items():
        rows[i] = {**rows[i], "path": f"{name}.wav"}
    return write_manifest(rows, tmp_path / "bad.jsonl")


def test_nan_audio_is_an_undecodable_file(tmp_path):
    path = write_wav(tmp_path / "nan.wav", np.r_[np.zeros(100), np.inf].astype(np.float32), subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: NaN or infinite samples"):
        loader_mod.read_audio(str(path))


def test_every_skipped_file_is_counted_and_no_dropped_batch_is_decoded(tmp_path, monkeypatch):
    """Each worker reads whole batches only: the partial batch the loader drops is never decoded, so no
    skipped file is reported with it and lost from the count."""
    manifest = _with_bad_rows(tmp_path, tiny_corpus(tmp_path, speakers=3, utts=5), {1: "broken", 6: "nan"})
    attempts = []
    real = TrainCrops._crop

    def spy(self, row, rng):
        attempts.append(row["id"])
        return real(self, row, rng)

    monkeypatch.setattr(TrainCrops, "_crop", spy)
    dl = build_train_loader(manifest, _cfg(batch_size=4), None, labels=speaker_labels(manifest), epoch=1, seed=3)
    crops = sum(len(b["labels"]) for b in dl)
    assert crops == len(dl) * 4 == 12  # 15 utterances: three whole batches
    assert len(attempts) == crops + dl.num_bad_files


@pytest.mark.parametrize("workers", [0, 1])
def test_eval_loader_names_a_bad_file_or_skips_it(tmp_path, workers):
    manifest = _with_bad_rows(tmp_path, tiny_corpus(tmp_path, speakers=2, utts=3), {2: "nan"})
    with pytest.raises(AudioError, match=r"nan.wav: NaN or infinite samples$"):  # not a worker's traceback
        list(build_eval_loader(manifest, batch_seconds=4.0, num_workers=workers))
    dl = build_eval_loader(manifest, batch_seconds=4.0, num_workers=workers, skip_bad=True)
    ids = [i for b in dl for i in b["ids"]]
    assert len(ids) == 5
    assert len(dl.bad_files) == 1 and dl.bad_files[0].endswith("nan.wav")


def test_a_sample_rate_the_file_does_not_have_is_a_bad_file(tmp_path):
    """Crop offsets and chunk bounds come from the manifest's rate: a file at another rate is refused
    (skipped and counted in training), not read at the wrong place and length."""
    manifest = tiny_corpus(tmp_path, speakers=2, utts=4)
    rows = [r for _, r in iter_rows(manifest)]
    rows[2] = {**rows[2], "sample_rate": 8000}
    wrong = write_manifest(rows, tmp_path / "wrong.jsonl")
    with pytest.raises(AudioError, match="sample rate 16000 Hz, but the manifest says 8000 Hz"):
        list(build_eval_loader(wrong, batch_seconds=4.0))
    dl = build_train_loader(wrong, _cfg(batch_size=2), None, labels=speaker_labels(wrong), epoch=0, seed=0)
    assert len(list(dl)) == 4 and dl.num_bad_files == 1


def test_a_silent_file_is_a_bad_file_for_the_eval_loader_as_for_a_path(tmp_path):
    """A whole file below the silence peak is refused (or skipped and listed) as ``Verifier`` refuses its
    path; a chunk of silence inside a voiced file is not judged alone."""
    manifest = tiny_corpus(tmp_path, speakers=2, utts=3)
    rows = [r for _, r in iter_rows(manifest)]
    write_wav(tmp_path / "quiet.wav", np.zeros(8000, np.float32), subtype="FLOAT")
    write_wav(tmp_path / "late.wav", np.r_[np.zeros(16000, np.float32), tone(1.0)], subtype="FLOAT")
    rows[1] = {**rows[1], "path": "quiet.wav", "duration": 0.5}
    rows[2] = {**rows[2], "path": "late.wav", "duration": 2.0}
    with_silence = write_manifest(rows, tmp_path / "silence.jsonl")
    with pytest.raises(AudioError, match=rf"quiet\.wav \(manifest id {rows[1]['id']}\): silent audio"):
        list(build_eval_loader(with_silence, batch_seconds=4.0))
    dl = build_eval_loader(with_silence, batch_seconds=4.0, skip_bad=True)
    ids = [i for b in dl for i in b["ids"]]
    assert len(ids) == 5 and rows[1]["id"] not in ids and dl.bad_files[0].endswith("quiet.wav")
    chunked = build_eval_loader(with_silence, batch_seconds=4.0, chunk_seconds=0.5, skip_bad=True)
    assert rows[2]["id"] in {i for b in chunked for i in b["ids"]} and len(chunked.bad_files) == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_a_training_error_in_a_loader_worker_keeps_its_own_message(tmp_path, workers):
    manifest = _with_bad_rows(tmp_path, tiny_corpus(tmp_path, speakers=2, utts=4), {3: "nan"})
    dl = build_train_loader(
        manifest,
        _cfg(batch_size=2, strict=True, num_workers=workers),
        None,
        labels=speaker_labels(manifest),
        epoch=0,
        seed=0,
    )
    with pytest.raises(AudioError) as caught:
        list(dl)
    assert str(caught.value).endswith("nan.wav: NaN or infinite samples") and "Traceback" not in str(caught.value)


def test_worker_errors_keep_their_own_message():
    from torch.utils.data._utils import ExceptionWrapper

    from mlsv.data.audio import AudioError
    from mlsv.data.loader import unwrap_worker_error

    for error, message in (
        (AudioError("a.wav: NaN or infinite samples"), "a.wav: NaN or infinite samples"),
        (KeyError("no such id 'x'"), "no such id 'x'"),
    ):
        try:
            try:
                raise error
            except Exception:
                ExceptionWrapper(sys.exc_info(), where="in DataLoader worker process 0").reraise()
        except Exception as wrapped:
            assert "Original Traceback" in str(wrapped)
            clean = unwrap_worker_error(wrapped)
        assert type(clean) is type(error) and clean.args == (message,)
    plain = ValueError("not from a worker")
    assert unwrap_worker_error(plain) is plain
