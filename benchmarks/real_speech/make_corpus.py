"""Builds the real-voice corpus: Debian's festival and flite voices, each made from the recordings of one
real person, speak sessions that differ in speaking rate, pitch and
channel colouring; the test speakers never train.

Installs nothing itself; it needs (Debian bookworm, main):

    apt-get install -y festival flite festival-hi festival-mr festival-te festvox-kdlpc16k festvox-kallpc16k \\
        festvox-czech-dita festvox-czech-krb festvox-czech-machac festvox-czech-ph festvox-suopuhe-lj \\
        festvox-suopuhe-mv festvox-italp16k festvox-itapc16k festvox-hi-nsk festvox-mr-nsk festvox-te-nsk

    python benchmarks/real_speech/make_corpus.py --out benchmarks/real_speech/work/corpus

It writes mlsv's own formats (docs/data.md): ``train.jsonl`` (the training speakers' sessions 0-5),
``validation.jsonl`` + ``validation_trials.txt`` (their sessions 6-7, for checkpoint choice), ``test.jsonl`` +
``test_trials.txt`` (the test speakers, every trial across two sessions, no sentence said twice),
``test_noisy.jsonl`` (the same ids, the same trial list: babble of training voices or pink/brown noise at
5-20 dB SNR, a synthetic room on half, a telephone band on a third) and ``corpus.json`` (what was made).
Everything follows from ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

from mlsv.data.manifest import write_manifest
from mlsv.data.synthetic import simulate_rir
from mlsv.data.trials import make_trials, write_trials

SR = 16000
MIN_SECONDS, MAX_SECONDS = 2.0, 8.0
SESSIONS = 8  # per speaker; training speakers keep the last VALIDATION_SESSIONS for validation
VALIDATION_SESSIONS = 2
TARGET_RMS_DB = -23.0  # every utterance brought to one level: loudness is no speaker cue


@dataclass(frozen=True)
class Voice:
    """One synthesiser voice; several voices may be one speaker (the same person's recordings)."""

    speaker: str
    engine: str  # festival | flite
    name: str  # festival's voice_NAME or flite's -voice NAME
    language: str  # the text pool it reads
    pitch: bool = True  # whether its pitch can be moved (flite's rms ignores f0_shift)


# Each speaker is one person. kal's festival diphones and flite's kal16 come from the same recordings; the
# Hindi, Marathi and Telugu NSK voices are one speaker's diphones in three languages: both are one speaker
# with sessions in each voice. festival's HTS voices (slt, Catalan ona) are left out: HTS makes its own
# pitch, which the F0 hook below cannot move (slt comes from flite instead).
VOICES: tuple[Voice, ...] = (
    Voice("kal", "festival", "kal_diphone", "en"),
    Voice("kal", "flite", "kal16", "en"),
    Voice("ked", "festival", "ked_diphone", "en"),
    Voice("awb", "flite", "awb", "en"),
    Voice("rms", "flite", "rms", "en", pitch=False),
    Voice("slt", "flite", "slt", "en"),
    Voice("cs_dita", "festival", "czech_dita", "cs"),
    Voice("cs_krb", "festival", "czech_krb", "cs"),
    Voice("cs_machac", "festival", "czech_machac", "cs"),
    Voice("cs_ph", "festival", "czech_ph", "cs"),
    Voice("fi_lj", "festival", "suo_fi_lj_diphone", "fi"),
    Voice("fi_mv", "festival", "hy_fi_mv_diphone", "fi"),
    Voice("it_lp", "festival", "lp_diphone", "it"),
    Voice("it_pc", "festival", "pc_diphone", "it"),
    Voice("nsk", "festival", "hindi_NSK_diphone", "hi"),
    Voice("nsk", "festival", "marathi_NSK_diphone", "mr"),
    Voice("nsk", "festival", "telugu_NSK_diphone", "te"),
)
# Test speakers: confusable pairs on purpose (three English men, two Czech men), and one woman.
TEST_SPEAKERS = ("ked", "rms", "awb", "cs_machac", "cs_ph", "it_lp")

# ------------------------------------------------------------------------------------------------------------
# text: sentences made from small word lists (written for this benchmark), never one said twice

EN = {
    "det": "the a one every that this some another".split(),
    "adj": (
        "quiet bright heavy narrow early yellow patient broken famous gentle distant crowded careful silver "
        "ancient simple curious modern hidden tired"
    ).split(),
    "noun": (
        "teacher farmer river engine garden window letter captain kitchen village student machine doctor "
        "market painter basket bridge mountain library bicycle sailor orchestra"
    ).split(),
    "verb": (
        "carried painted opened followed repaired described watched borrowed finished measured noticed "
        "cleaned visited counted packed covered ordered moved"
    ).split(),
    "prep": "near behind beside across under above beyond inside along through".split(),
    "place": (
        "the old station|the harbour wall|the northern hills|the busy square|the wooden fence|the school yard|"
        "the green valley|the stone church|the main road|the empty hall|the small island|the city museum"
    ).split("|"),
    "time": (
        "this morning|last winter|before dinner|after the storm|on Tuesday|every evening|in the spring|"
        "late at night|at noon|two days ago|during the summer|without a word"
    ).split("|"),
}
WORDS = {
    # plain Latin letters only: the voices' lexicons read them without an encoding question
    "cs": (
        "dnes rano vecer mesto reka okno kniha stul dum pes kocka voda chleba skola prace cesta vlak auto "
        "strom zahrada slunce jidlo pritel rodina sestra bratr otec matka cte pise jde vidi dela hleda kupuje "
        "velky maly novy stary krasny rychle pomalu ale na do zitra vcera hora pole les most"
    ).split(),
    "fi": (
        "talo koira kissa vesi leipa kirja ikkuna kaupunki joki metsa aurinko sade ystava isa sisko veli koulu "
        "tyo tie juna auto puu puutarha lukee kirjoittaa menee tekee etsii ostaa iso pieni uusi vanha kaunis "
        "nopeasti hitaasti ja mutta huomenna aamulla illalla tunturi kala vene saari"
    ).split(),
    "it": (
        "casa cane gatto acqua pane libro tavolo finestra fiume bosco lago sole pioggia amico madre padre "
        "sorella fratello scuola lavoro strada treno macchina albero giardino legge scrive vede cerca compra "
        "grande piccolo nuovo vecchio bello presto lentamente ma oggi domani mattina sera mare monte ponte"
    ).split(),
    "hi": (
        "घर कुत्ता बिल्ली पानी रोटी किताब मेज़ खिड़की शहर नदी जंगल सूरज बारिश दोस्त माँ पिता बहन भाई स्कूल काम "
        "सड़क गाड़ी पेड़ बगीचा पढ़ता लिखता जाता देखता करता खोजता खरीदता बड़ा छोटा नया पुराना सुंदर जल्दी धीरे "
        "और लेकिन आज कल सुबह शाम है पहाड़ समुद्र"
    ).split(),
    "mr": (
        "घर कुत्रा मांजर पाणी भाकरी पुस्तक खिडकी शहर नदी जंगल सूर्य पाऊस मित्र आई वडील बहीण भाऊ शाळा काम "
        "रस्ता गाडी झाड बाग वाचतो लिहितो जातो पाहतो करतो शोधतो मोठा लहान नवीन जुना सुंदर लवकर हळू आणि पण "
        "आज उद्या सकाळी संध्याकाळी आहे डोंगर समुद्र"
    ).split(),
    "te": (
        "ఇల్లు కుక్క పిల్లి నీరు రొట్టె పుస్తకం బల్ల కిటికీ నగరం నది అడవి సూర్యుడు వర్షం స్నేహితుడు అమ్మ నాన్న "
        "అక్క అన్న బడి పని దారి రైలు బండి చెట్టు తోట చదువుతాడు రాస్తాడు వెళ్తాడు చూస్తాడు చేస్తాడు పెద్ద చిన్న "
        "కొత్త పాత అందమైన త్వరగా నెమ్మదిగా మరియు కానీ ఈరోజు రేపు ఉదయం సాయంత్రం కొండ సముద్రం"
    ).split(),
}


class Sentences:
    """Draws sentences of a language, none twice in the corpus (so no trial pairs one sentence)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.used = rng, set()

    def _english(self) -> str:
        c = lambda k: str(self.rng.choice(EN[k]))  # noqa: E731
        forms = [
            lambda: (
                f"{c('det')} {c('adj')} {c('noun')} {c('verb')} {c('det')} {c('noun')} {c('prep')} "
                f"{c('place')} {c('time')}."
            ),
            lambda: (
                f"{c('time').capitalize()}, {c('det')} {c('noun')} {c('verb')} {c('det')} {c('adj')} "
                f"{c('noun')} and {c('verb')} it {c('prep')} {c('place')}."
            ),
            lambda: f"Why was {c('det')} {c('adj')} {c('noun')} {c('prep')} {c('place')} {c('time')}?",
            lambda: (
                f"{c('det')} {c('noun')} said that {c('det')} {c('adj')} {c('noun')} {c('verb')} "
                f"{c('det')} {c('noun')} {c('time')}."
            ),
        ]
        s = forms[int(self.rng.integers(len(forms)))]()
        return s[0].upper() + s[1:]

    def draw(self, language: str, words: tuple[int, int] = (7, 13)) -> str:
        for _ in range(1000):
            if language == "en":
                s = self._english()
            else:
                pool = WORDS[language]
                s = " ".join(self.rng.choice(pool, size=int(self.rng.integers(*words)))) + "."
            if s not in self.used:
                self.used.add(s)
                return s
        raise RuntimeError(f"no new {language} sentence after 1000 draws; the word lists are too small")


# ------------------------------------------------------------------------------------------------------------
# synthesis


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def synth_festival(voice: str, items: list[tuple[str, Path]], rate: float, pitch: float) -> None:
    """One festival process per session: every sentence at this duration stretch and F0 factor.

    The F0 factor multiplies the pitch targets between the intonation and the waveform steps (the voice's
    ``Wave_Synth`` is wrapped), so any diphone voice's own pipeline runs unchanged.
    """
    lines = [
        f"(voice_{voice})",
        f"(Parameter.set 'Duration_Stretch {rate:.4f})",
        "(set! mlsv_orig_wave_synth Wave_Synth)",
        "(define (Wave_Synth utt)"
        '  (mapcar (lambda (tg) (item.set_feat tg "f0" (* ' + f"{pitch:.4f}" + ' (item.feat tg "f0"))))'
        "          (utt.relation.items utt 'Target))"
        "  (mlsv_orig_wave_synth utt))",
    ]
    for text, path in items:
        lines.append(
            f"(let ((u (Utterance Text {_scheme_string(text)}))) (utt.synth u) (utt.wave.resample u {SR}) "
            f'(utt.save.wave u "{path}" \'riff))'
        )
    with tempfile.NamedTemporaryFile("w", suffix=".scm", delete=False, encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    try:
        run = subprocess.run(["festival", "-b", f.name], capture_output=True, text=True, timeout=600)
    finally:
        Path(f.name).unlink()
    if run.returncode != 0:
        raise RuntimeError(f"festival voice {voice}: {run.stderr.strip()[-500:]}")


def synth_flite(voice: str, items: list[tuple[str, Path]], rate: float, pitch: float) -> None:
    for text, path in items:
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={rate:.4f}"]
        if pitch != 1.0:
            cmd += ["--setf", f"f0_shift={pitch:.4f}"]
        run = subprocess.run([*cmd, "-t", text, "-o", str(path)], capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            raise RuntimeError(f"flite voice {voice}: {run.stderr.strip()[-500:]}")


def channel_curve(rng: np.random.Generator, db: float, n_fft: int) -> np.ndarray:
    """A session's microphone and room colouring: a smooth random gain over log frequency (within about
    +-``db`` dB) plus a spectral tilt, as the (n_fft // 2 + 1,) amplitude response of one recording set-up."""
    f = np.fft.rfftfreq(n_fft, 1 / SR)
    knots = np.geomspace(60, SR / 2, 8)
    gains = rng.uniform(-db, db, size=len(knots))
    tilt = rng.uniform(-db, db) * np.log2(np.maximum(f, 60) / 1000) / np.log2(8000 / 1000)
    return 10 ** ((np.interp(np.log(np.maximum(f, 60)), np.log(knots), gains) + tilt) / 20)


def finish(path: Path, channel_db: float, channel_seed: int) -> float | None:
    """16 kHz mono, DC removed, the session's channel colouring, one level, at most MAX_SECONDS; None (and
    the file removed) below MIN_SECONDS."""
    x, sr = sf.read(path, dtype="float64", always_2d=True)
    x = x.mean(1)
    if sr != SR:
        from scipy.signal import resample_poly

        g = np.gcd(sr, SR)
        x = resample_poly(x, SR // g, sr // g)
    x = x[: int(MAX_SECONDS * SR)] - x.mean()
    if len(x) < MIN_SECONDS * SR or not np.any(x):
        path.unlink()
        return None
    if channel_db > 0:
        n_fft = 1 << int(np.ceil(np.log2(len(x))))
        curve = channel_curve(np.random.default_rng(channel_seed), channel_db, n_fft)
        x = np.fft.irfft(np.fft.rfft(x, n_fft) * curve, n_fft)[: len(x)]
    x *= 10 ** (TARGET_RMS_DB / 20) / np.sqrt(np.mean(x**2))
    sf.write(path, np.clip(x, -1, 1).astype(np.float32), SR, subtype="PCM_16")
    return len(x) / SR


# ------------------------------------------------------------------------------------------------------------
# the noisy test copy


def _coloured(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Pink (exponent 1) or brown (2) noise: white noise shaped to 1/f^exponent power."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec *= 1 / np.maximum(f, 20.0) ** (exponent / 2)
    y = np.fft.irfft(spec, n)
    return y / (np.sqrt(np.mean(y**2)) + 1e-12)


def _babble(n: int, sources: list[Path], rng: np.random.Generator) -> np.ndarray:
    """3-6 training speakers' utterances summed at random offsets (never a test speaker)."""
    y = np.zeros(n)
    for path in rng.choice(sources, size=int(rng.integers(3, 7)), replace=False):
        s, _ = sf.read(path, dtype="float64")
        s = np.tile(s, int(np.ceil(n / len(s))) + 1)
        start = int(rng.integers(0, len(s) - n + 1))
        y += s[start : start + n]
    return y / (np.sqrt(np.mean(y**2)) + 1e-12)


def _telephone(x: np.ndarray) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    return sosfiltfilt(butter(6, [300, 3400], btype="bandpass", fs=SR, output="sos"), x)


def degrade(x: np.ndarray, babble_sources: list[Path], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    kind = str(rng.choice(["babble", "pink", "brown"]))
    snr = float(rng.uniform(5.0, 20.0))
    info: dict = {"noise": kind, "snr_db": round(snr, 1)}
    y = x.copy()
    if rng.random() < 0.5:
        rir = simulate_rir(rng).astype(np.float64)
        y = fftconvolve(y, rir)[: len(x)]
        y *= np.sqrt(np.mean(x**2) / (np.mean(y**2) + 1e-20))
        info["reverb"] = True
    if kind == "babble":
        noise = _babble(len(y), babble_sources, rng)
    else:
        noise = _coloured(len(y), 1.0 if kind == "pink" else 2.0, rng)
    y = y + noise * np.sqrt(np.mean(y**2)) * 10 ** (-snr / 20)
    if rng.random() < 1 / 3:
        y = _telephone(y)
        info["telephone"] = True
    y *= 10 ** (TARGET_RMS_DB / 20) / np.sqrt(np.mean(y**2))
    return np.clip(y, -1, 1), info


# ------------------------------------------------------------------------------------------------------------


def _check_tools(voices: tuple[Voice, ...]) -> None:
    missing = [tool for tool in ("festival", "flite") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"{' and '.join(missing)} not found: apt-get install -y {' '.join(missing)} (see --help)")
    have = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
    lacking = [v.name for v in voices if v.engine == "flite" and v.name not in have]
    listed = (
        subprocess.run(["festival", "-b", "(print (voice.list))"], capture_output=True, text=True)
        .stdout.replace("(", " ")
        .replace(")", " ")
        .split()
    )
    lacking += [v.name for v in voices if v.engine == "festival" and v.name not in listed]
    if lacking:
        raise SystemExit(f"voices not installed: {lacking}; install the apt packages listed in --help")


def sessions_of(speaker: str, rng: np.random.Generator) -> list[dict]:
    """SESSIONS sessions of a speaker: its voices in turn, each with its own rate and pitch."""
    voices = [v for v in VOICES if v.speaker == speaker]
    rates = rng.permutation(np.linspace(0.8, 1.3, SESSIONS))
    pitches = rng.permutation(np.linspace(0.85, 1.2, SESSIONS))
    out = []
    for k in range(SESSIONS):
        v = voices[k % len(voices)]
        out.append(
            {
                "session": f"{speaker}/s{k}",
                "voice": v,
                "rate": round(float(rates[k]), 3),
                "pitch": round(float(pitches[k]), 3) if v.pitch else 1.0,
                "channel_seed": int(rng.integers(2**31)),
            }
        )
    return out


def build(
    out: Path, per_session: int, seed: int, jobs: int, trials_per_utterance: int, channel_db: float = 6.0
) -> dict:
    t0 = time.perf_counter()
    _check_tools(VOICES)
    rng = np.random.default_rng(seed)
    sentences = Sentences(rng)
    speakers = sorted({v.speaker for v in VOICES})
    plan = []  # (session dict, [(id, text, path)])
    for speaker in speakers:
        for s in sessions_of(speaker, rng):
            items = []
            for i in range(per_session):
                uid = f"{s['session']}/u{i:02d}.wav"
                items.append((uid, sentences.draw(s["voice"].language), out / "wav" / uid))
            plan.append((s, items))

    def run_session(job):
        s, items = job
        for _, _, path in items:
            path.parent.mkdir(parents=True, exist_ok=True)
        synth = synth_festival if s["voice"].engine == "festival" else synth_flite
        synth(s["voice"].name, [(text, path) for _, text, path in items], s["rate"], s["pitch"])
        return [(uid, text, path, finish(path, channel_db, s["channel_seed"])) for uid, text, path in items]

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        done = list(pool.map(run_session, plan))
    rows: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    dropped = []
    for (s, _), results in zip(plan, done):
        speaker, k = s["session"].split("/")[0], int(s["session"].split("/s")[-1])
        held_out = k >= SESSIONS - VALIDATION_SESSIONS
        split = "test" if speaker in TEST_SPEAKERS else ("validation" if held_out else "train")
        for uid, text, path, seconds in results:
            if seconds is None:
                dropped.append(uid)
                continue
            rows[split].append(
                {
                    "id": uid,
                    "path": str(path.relative_to(out)),
                    "speaker": speaker,
                    "duration": round(seconds, 3),
                    "sample_rate": SR,
                    "session": s["session"],
                    "voice": f"{s['voice'].engine}:{s['voice'].name}",
                    "rate": s["rate"],
                    "pitch": s["pitch"],
                    "channel_seed": s["channel_seed"],
                    "text": text,
                }
            )
    for split, split_rows in rows.items():
        write_manifest(split_rows, out / f"{split}.jsonl")
    for split in ("validation", "test"):
        r = rows[split]
        trials = make_trials(
            [x["id"] for x in r],
            [x["speaker"] for x in r],
            [x["session"] for x in r],
            per_utterance=trials_per_utterance,
            seed=seed,
            name=f"{split}_trials",
        )
        write_trials(trials, out / f"{split}_trials.txt")
    # the noisy copy of the test side: same ids (so the same trial list), degraded audio
    babble_sources = [out / r["path"] for r in rows["train"]]
    noisy_rows = []
    for r in rows["test"]:
        x, _ = sf.read(out / r["path"], dtype="float64")
        y, info = degrade(x, babble_sources, rng)
        path = Path("wav_noisy") / r["id"]
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / path, y.astype(np.float32), SR, subtype="PCM_16")
        noisy_rows.append({**r, "path": str(path), **info})
    write_manifest(noisy_rows, out / "test_noisy.jsonl")
    labels = np.loadtxt(out / "test_trials.txt", usecols=0, dtype=int)
    summary = {
        "seed": seed,
        "channel_db": channel_db,
        "speakers": {
            "train": sorted({r["speaker"] for r in rows["train"]}),
            "test": sorted({r["speaker"] for r in rows["test"]}),
        },
        "utterances": {k: len(v) for k, v in rows.items()},
        "hours": {k: round(sum(r["duration"] for r in v) / 3600, 3) for k, v in rows.items()},
        "test_trials": {"target": int(labels.sum()), "nontarget": int((labels == 0).sum())},
        "dropped_short": dropped,
        "voices": [f"{v.speaker}={v.engine}:{v.name}" for v in VOICES],
        "seconds_to_build": round(time.perf_counter() - t0, 1),
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="corpus folder (made; wavs and manifests)")
    p.add_argument("--per-session", type=int, default=10, help="utterances per session (8 sessions a speaker)")
    p.add_argument("--trials-per-utterance", type=int, default=6, help="target (and non-target) trials each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--channel-db", type=float, default=6.0, help="each session's random channel colouring, +-dB (0: none)"
    )
    p.add_argument("--jobs", type=int, default=1, help="sessions synthesised at once")
    args = p.parse_args(argv)
    summary = build(
        args.out.resolve(), args.per_session, args.seed, args.jobs, args.trials_per_utterance, args.channel_db
    )
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


if __name__ == "__main__":
    sys.exit(main() and 0)
