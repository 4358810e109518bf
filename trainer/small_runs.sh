#!/usr/bin/env bash
# The small-scale runs of README "Training at small scale": PLTrans stages 1→2→3 in sequence, alongside the PGDiff
# restorer and the VSPBFR restoration stage, all at once on one GPU (each is far too small to fill it). Every
# config carries its own max_minutes, so the whole set ends in about nine minutes.
#   trainer/small_runs.sh DATA_ROOT [OUT_ROOT] [extra key=value overrides for every run]
# SCALE=cpu runs the *_cpu configs (64 px, about 45 minutes for PLTrans on 2 cores); METHODS picks the methods
# (default "pltrans pgdiff vspbfr").
set -u
scale=${SCALE:-small}
methods=" ${METHODS:-pltrans pgdiff vspbfr} "
data=${1:?usage: trainer/small_runs.sh DATA_ROOT [OUT_ROOT] [overrides...]}
out=${2:-runs/small}
shift $(( $# >= 2 ? 2 : 1 ))
py=${PYTHON:-python}
mkdir -p "$out"
run() {  # stage-config output-name [more overrides]
  local cfg=$1 name=$2; shift 2
  $py trainer/train.py --config "trainer/configs/${cfg}_$scale.yaml" data.root="$data" output_dir="$out/$name" "$@" \
    >"$out/$name.log" 2>&1
}
[[ $methods == *" pltrans "* ]] && (
  run pltrans_dictionary pltrans_dictionary "$@" &&
  run pltrans_regularizer pltrans_regularizer \
    models.model.dictionary="$out/pltrans_dictionary/export/model.safetensors" "$@" &&
  run pltrans_restoration pltrans_restoration \
    models.restorer.init="$out/pltrans_regularizer/export/model.safetensors" "$@"
  echo "pltrans chain exit $?" >>"$out/status.txt"
) &
[[ $methods == *" pgdiff "* ]] && ( run pgdiff_restorer pgdiff_restorer "$@"; echo "pgdiff_restorer exit $?" >>"$out/status.txt" ) &
[[ $methods == *" vspbfr "* ]] && ( run vspbfr_restoration vspbfr_restoration "$@"; echo "vspbfr_restoration exit $?" >>"$out/status.txt" ) &
wait
cat "$out/status.txt"
