#!/usr/bin/env bash
# The GPU measurements of hyperdm, prepared to run in one short session on a machine with a CUDA GPU.
#
# Prepare here (a machine with internet or a PyPI mirror), from the repository root:
#     bash benchmarks/gpu_session.sh prepare     # .device/: geoopt's wheel, Fashion-MNIST's four idx .gz files
# Then on the GPU machine, from a copy of the repository with .device/ beside the code:
#     OUT=/some/dir bash benchmarks/gpu_session.sh bench      # kernel self-check, matcher and loop benchmarks, then
#                                                             # CUDA tests (~7 min)
#     OUT=/some/dir bash benchmarks/gpu_session.sh protocol   # DM on Fashion-MNIST, the paper's protocol, MMD and HDD
#
# Everything a phase produces goes to $OUT: session.log (all output), the benchmarks' JSON files and, for
# `protocol`, protocol_runs.tar.gz (the run directories). Put that archive in .device/ before the next
# `protocol` call and the runs continue from their last checkpoints (--resume), so the protocol may span
# several short sessions. Each step has its own time limit, so one slow step leaves time for the rest.
# DEVICE=cpu and QUICK=1 run the same steps on the CPU in a few minutes (to try the script).
set -u -o pipefail

phase=${1:?usage: gpu_session.sh prepare|bench|protocol}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
dev_dir=${DEVICE_DIR:-$here/.device}
device=${DEVICE:-cuda}
quick=${QUICK:-0}

if [ "$phase" = prepare ]; then
    mkdir -p "$dev_dir/fashion-mnist"
    python -m pip download --no-deps -d "$dev_dir" "geoopt>=0.5" || exit 1
    src=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
    for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
        cp "$src/$f" "$dev_dir/fashion-mnist/" || { echo "missing $src/$f (apt-get install dataset-fashion-mnist, or set FMNIST_DIR)"; exit 1; }
    done
    du -sh "$dev_dir"
    exit 0
fi

out=${OUT:?set OUT to the folder for the results}
mkdir -p "$out"
log=$out/session.log
export PYTHONUNBUFFERED=1 PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
step() {  # step SECONDS NAME COMMAND...: run with a time limit, log everything, never stop the session
    local limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$log"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=$?
    echo "=== $name: rc $rc after $((SECONDS - t0)) s" | tee -a "$log"
}

$py -c "import geoopt" 2>/dev/null || $py -m pip install -q --no-index --no-deps "$dev_dir"/geoopt-*.whl 2>&1 | tee -a "$log"
{
    date -u
    nvidia-smi 2>&1 | head -20
    $py -c "import torch, geoopt, hyperdm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else ''); print('geoopt', geoopt.__version__, 'hyperdm', hyperdm.__version__)"
    $py -c "import triton; print('triton', triton.__version__)" 2>&1
} 2>&1 | tee -a "$log"

data=$dev_dir/fashion-mnist
if [ "$phase" = bench ]; then
    if [ "$quick" = 1 ]; then reps=(--repeats 3 --warmup 1); loop=(--rounds 1 --batched-only --ipc 1 --batch-real 16); big=(--C 10 --D 256)
    else reps=(); loop=(--rounds 10); big=(--C 100 --D 4096); fi
    # first: are the Triton kernels right on this GPU? (the first-call self-check for a grid of settings)
    if [ "$quick" = 1 ]; then ksc=(--quick); else ksc=(); fi
    step 240 "kernel self-check" $py benchmarks/kernel_selfcheck.py --device "$device" "${ksc[@]}" \
        --out "$out/kernel_selfcheck_${device}.json"
    step 150 "matcher C=10 D=2048" $py benchmarks/bench_matcher.py --device "$device" --M 10 --compiled "${reps[@]}" \
        --out "$out/matcher_${device}_c10_d2048.json"
    step 150 "matcher ${big[*]}" $py benchmarks/bench_matcher.py --device "$device" --M 10 "${big[@]}" --dtypes float32 \
        --compiled "${reps[@]}" --out "$out/matcher_${device}_big.json"
    step 180 "DM iteration" $py benchmarks/bench_loop.py --device "$device" "${loop[@]}" --data-root "$data" \
        --name "loop_${device}_session"
    cp benchmarks/results/"loop_${device}_session.json" "$out/" 2>/dev/null
    # the tests last: on a GPU each new shape compiles the kernels anew (seconds each), and the benchmarks
    # check their own losses and gradients against float64, so a short session spends its time on numbers first
    step 240 "tests on $device" $py -m pytest -q -x -p no:cacheprovider tests/test_matcher_device_path.py tests/test_triton_kernels.py tests/test_fused.py
elif [ "$phase" = protocol ]; then
    work=$here/.device-runs
    mkdir -p "$work"
    [ -f "$dev_dir/protocol_runs.tar.gz" ] && tar -xzf "$dev_dir/protocol_runs.tar.gz" -C "$work"
    if [ "$quick" = 1 ]; then opts=(--preset cpu --iterations 4 --eval-every 0 --eval-epochs 2 --eval-runs 1 --batch-real 8); limit=120
    else opts=(--preset paper --eval-every 5000); limit=${RUN_LIMIT:-250}; fi
    for matcher in mmd hyperbolic; do
        run=$work/dm-$matcher-fashion-mnist-ipc10
        if $py -c "import json, sys; sys.exit(0 if json.load(open('$run/metrics.json')).get('final') else 1)" 2>/dev/null; then
            echo "$run: finished" | tee -a "$log"
            continue
        fi
        resume=()
        if [ -f "$run/checkpoint.pt" ]; then resume=(--resume); elif [ -d "$run" ]; then resume=(--overwrite); fi
        step "$limit" "DM $matcher IPC 10" $py -m hyperdm distill --method dm --dataset fashion-mnist --ipc 10 \
            --matcher "$matcher" --device "$device" --data-root "$data" --out "$run" "${opts[@]}" "${resume[@]}" --no-progress
    done
    tar -czf "$out/protocol_runs.tar.gz" -C "$work" .
    for f in "$work"/*/metrics.json; do [ -f "$f" ] && echo "$f: $(head -c 400 "$f")" | tee -a "$log"; done
else
    echo "unknown phase $phase (prepare, bench or protocol)"
    exit 2
fi
