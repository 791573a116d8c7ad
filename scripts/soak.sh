#!/usr/bin/env bash
# Kill -9 soak of every long-running command, bounded in time (a few minutes on 2 cores).
#   bash scripts/soak.sh [WORKDIR]        # default: a fresh temp directory (a given one is wiped)
# For each command (caption, concepts measure, train, finetune, distill, ae train, synth, classify
# train, experiment): one uninterrupted reference run, then the same run killed with SIGKILL at
# random moments (KILLS times) and resumed until it finishes. Checks: the final outputs equal the reference (tensors
# bit for bit, synthetic images and records byte for byte, classifier metrics), no temp file is
# left, every file still parses. Then faults: SIGTERM checkpoints and exits 143; a write that
# fails (a full tmpfs, or a file-size limit where mounting is not allowed) gives a clear error and leaves the
# previous checkpoint intact. Prints a markdown table (docs/results.md keeps one) and exits 1 if
# any check failed. Everything runs with --threads 1 so every run is deterministic.
set -uo pipefail
cd "$(dirname "$0")/.."
LF=${LF:-$PWD/build/lesionflow}
W=${1:-$(mktemp -d /tmp/lesionflow_soak.XXXXXX)}
KILLS=${KILLS:-4}
SEED=${SOAK_SEED:-1}
RANDOM=$SEED
if [[ -e $W && ! -e $W/.lesionflow_soak && -n $(ls -A "$W") ]]; then
  echo "soak: $W exists and is not a soak directory; give a new or empty one" >&2
  exit 2
fi
rm -rf "$W"  # a soak directory of an earlier run: start clean
mkdir -p "$W" && touch "$W/.lesionflow_soak"
PY=${PYTHON:-/usr/bin/python3}
fail=0
rows=()

run() { "$LF" --threads 1 "$@" >>"$W/log.txt" 2>&1; }

# Tensors of two safetensors files equal bit for bit (metadata may differ only in timing fields).
same_tensors() {
  "$PY" - "$1" "$2" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]
    h = json.loads(b[8:8 + n]); meta = h.pop('__metadata__', {})
    return {k: b[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]] for k, v in h.items()}, meta
(a, _), (b, _) = load(sys.argv[1]), load(sys.argv[2])
bad = [k for k in a if a[k] != b.get(k)] + [k for k in b if k not in a]
sys.exit(1 if bad else 0)
EOF
}

# Every JSON/JSONL/safetensors file under a directory parses; no *.tmp.* file is left.
intact() {
  "$PY" - "$1" <<'EOF'
import json, os, struct, sys
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(root, f)
        if '.tmp.' in f: print('temp file left:', p); sys.exit(1)
        try:
            if f.endswith('.json'): json.load(open(p))
            elif f.endswith('.jsonl'): [json.loads(l) for l in open(p) if l.strip()]
            elif f.endswith('.safetensors'):
                b = open(p, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; json.loads(b[8:8 + n])
                assert 8 + n <= len(b)
        except Exception as e:
            print('corrupt:', p, e); sys.exit(1)
EOF
}

# soak NAME COMPARE RESUME_FILE -- COMMAND...   (@OUT@ in COMMAND becomes the run directory;
# --resume is added once RESUME_FILE exists in it; "" for commands that resume by themselves)
soak() {
  local name=$1 compare=$2 resume_flag=$3
  shift 4
  local ref=$W/ref_$name out=$W/kill_$name
  local cmd=("$@")
  local t0=$(date +%s%N)
  run "${cmd[@]//@OUT@/$ref}" || { echo "reference $name failed"; fail=1; return; }
  local secs=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
  local kills=0 resumes=0 k
  for ((k = 0; k < KILLS; ++k)); do
    local extra=()
    [[ -n $resume_flag && -e $out/$resume_flag ]] && extra=(--resume) && resumes=$((resumes + 1))
    [[ -z $resume_flag && -d $out ]] && resumes=$((resumes + 1))
    "$LF" --threads 1 "${cmd[@]//@OUT@/$out}" "${extra[@]}" >>"$W/log.txt" 2>&1 &
    local pid=$!
    # a random moment within the reference duration
    sleep "$(awk -v s="$secs" -v r=$((5 + RANDOM % 65)) 'BEGIN { printf "%.2f", s * r / 100 }')"
    if kill -9 $pid 2>/dev/null; then kills=$((kills + 1)); fi
    wait $pid 2>/dev/null
  done
  local extra=()
  [[ -n $resume_flag && -e $out/$resume_flag ]] && extra=(--resume) && resumes=$((resumes + 1))
  [[ -z $resume_flag && -d $out ]] && resumes=$((resumes + 1))
  run "${cmd[@]//@OUT@/$out}" "${extra[@]}" || { echo "final resume of $name failed"; fail=1; }
  local equal=yes
  $compare "$ref" "$out" || equal=NO
  intact "$out" >>"$W/log.txt" || equal="$equal, CORRUPT FILE"
  [[ $equal == yes ]] || fail=1
  rows+=("| $name | $(printf %.1f "$secs") s | $kills | $resumes | $equal |")
}

cmp_weights() { same_tensors "$1/ema.safetensors" "$2/ema.safetensors" && same_tensors "$1/checkpoint.safetensors" "$2/checkpoint.safetensors"; }
cmp_ae() { same_tensors "$1/ae.safetensors" "$2/ae.safetensors"; }
cmp_synth() {
  diff <(cd "$1" && sha256sum images/*.png) <(cd "$2" && sha256sum images/*.png) >/dev/null &&
    diff <(sort "$1/manifest.jsonl") <(sort "$2/manifest.jsonl") >/dev/null
}
cmp_classifier() {
  same_tensors "$1/best.safetensors" "$2/best.safetensors" &&
    "$PY" -c "import json,sys; a,b=(json.load(open(p+'/result.json')) for p in sys.argv[1:]); sys.exit(any(a.get(k)!=b.get(k) for k in ('test','val_auc','best_epoch','threshold')))" "$1" "$2"
}
cmp_file() { cmp -s "$1/$3" "$2/$3"; }
cmp_captions() { cmp_file "$1" "$2" caps.jsonl; }
cmp_measure() { cmp_file "$1" "$2" concepts.jsonl; }
cmp_experiment() {
  "$PY" -c "import json,sys; a,b=(json.load(open(p+'/summary.json')) for p in sys.argv[1:]); sys.exit(a.get('cells')!=b.get('cells') or a.get('paired')!=b.get('paired'))" "$1" "$2"
}

echo "soak in $W (log: $W/log.txt)"
run data prepare --dataset phantom:160 --size 16 --out "$W/ph" --quiet
run data split --dataset phantom:160 --out "$W/splits.csv"
run caption --dataset phantom:160 --out "$W/caps.jsonl" --quiet
D=(--data "$W/ph" --splits "$W/splits.csv" --captions "$W/caps.jsonl")
G=(--batch 8 --ckpt-every 10 --sample-every 0 --val-every 0 --log-every 5)

soak caption cmp_captions "" -- caption --dataset phantom:800 --quiet --out @OUT@/caps.jsonl
run data phantom --n 120 --size 256 --out "$W/measure_in"
soak concepts_measure cmp_measure "" -- concepts measure --images "$W/measure_in" --out @OUT@/concepts.jsonl
soak train cmp_weights state.bin -- train "${D[@]}" --preset tiny --steps 200 "${G[@]}" --out @OUT@
BASE=$W/ref_train/ema.safetensors
soak finetune cmp_weights state.bin -- finetune --base "$BASE" "${D[@]}" --steps 120 "${G[@]}" --out @OUT@
soak distill cmp_weights state.bin -- distill --teacher "$BASE" "${D[@]}" --steps 80 "${G[@]}" --out @OUT@
soak ae_train cmp_ae state.bin -- ae train --data "$W/ph" --splits "$W/splits.csv" --steps 150 --batch 8 --ckpt-every 10 --out @OUT@
soak synth cmp_synth "" -- synth --generator "$BASE" "${D[@]}" --total 256 --steps 4 --batch 8 --out @OUT@
soak classify_train cmp_classifier state.bin -- classify train "${D[@]}" --arch cnn --epochs 15 --patience 15 --out @OUT@
cat >"$W/exp.json" <<EOF
{"data": "$W/ph", "splits": "$W/splits.csv", "captions": "$W/caps.jsonl",
 "generator": {"checkpoint": "$BASE"}, "synth": {"total": 96, "steps": 4, "batch": 8},
 "real_sizes": [60], "seeds": [0, 1], "arms": ["real", "real+synthetic"],
 "classifier": {"archs": ["cnn"], "epochs": 6, "patience": 6, "width": 8}}
EOF
soak experiment cmp_experiment "" -- experiment --config "$W/exp.json" --out @OUT@

# SIGTERM: the current step is checkpointed, exit 143, --resume goes on from that step.
T=$W/sigterm
"$LF" --threads 1 train "${D[@]}" --preset tiny --steps 100000 --batch 8 --ckpt-every 100000 \
  --sample-every 0 --val-every 0 --log-every 1 --out "$T" >"$W/sigterm.txt" 2>&1 &
pid=$!
for _ in $(seq 600); do [[ $(wc -l 2>/dev/null <"$T/metrics.jsonl" || echo 0) -ge 5 ]] && break; sleep 0.05; done
kill -TERM $pid
wait $pid
code=$?
step=$(grep -o 'checkpointing step [0-9]*' "$W/sigterm.txt" | grep -o '[0-9]*$')
ok=NO
[[ $code == 143 && -n $step && -f $T/state.bin ]] && ok=yes
[[ $ok == yes ]] || fail=1
rows+=("| train, SIGTERM mid-run | - | 0 | 0 | exit $code, step ${step:-?} checkpointed: $ok |")

# A full disk: the run is copied onto a tmpfs with a few kB to spare, so the next checkpoint
# cannot be written (where this user may not mount, a file-size limit stands in for it): a clear
# error, and the previous checkpoint stays intact.
F=$W/fulldisk
mkdir -p "$F"
kb=$(($(du -sk "$W/ref_train" | cut -f1) + 24))
if mount -t tmpfs -o size=${kb}k lesionflow_soak "$F" 2>/dev/null; then
  disk="full ${kb} kB tmpfs"
  trap 'umount "$F" 2>/dev/null' EXIT
  limit=unlimited
else
  disk="writes fail (ulimit -f)"
  limit=64
fi
cp -r "$W/ref_train/." "$F/" || { echo "soak: the run does not fit the tmpfs"; fail=1; }
before=$(sha256sum "$F/checkpoint.safetensors" "$F/ema.safetensors" "$F/state.bin")
(trap '' XFSZ; ulimit -f $limit; "$LF" --threads 1 train "${D[@]}" --preset tiny --steps 210 \
  "${G[@]}" --out "$F" --resume) >"$W/fulldisk.txt" 2>&1
code=$?
after=$(sha256sum "$F/checkpoint.safetensors" "$F/ema.safetensors" "$F/state.bin")
ok=NO
[[ $code != 0 && $before == "$after" ]] && grep -q "write failed" "$W/fulldisk.txt" && ok=yes
[[ $ok == yes ]] || { fail=1; tail -3 "$W/fulldisk.txt"; }
rows+=("| train --resume, $disk | - | 0 | 1 | exit $code, '$(grep -o 'write failed[^;]*' "$W/fulldisk.txt" | head -1)', old checkpoint intact: $ok |")
[[ $limit == unlimited ]] && umount "$F"

echo
echo "| command | uninterrupted | SIGKILLs | resumes | final outputs equal the uninterrupted run |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit $fail
