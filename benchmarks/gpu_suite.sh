#!/usr/bin/env bash
# The GPU speed checks of issue 6 in one call, most important first; each step has its own time limit
# and writes its JSON (or its error) to $OUT (default: ./gpu-results), so a step that fails or runs out
# of time costs only itself. Figures: utterances/s, seconds of audio per second, peak memory.
#
#   bash benchmarks/gpu_suite.sh              # on a CUDA machine, from the repository root
#   OUT=/tmp/r SUITE_LIMIT=60 bash benchmarks/gpu_suite.sh
#   SUITE_ARCHIVE=$OUT/results.tgz ...        # also pack every result into one archive (the loose files
#                                             # are removed: some remote runners return few files)
#   SUITE_DEADLINE=560 ...                    # the whole suite within this many seconds: later steps get
#                                             # what is left or are skipped, so the summary always comes
set -u
OUT=${OUT:-gpu-results}
LIMIT=${SUITE_LIMIT:-150}
DEADLINE=${SUITE_DEADLINE:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
B=benchmarks
start=$(date +%s)

budget() {  # budget LIMIT: LIMIT cut to what SUITE_DEADLINE leaves (20 s kept for the summary); 0: none left
  local limit=$1 left
  if [ "$DEADLINE" -gt 0 ]; then
    left=$(( DEADLINE - ($(date +%s) - start) - 20 ))
    [ "$left" -lt "$limit" ] && limit=$left
    [ "$limit" -lt 15 ] && limit=0
  fi
  echo "$limit"
}

step() {  # step NAME LIMIT COMMAND...: run it, JSON to $OUT/NAME.json, log to $OUT/NAME.log
  local name=$1 limit
  limit=$(budget "$2")
  shift 2
  if [ "$limit" -eq 0 ]; then echo "== $name: skipped (SUITE_DEADLINE)"; return; fi
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  local rc=$?
  echo "== $name: rc=$rc $(( $(date +%s) - t0 )) s (suite at $(( $(date +%s) - start )) s)"
  [ $rc -eq 0 ] || tail -5 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee "$OUT/versions.txt"

# 0. where the frozen frontend's time goes, per part and convolution layout; the CNN with and without
#    first_conv_block, eager and compiled
step parts_base $((3 * LIMIT / 2)) python3 $B/frontend_parts.py --shape base
# 1. Base+ shape: stage 1 (batch 128), stage 2 (batch 64, as the reference), frontend, backend alone, and
#    stage 1 through the training loop's own step with device augmentation (needs soundfile for its banks)
step ts_base "$LIMIT" python3 $B/train_step.py --shape base --stage2-batch 64 --profile "$OUT/prof_base"
# 2. Large shape: stage 2 at batch 32, as the reference
step ts_large "$LIMIT" python3 $B/train_step.py --shape large --stage2-batch 32
# 3. evaluation embedding, Base+: length-sorted bf16 batches against one-at-a-time fp32 eager
step embed_base "$LIMIT" python3 $B/embed.py --shape base
# 4. equivalence of every fast path on CUDA kernels; the training step under CUDA's synchronisation check
#    (a file of its own: it needs soundfile, and a collection error would stop the other file's tests)
for t in models_fast_paths train_host_syncs; do
  [ "$(budget "$LIMIT")" -eq 0 ] && { echo "== pytest -m gpu $t: skipped (SUITE_DEADLINE)"; continue; }
  timeout "$(budget "$LIMIT")" python3 -m pytest tests/test_$t.py -m gpu -q -p no:cacheprovider > "$OUT/pytest_gpu_$t.txt" 2>&1
  echo "== pytest -m gpu $t: rc=$? $(tail -1 "$OUT/pytest_gpu_$t.txt") (suite at $(( $(date +%s) - start )) s)"
done
# 5. memory: stage 2 of the Large shape at batch 128 x 2 s (gradient checkpointing)
step ts_large_stage2_b128 "$LIMIT" python3 $B/train_step.py --shape large --parts stage2 --checkpointing --steps 5 --warmup 2
# 6. compiled (inductor, fixed crop shapes): stage 1, stage 2 (batch 64), the frontend, the backend
step ts_base_compiled $((3 * LIMIT / 2)) python3 $B/train_step.py --shape base --compile --stage2-batch 64
# 7. the loss curve: plain fp32 path vs the fast path from the same start
[ -f $B/loss_curve.py ] && step loss_curve "$LIMIT" python3 $B/loss_curve.py
# 8. Large: embedding, compiled stage 1
step embed_large "$LIMIT" python3 $B/embed.py --shape large --utterances 256 --batch 32 --reference-utterances 16
step ts_large_compiled $((3 * LIMIT / 2)) python3 $B/train_step.py --shape large --compile --parts stage1,frontend
# 9. CUDA graphs on top of compile (no per-kernel launch cost), Base+ stage 1
step ts_base_cudagraphs $((3 * LIMIT / 2)) python3 $B/train_step.py --shape base --compile --compile-mode reduce-overhead --parts stage1,frontend,loop
# 10. the training stream: clean crops, CPU-worker augmentation, batched augmentation on the GPU (needs
#     datasets and soundfile, which some GPU images lack)
if python3 -c "import datasets, soundfile, soxr" 2>/dev/null; then
  step loader "$LIMIT" python3 $B/loader.py --batch-size 128 --workers 8
fi

# 11. stage 2 as the VoxCeleb recipe runs it (CNN frozen: frontend_trainable transformer), Base+ batch 64
step ts_base_stage2_transformer "$LIMIT" python3 $B/train_step.py --shape base --parts stage2 --stage2-batch 64 \
  --stage2-trainable transformer
# 12. one long recording (2 and 10 minutes, Base+): blocked attention of long inputs against one block
step long_audio "$LIMIT" python3 $B/long_audio.py --shape base --device cuda --seconds 120 600 --max-gb 20

python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        d = json.loads(f.read_text())
    except Exception:
        print(f"{f.stem}: no result"); continue
    if d.get("benchmark") == "loss_curve":
        print(f"{f.stem}: " + json.dumps({k: v for k, v in d.items() if k.endswith("diff")}) + " last "
              + " ".join(f"{k}={d[k].get('last')}" for k in ("plain", "fast", "noise") if isinstance(d.get(k), dict)))
        continue
    if "ms" in d:
        print(f"{f.stem}: ms per batch " + json.dumps(d["ms"]))
        continue
    if d.get("benchmark") == "long_audio":
        print(f"{f.stem}: " + json.dumps(d.get("results")))
        continue
    if d.get("benchmark") == "loader" or "crops_per_s" in d:
        print(f"{f.stem}: " + json.dumps(d.get("crops_per_s", d)))
        continue
    r = d.get("results") or {k: d[k] for k in ("reference", "fast") if k in d}
    cells = [f"{k} {v.get('utterances_per_s', v.get('error'))}/s {v.get('audio_s_per_s', '')} {v.get('peak_memory_mb')}MB"
             for k, v in r.items()]
    print(f"{f.stem}: " + " | ".join(cells) + (f" | eq {d['equivalence']}" if "equivalence" in d else ""))
EOF
if [ -n "${SUITE_ARCHIVE:-}" ]; then
  tmp=$(mktemp -d) && cp -r "$OUT"/. "$tmp"/ && find "$OUT" -mindepth 1 -delete
  tar czf "$SUITE_ARCHIVE" -C "$tmp" . && echo "archive: $SUITE_ARCHIVE"
fi
