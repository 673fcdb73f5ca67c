#!/usr/bin/env bash
# Full-size retraining of the demo weights in one command on a lent GPU machine (models/MODEL_CARD.md,
# "Retraining on a GPU"). The machine has PyTorch but not nibabel, nilearn (the MNI152 template) or isal:
#
#   here, once:   bash models/retrain_gpu.sh --fetch-wheels      # wheels into .whl/ (git-ignored)
#   the device:   run(command="bash models/retrain_gpu.sh", carry=[".whl"], timeout_s=600)
#
# It makes the training phantoms on every core, times a few steps, sizes the run to TRAIN_MINUTES,
# trains from the shipped weights, and leaves the checkpoints and their provenance in $OUT/run, the log in $OUT.
# Every knob is an environment variable; the defaults fit one 10-minute command. A CPU dry run:
#   CASES=4 PATCH=32 BATCH=1 TRAIN_MINUTES=0.2 PROBE_STEPS=2 VAL_CASES=1 OUT=/tmp/gpu-out bash models/retrain_gpu.sh
set -euo pipefail

OUT=${OUT:-runs/gpu-out}
WORK=${WORK:-runs/gpu-work}
CASES=${CASES:-192}           # training phantoms, seed 6000: none of the sets the project evaluates on
NON_ENHANCING=${NON_ENHANCING:-0.15}
PATCH=${PATCH:-128}           # near a whole brain box, so InstanceNorm sees statistics like inference's
BATCH=${BATCH:-2}
LR=${LR:-1e-4}
CE_WEIGHT=${CE_WEIGHT:-1}
NO_ET_FRACTION=${NO_ET_FRACTION:-0.2}
EPOCHS=${EPOCHS:-5}
VAL_CASES=${VAL_CASES:-6}
TRAIN_MINUTES=${TRAIN_MINUTES:-6}
PROBE_STEPS=${PROBE_STEPS:-12}
INIT=${INIT:-models/latup-demo.safetensors}
SEED=${SEED:-7}
CORES=$(nproc)
WORKERS=${WORKERS:-$((CORES > 2 ? CORES - 2 : 1))}
WHEELS="nilearn==0.14.1 nibabel==5.4.2 isal==1.9.1"

if [[ ${1:-} == --fetch-wheels ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    # shellcheck disable=SC2086
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS
    exit 0
fi

mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/retrain.log") 2>&1
started=$(date +%s)
stamp() { echo "[$(($(date +%s) - started)) s] $*"; }

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
cli() { python3 -m latup_edge.cli "$@"; }
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

stamp "phantoms: $CASES on $CORES processes"
cli phantom "$WORK/train" --n "$CASES" --seed 6000 --non-enhancing "$NON_ENHANCING" --workers "$CORES" >/dev/null

train_flags=(--patch "$PATCH" --batch "$BATCH" --lr "$LR" --lr-schedule poly --l2 0 --grad-clip 1
    --tumour-fraction 0.5 --no-et-fraction "$NO_ET_FRACTION" --ce-weight "$CE_WEIGHT" --seed "$SEED"
    --workers "$WORKERS" --init-from "$INIT")

stamp "probe: $PROBE_STEPS steps on 4 cases"
mkdir -p "$WORK/probe-data"
for case in $(ls "$WORK/train" | head -4); do ln -sfn "$(realpath "$WORK/train/$case")" "$WORK/probe-data/$case"; done
rm -rf "$WORK/probe"
cli train "$WORK/probe-data" -o "$WORK/probe" "${train_flags[@]}" --epochs 1 --steps-per-epoch "$PROBE_STEPS" \
    --val-cases 0 >/dev/null
steps_per_epoch=$(python3 - "$WORK/probe/state.json" "$PROBE_STEPS" "$TRAIN_MINUTES" "$EPOCHS" <<'EOF'
import json, sys
state, probe_steps, minutes, epochs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
per_step = json.load(open(state))["seconds"] / probe_steps  # warm-up included: an overestimate
print(max(1, int(minutes * 60 / per_step / epochs)), file=sys.stdout)
print(f"{per_step:.3f} s a step in the probe", file=sys.stderr)
EOF
)
stamp "training: $EPOCHS epochs x $steps_per_epoch steps (limit $TRAIN_MINUTES min + 1)"
# Straight into $OUT/run: whatever a timeout leaves there still comes back (not the 24 MB optimizer state).
cli train "$WORK/train" -o "$OUT/run" "${train_flags[@]}" --epochs "$EPOCHS" --steps-per-epoch "$steps_per_epoch" \
    --val-cases "$VAL_CASES" --max-minutes "$(python3 -c "print($TRAIN_MINUTES + 1)")"
stamp "done"
ls -la "$OUT/run"
