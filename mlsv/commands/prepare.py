"""``mlsv prepare``: manifests, trial lists and shards from audio on disk, or the synthetic corpus."""

from __future__ import annotations

import argparse
import json

from mlsv.commands.options import non_negative_int, output_file, output_folder, positive_int

EXAMPLES = """examples:
  mlsv prepare synthetic --out data/synthetic --speakers 40 --utterances 20
  mlsv prepare voxceleb --out data/vox --vox2-dev /data/vox2/dev/aac --vox1-dev /data/vox1/dev/wav \\
      --vox1-test /data/vox1/test/wav --trials /data/vox1/veri_test2.txt /data/vox1/list_test_hard2.txt \\
      --validation-speakers 200 --convert-dir /data/vox2_flac --workers 8
  mlsv prepare folder --root my_speakers/ --out data/mine.jsonl
  mlsv prepare musan --root /data/musan --out data/musan.jsonl
  mlsv prepare rirs --root /data/RIRS_NOISES --out data/rirs.jsonl
  mlsv prepare noise --root my_babble/ --category babble --out data/babble.jsonl
  mlsv prepare rirs --root my_rooms/ --out data/my_rirs.jsonl     # any folder of impulse responses
  mlsv prepare trials --manifest data/mine.jsonl --out data/mine_trials.txt
  mlsv prepare kaldi data/train --out data/kaldi_train      # wav.scp, utt2spk [, segments, trials]
  mlsv prepare lhotse --recordings recordings.jsonl.gz --supervisions supervisions.jsonl.gz --out data/lh
  mlsv prepare shards --manifest data/vox/train.jsonl --out data/vox/train_shards --rows-per-shard 2000
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample-rate", type=positive_int, default=16000, help="expected rate (default 16000)")
    p.add_argument(
        "--resample",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep files at other rates, resampled when read (--no-resample: skip them)",
    )
    p.add_argument("--workers", type=non_negative_int, default=1, help="parallel processes (0 or 1: none)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="build manifests, trial lists and shards from audio on disk",
        description="Builds datasets (JSONL/parquet manifests), trial lists and parquet shards from audio "
        "already on disk (nothing is downloaded), or makes the built-in synthetic corpus.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    p = sub.add_parser(
        "voxceleb",
        help="VoxCeleb1/2 folders (id*/video/utt.{wav,m4a})",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder for the manifests")
    for name in ("vox1-dev", "vox1-test", "vox2-dev", "vox2-test"):
        p.add_argument(f"--{name}", help=f"{name} root holding id*/ speaker folders")
    p.add_argument(
        "--trials",
        nargs="*",
        default=[],
        help="official trial lists to check and copy "
        "(veri_test2 / list_test_all2 / list_test_hard2 become vox1_O / vox1_E / vox1_H)",
    )
    p.add_argument(
        "--validation-speakers", type=non_negative_int, default=0, help="training speakers held out for validation"
    )
    p.add_argument("--convert-dir", help="decode m4a to FLAC here (resumable) and use the FLAC files")
    p.add_argument("--seed", type=int, default=0)
    _common(p)

    for name, text in (
        ("folder", "any SPEAKER/[SESSION/]UTT.{wav,flac,ogg,mp3} tree"),
        ("musan", "MUSAN folder (noise/music/speech)"),
        ("noise", "any folder of noise, music or babble recordings as one noise-bank category"),
        ("rirs", "RIRS_NOISES folder, or any folder of impulse responses"),
    ):
        p = sub.add_parser(name, help=text, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--root", required=True, help="the folder to scan")
        p.add_argument("--out", required=True, help="manifest to write (.jsonl or .parquet)")
        if name == "noise":
            p.add_argument(
                "--category",
                required=True,
                choices=("noise", "music", "babble", "speech"),
                help="what the recordings are: babble (or speech) feeds the babble and TV kinds",
            )
        if name == "rirs":
            p.add_argument(
                "--kind",
                choices=("real", "simulated"),
                default="real",
                help="the kind of a plain folder's impulse responses (default real)",
            )
        _common(p)

    p = sub.add_parser(
        "kaldi",
        help="a Kaldi data folder (wav.scp with plain paths, utt2spk, optional segments and trials)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data_dir", metavar="DIR", help="the Kaldi data folder")
    p.add_argument(
        "--out", required=True, help="output folder: manifest.jsonl, trials.txt (from trials), segments/ (cut audio)"
    )
    _common(p)

    p = sub.add_parser(
        "lhotse",
        help="lhotse recordings and supervisions manifests (JSONL or .jsonl.gz; lhotse not needed)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recordings", required=True, help="recordings manifest (.jsonl or .jsonl.gz)")
    p.add_argument("--supervisions", required=True, help="supervisions manifest (.jsonl or .jsonl.gz)")
    p.add_argument("--out", required=True, help="output folder: manifest.jsonl, segments/ (cut audio)")
    _common(p)

    p = sub.add_parser(
        "synthetic",
        help="the built-in synthetic corpus + its MFCC baseline",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--speakers", type=positive_int, default=40, help="training speakers (default 40)")
    p.add_argument("--utterances", type=positive_int, default=20, help="utterances per speaker (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="remake even if the folder is complete")

    p = sub.add_parser(
        "trials",
        help="balanced trial list for a manifest",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="trial list to write")
    p.add_argument("--per-utterance", type=positive_int, default=5, help="target (and non-target) trials per utterance")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser(
        "shards",
        help="parquet shards with embedded FLAC",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="output folder for shard-*.parquet")
    p.add_argument("--rows-per-shard", type=positive_int, default=2000, help="rows per shard (default 2000)")
    p.add_argument("--workers", type=non_negative_int, default=1, help="parallel processes (0 or 1: none)")
    p.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


#: Whether each source's --out is a folder (else a file).
OUT_IS_FOLDER = {
    "voxceleb": True,
    "synthetic": True,
    "shards": True,
    "kaldi": True,
    "lhotse": True,
    "folder": False,
    "musan": False,
    "noise": False,
    "rirs": False,
    "trials": False,
}


def run(args: argparse.Namespace) -> int:
    (output_folder if OUT_IS_FOLDER[args.source] else output_file)(args.out)
    if args.source == "voxceleb":
        output_folder(args.convert_dir, "--convert-dir")
    if args.source == "synthetic":
        from mlsv.data.synthetic import corpus_baseline, make_synthetic_corpus

        corpus = make_synthetic_corpus(
            args.out, args.speakers, args.utterances, seed=args.seed, overwrite=args.overwrite
        )
        result = corpus_baseline(corpus, corpus.root / "baseline.json")
        print(
            f"synthetic corpus in {corpus.root}; MFCC-mean cosine baseline EER {result['mfcc_cosine_eer']:.2f} % "
            f"(LDA on MFCC stats {result['lda_eer']:.2f} %) on {result['n_trials']} test trials"
        )
        return 0
    if args.source == "trials":
        from mlsv.data.prepare import prepare_trials

        t = prepare_trials(args.manifest, args.out, per_utterance=args.per_utterance, seed=args.seed)
        print(f"{args.out}: {len(t)} trials ({int(t.labels.sum())} target)")
        return 0
    if args.source == "shards":
        from mlsv.data.shards import write_shards

        paths, bad = write_shards(
            args.manifest,
            args.out,
            rows_per_shard=args.rows_per_shard,
            workers=args.workers,
            progress=not (args.no_progress or getattr(args, "quiet", False)),
        )
        print(json.dumps({"shards": len(paths), "folder": args.out, "bad_files": bad}, indent=1))
        return 0
    from mlsv.data import prepare

    common = {
        "sample_rate": args.sample_rate,
        "resample": args.resample,
        "workers": args.workers,
        "progress": not (args.no_progress or getattr(args, "quiet", False)),
    }
    if args.source == "voxceleb":
        result = prepare.prepare_voxceleb(
            args.out,
            vox1_dev=args.vox1_dev,
            vox1_test=args.vox1_test,
            vox2_dev=args.vox2_dev,
            vox2_test=args.vox2_test,
            trials=args.trials,
            validation_speakers=args.validation_speakers,
            convert_dir=args.convert_dir,
            seed=args.seed,
            **common,
        )
    elif args.source == "noise":
        result = prepare.prepare_noise(args.root, args.out, category=args.category, **common)
    elif args.source == "rirs":
        result = prepare.prepare_rirs(args.root, args.out, kind=args.kind, **common)
    elif args.source == "kaldi":
        from mlsv.data.toolkits import prepare_kaldi

        result = prepare_kaldi(args.data_dir, args.out, **common)
    elif args.source == "lhotse":
        from mlsv.data.toolkits import prepare_lhotse

        result = prepare_lhotse(args.recordings, args.supervisions, args.out, **common)
    else:
        recipe = {"folder": prepare.prepare_folder, "musan": prepare.prepare_musan}
        result = recipe[args.source](args.root, args.out, **common)
    print(result.summary())
    return 0
