#!/usr/bin/env bash
# The tiny-tabletop backbone's two training stages in ONE call of the `device` tool (docs/tiny_tabletop.md,
# "On a GPU machine"): render the scenes, run the vision stage, then the language stage, each for a
# fixed share of wall time (checkpointed, so the CPU can go on from there), ship the model, and pack
# the runs into $OUT (the tool brings back at most 8 files of 16 MiB: one tarball per run).
#
#   run(command="bash scripts/gpu_backbone.sh", timeout_s=600)        # the device tool, from the repo root
#   # back here: for t in <files_at>/*.tar; do tar xf $t -C runs/gpu; done   (then the CPU steps of the doc)
#
# Defaults: the vision stage goes on from the shipped model's tower (models/tiny-tabletop-llava);
# VISION_S / LANGUAGE_S seconds per stage (240 / 180); STEPS_V / STEPS_L schedule lengths. The same
# script runs on the CPU for a check: DEVICE=cpu VISION_S=5 LANGUAGE_S=5 TRAIN=8 OUT=/tmp/g bash ...
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that comes back}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-$(nproc)}
TRAIN=${TRAIN:-18000}
VAL=${VAL:-250}
VISION_S=${VISION_S:-240}
LANGUAGE_S=${LANGUAGE_S:-180}
STEPS_V=${STEPS_V:-40000}
STEPS_L=${STEPS_L:-12000}
INIT=${INIT:-models/tiny-tabletop-llava}
WORK=${WORK:-/tmp/gpu_backbone}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
pp() { python3 -m part_point_ros.cli.main "$@"; }
mkdir -p "$WORK" "$OUT"
stage() { pp backbone "$@" --cache "$WORK/scenes" --train "$TRAIN" --val "$VAL" --device "$DEVICE" \
    --threads "$JOBS" --eval-every 1000 --save-every 1000; }
{
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    pp backbone scenes --cache "$WORK/scenes" --train "$TRAIN" --val "$VAL" --test 0 --jobs "$JOBS"
    stage vision --run "$WORK/vision" --init-from "$INIT" --steps "$STEPS_V" --flip --time-limit "$VISION_S"
    stage language --run "$WORK/language" --init-from "$WORK/vision/vision" --steps "$STEPS_L" \
        --time-limit "$LANGUAGE_S"
    pp backbone ship --run "$WORK/language" --out "$WORK/ship"
} 2>&1 | tee "$OUT/gpu_backbone.log"
# what the CPU needs to go on (weights, optimizer states, histories; not the renders), < 16 MiB a file
tar cf "$OUT/vision.tar" -C "$WORK" --exclude=vision/vision vision    # ~11 MB
tar cf "$OUT/language_weights.tar" -C "$WORK" --exclude=language/state.pt language
tar cf "$OUT/language_state.tar" -C "$WORK" language/state.pt
tar cf "$OUT/ship.tar" -C "$WORK" ship
ls -l "$OUT"
