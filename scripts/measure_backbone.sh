#!/usr/bin/env bash
# From a language-stage run of the tiny-tabletop backbone to every number the model card and the
# README's results table need (docs/tiny_tabletop.md, "The shipped model"), in one command:
#
#   bash scripts/measure_backbone.sh runs/backbone4/language runs/backbone4/m7400 runs/synth6
#
# 1. ship the run (fp16 model directory)        5. the shipped config's head and the paper's, side by side
# 2. localization heads on 300 train queries   6. A2P on test and on validation (which chose the config)
# 3. head-training caches: train, val          7. attention and text pointing (live, test seeds)
# 4. the model card (`backbone evaluate`)      8. the key oracle (scripts/key_oracle.py)
# 9. the shipped row's presence output trained 6 more epochs alone (the head that ships), its found
#    threshold on validation scenes (written into its config), then the "not here" / every-instance
#    tables on test and twin scenes (docs/evaluation.md)
#
# Needs the data of config/train_synthetic_tabletop.yaml's header under data/synthetic (train, train_twins,
# val, test). Each step writes its own output and is skipped when that output exists, so the script resumes where
# a session ended. Two jobs at a time, one thread each (the 2-core machine: ~35 minutes in all).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?language run directory}
B=${2:?output directory for the shipped model, heads and report}
S=${3:?output directory for caches, heads and evaluations}
SCENES=${SCENES:-runs/backbone3/scenes}
CONFIG=config/train_synthetic_tabletop.yaml
export OMP_NUM_THREADS=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
mkdir -p "$B" "$S"
LOG="$S/measure.log"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
once() {  # once OUTPUT COMMAND...: run COMMAND unless OUTPUT exists
    local out=$1; shift
    if [ -e "$out" ]; then say "have $out"; return; fi
    say "start: $*"
    "$@" >> "$LOG.$(echo "${out#"$S"/}" | tr / _).log" 2>&1  # one log per step
    say "done: $out"
}
both() {  # both "CMD1" "CMD2": run two steps side by side; fail when either fails
    eval "$1" & local a=$!
    eval "$2" & local b=$!
    wait $a && wait $b
}
once "$B/ship/config.json" part-point backbone ship --run "$RUN" --out "$B/ship"
once "$B/heads.json" part-point select-heads --backbone "$B/ship" --data synthetic:data/synthetic \
    --data-arg split=train --k 5 --max-samples 300 --out "$B/heads.json"
K=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['k'])" "$B/heads.json")
O=(backbone="$B/ship" heads="$B/heads.json" k="$K")
both 'once "$S/cache/eval/index.json" part-point cache --config $CONFIG "${O[@]}" cache_dir="$S/cache" out_dir="$S"' \
    'once "$B/report.json" part-point backbone evaluate --cache "$SCENES" --model "$B/ship" \
        --heads "$B/heads.json" --report "$B/report.json" --threads 1'
both 'once "$S/valcache/eval/index.json" part-point cache --config $CONFIG --split eval "${O[@]}" cache_dir="$S/valcache" \
        out_dir="$S" eval_data.args.split=val' \
    'once "$S/eval_live/report.json" part-point eval --config $CONFIG --method attention,text \
        --out "$S/eval_live" "${O[@]}" out_dir="$S"'
row() {  # row NAME OVERRIDES...: train a head from the cache, evaluate it on test and validation
    local name=$1; shift
    local resume=(); [ -d "$S/$name/checkpoints" ] && resume=(--resume)  # a session ended mid-training
    once "$S/$name/head" part-point train --config $CONFIG "${resume[@]}" "${O[@]}" cache_dir="$S/cache" \
        out_dir="$S/$name" "$@"
    once "$S/$name/eval" part-point eval --config $CONFIG --method a2p --from-cache "${O[@]}" \
        cache_dir="$S/cache" out_dir="$S/$name" "$@"
    once "$S/$name/eval_val" part-point eval --config $CONFIG --method a2p --from-cache --out "$S/$name/eval_val" \
        "${O[@]}" cache_dir="$S/valcache" out_dir="$S/$name" "$@"
}
both 'row shipped' 'row paper head.patch_loss=bce head.supervision=sdf head.presence=false'
# beside the key oracle, the head that ships: the "shipped" row's presence output trained 6 more
# epochs, the rest frozen (docs/evaluation.md, "A head that learns not here"; its pointing is the row's)
both 'once "$S/oracle.txt" sh -c "python3 scripts/key_oracle.py $S/cache/train $S/cache/eval --train 3000 \
        > $S/oracle.txt.part && mv $S/oracle.txt.part $S/oracle.txt"' \
    'once "$S/presence_e6/head" part-point train --config $CONFIG "${O[@]}" cache_dir="$S/cache" \
        out_dir="$S/presence_e6" init_head="$S/shipped/head" "train_only=[presence]" epochs=6'
M=(--backbone "$B/ship" --head "$S/presence_e6/head" --heads "$B/heads.json")
once "$S/calibration_val.md" sh -c 'python3 -m part_point_ros.training.calibration --method a2p \
    --seeds 100000:100040 --twin-seeds none --write-threshold "$@" > "$0.part" && mv "$0.part" "$0"' "$S/calibration_val.md" "${M[@]}"
once "$S/calibration_test.md" sh -c 'python3 -m part_point_ros.training.calibration --method a2p,attention \
    --seeds 200000:200040 --twin-seeds 1200000:1200040 "$@" > "$0.part" && mv "$0.part" "$0"' \
    "$S/calibration_test.md" "${M[@]}"
say "all done: $B/report.json, $S/{shipped,paper}/eval{,_val}, $S/eval_live, $S/oracle.txt, $S/presence_e6/head, \
$S/calibration_*.md"
