#!/usr/bin/env bash
# Scaling table of issue 13 on a many-core machine (to be confirmed on a 16-core node).
#
# Run from the repository root:  bash benchmarks/device_scaling.sh [N] [BOX]
# (defaults 12000 particles of 256²). It
#   1. installs what it lacks: csplugin (editable, from this checkout) with pyfftw and numba,
#      and RELION 3.1 where apt-get can (RELION rows are skipped without it);
#   2. generates the synthetic data set into /dev/shm (tmpfs: no disk in the timings) and
#      writes every output there too;
#   3. runs benchmarks/bench_scaling.py at 1, 4 and 16 threads (taskset + CSPLUGIN_THREADS /
#      NUMBA_NUM_THREADS), whole commands and the per-stage breakdown, side by side;
#   4. runs the Dask path: power spectra (pad 1 and defaults) and export cubic with
#      --workers 1, 4, 8, 16 (local processes, one thread each) beside the plain run.
# Everything is printed and also written to /dev/shm/csplugin_scaling/results.txt.
set -euo pipefail

N=${1:-12000}
BOX=${2:-256}
ROOT=/dev/shm/csplugin_scaling
OUT=$ROOT/out
mkdir -p "$ROOT"
LOG=$ROOT/results.txt
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }

PY=${PYTHON:-python3}
# 1. what it lacks
if ! "$PY" -c "import csplugin, pyfftw, numba, dask.distributed" 2>/dev/null; then
    "$PY" -m pip install -q -e ".[test]" pyfftw numba "dask[distributed]"
fi
if ! command -v relion_image_handler >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq relion \
            >/dev/null) || say "RELION could not be installed: RELION rows skipped"
    else
        say "RELION not installed: RELION rows skipped"
    fi
fi
export CSPLUGIN_CACHE_DIR=$ROOT/cache   # FFTW wisdom of this machine, kept between runs
CORES=$(nproc)
say "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $CORES cores," \
    "$(free -g | awk '/Mem:/{print $2}') GiB; $N particles of ${BOX}²; $(date -u)"

THREADS="1 4 16"
if [ "$CORES" -lt 16 ]; then
    THREADS="1"; for t in 4 16; do [ "$t" -le "$CORES" ] && THREADS="$THREADS $t"; done
    say "only $CORES cores: threads $THREADS"
fi

# 2.+3. data set in /dev/shm, whole commands and stages at 1/4/16 threads
"$PY" benchmarks/bench_scaling.py --n "$N" --box "$BOX" --threads $THREADS \
    --root "$ROOT/data" --out "$OUT" 2>&1 | tee -a "$LOG"

# 4. the Dask path (local processes, one thread each), beside the plain run on all cores
CS=$ROOT/data/n${N}_box${BOX}/particles.cs
say ""
say "dask: wall s (peak MB of the driver) with --workers W, one thread per worker"
run() {  # name, command...
    local name=$1; shift
    rm -rf "$OUT"; mkdir -p "$OUT"; sync
    cat "$ROOT"/data/n${N}_box${BOX}/*.mrcs > /dev/null
    local start ms
    start=$(date +%s%N)
    if /usr/bin/time -f "%M" -o "$ROOT/peak" "$@" > "$ROOT/last.log" 2>&1; then
        ms=$(( ($(date +%s%N) - start) / 1000000 ))
        say "$(printf '%-44s %5d.%02d s %7d MB' "$name" $((ms / 1000)) $((ms % 1000 / 10)) \
            "$(( $(tail -1 "$ROOT/peak") / 1024 ))")"
    else
        say "$(printf '%-44s failed: %s' "$name" "$(tail -1 "$ROOT/last.log")")"
    fi
}
for job in "power-spectrum --pad 1 --no-mask --no-normalize --keep-detector-lines --axis class" \
           "power-spectrum" "export-aligned --interpolation cubic"; do
    set -- $job
    cmd=$1; shift
    run "$cmd $* (plain, $CORES threads)" "$PY" -m csplugin "$cmd" "$CS" -o "$OUT/r" "$@" \
        --quiet --overwrite
    for w in 1 4 8 16; do
        [ "$w" -le "$CORES" ] || continue
        CSPLUGIN_THREADS=1 NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 \
            run "$cmd $* --workers $w" "$PY" -m csplugin "$cmd" "$CS" -o "$OUT/r" "$@" \
            --workers "$w" --quiet --overwrite
    done
done
say "results in $LOG"
