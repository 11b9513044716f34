#!/usr/bin/env bash
# Train the default model (issue 12) from scratch on the synthetic corpus; resumable: run it again after a stop
# (Ctrl-C / SIGTERM save a checkpoint) and it continues where it was.
#
#   bash scripts/train_default_model.sh [RUNS_DIR]        # default: $RUNS or ../runs beside the checkout
#   .venv/bin/python scripts/ship_model.py RUNS_DIR/default RUNS_DIR/corpus12    # when its test CER is good
#
# 1. the corpus: `paraformer-ext make-corpus RUNS_DIR/corpus12 --hours 12 --seed 0` (seeded: a missing corpus is
#    regenerated identically; about 4 minutes on 2 cores; needs espeak-ng and sox, scripts/system_deps.sh);
# 2. `paraformer-ext train` with paraformer_ext/data/recipes/syn-c.yaml, 60 epochs, lr 1.5e-3, warmup 400, a
#    checkpoint every 10 minutes; --bf16 where the CPU computes bf16 natively (AMX or AVX-512 BF16: 1.5-2x the
#    float32 step there), float32 elsewhere. Runs at nice 5, so other work on the machine comes first.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-${RUNS:-$(cd .. && pwd)/runs}}
PX=.venv/bin/paraformer-ext
mkdir -p "$RUNS"
[ -f "$RUNS/corpus12/train.jsonl" ] || $PX make-corpus "$RUNS/corpus12" --hours 12 --seed 0
OUT=$RUNS/default
EXTRA=()
[ -f "$OUT/checkpoints/last.pt" ] && EXTRA+=(--resume)
if .venv/bin/python -c "import sys, torch; sys.exit(0 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 1)" 2>/dev/null; then
  EXTRA+=(--bf16)
fi
exec nice -n 5 $PX train --config paraformer_ext/data/recipes/syn-c.yaml --tokens "$RUNS/corpus12/tokens.json" \
  --train-data "$RUNS/corpus12/train.jsonl" --valid-data "$RUNS/corpus12/valid.jsonl" --output-dir "$OUT" \
  --epochs 60 --lr 1.5e-3 --warmup 400 --save-every-min 10 --seed 0 "${EXTRA[@]}"
