#!/usr/bin/env bash
# Issue #21's GPU figures in one prepared run, sized for a lent accelerator (about 9 minutes):
#   1. the training step per precision and layout on the GPU (speed.py part 6), and
#   2. CIFAR-10 runs side by side on the one GPU (bf16, channels-last, batch 512, cosine schedule, losses read
#      back every 50 batches), each a fully binary run and its unsharpened twin, with history and checkpoints
#      every epoch in runs/gpu/ (ignored, kept on a warm machine between calls): a stopped call is rerun with
#      the same command and every run resumes where it stopped.
# Results go to $OUT (the device tool brings that folder back). Before the call, copy the CIFAR zip into
# the ignored data/ folder (mkdir -p data/cifar10-jpeg && cp ../shared/data/cifar10-jpeg/cifar10-jpeg.zip
# data/cifar10-jpeg/) and name "data" in the device call's carry. The GPU machine's own python3 holds a
# CUDA PyTorch; whetstone runs from src/ (PYTHONPATH), nothing is installed. From the repository root:
#   OUT=$OUT bash benchmarks/gpu_figures.sh                                   # on the GPU machine
#   SMOKE=1 PY=.venv/bin/python OUT=/tmp/gpu bash benchmarks/gpu_figures.sh   # minutes on a CPU, tiny budgets
# COMPILE=1 adds the torch.compile rows to the step table (a few minutes of compilation: a second call).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder the results go to}
DATA=${WHETSTONE_DATA:-data}
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
RUNS=${RUNS:-runs/gpu}
mkdir -p "$OUT/runs" "$RUNS"
if [ -n "${SMOKE:-}" ]; then
    EPOCHS=1; LIMIT="--limit 512"; BASE=8; ROUNDS=1; DEVICE=cpu; DATASET=mnist-mini
else
    EPOCHS=${EPOCHS:-40}; LIMIT=""; BASE=${BASE:-128}; ROUNDS=5; DEVICE=cuda; DATASET=cifar10
fi
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>/dev/null || echo "no GPU" > "$OUT/gpu.txt"

# 1. The step (writes its own markdown section into a copy of docs/results.md).
cp docs/results.md "$OUT/results.md"
$PY benchmarks/speed.py --only precision --device "$DEVICE" --rounds "$ROUNDS" ${COMPILE:+--compile} \
    --write "$OUT/results.md" > "$OUT/step.log" 2>&1 || echo "step benchmark failed: see step.log" >> "$OUT/errors.txt"

# 2. Runs side by side; each resumes if its folder holds a checkpoint.
train() {  # NAME, then extra flags
    local name=$1; shift
    local folder="$RUNS/$name"
    if [ -f "$folder/checkpoint.pt" ]; then
        $PY -m whetstone train --resume "$folder" --data-dir "$DATA" --no-progress --sync-every 50 \
            >> "$OUT/runs/$name.log" 2>&1
    else
        $PY -m whetstone train --model cifar-conv-bn --dataset "$DATASET" --data-dir "$DATA" --device "$DEVICE" \
            --model-option base="$BASE" --model-option pool_first=true --epochs "$EPOCHS" --lr-schedule cosine \
            --optimizer adamw --weight-decay 0.05 --precision bf16 --channels-last --batch-size 512 --lr 0.006 \
            --augment --seed 0 --no-progress --sync-every 50 --out "$folder" $LIMIT "$@" > "$OUT/runs/$name.log" 2>&1
    fi
}
train binary --start-epoch 8 --steps 6 --surrogate 0 &
train twin --sharpener none &
wait
for name in binary twin; do  # what comes back: the histories and logs (checkpoints stay in $RUNS)
    mkdir -p "$OUT/runs/$name"
    cp "$RUNS/$name"/history.* "$RUNS/$name"/config.toml "$OUT/runs/$name/" 2>/dev/null || true
    tail -n 5 "$OUT/runs/$name.log" > "$OUT/runs/$name.summary.txt" || true
done
echo "done: $OUT"
