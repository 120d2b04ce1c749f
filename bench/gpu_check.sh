#!/usr/bin/env bash
# Issue 23 on a GPU machine, in one call: the device-sensitive tests on CUDA, the sampler benchmark on
# ResNet-50 (bare forward per precision, the paper's loop, rscert fixed and sequential, CUDA graphs,
# the compiled generator, channels-last on and off, torch.compile), and `rscert certify` end to end on
# ImageNet-sized JPEG shards. Every step has a hard time limit and its own log under $OUT; a step that
# would not fit in what is left of GPU_CHECK_BUDGET seconds is skipped (summary.txt says so).
#
#   bash bench/gpu_check.sh                       # on the GPU machine, from the repository root
#   GPU_CHECK_SMALL=1 OUT=/tmp/gc bash bench/gpu_check.sh   # dry run on a CPU: tiny models, N and batches
#
# Needs: python (3.12 on the device) with torch, torchvision, numpy, scipy, pyarrow, fsspec, pillow, tqdm;
# the others come as wheels in .whl/ (no index, no network: pydantic, pyyaml, webdataset, pytest and
# their dependencies, and Polars, which `rscert certify` imports for its closing summary), installed with
# --no-deps into a temporary folder that goes first on PYTHONPATH. numba, Ray and statsmodels are not
# needed: the selected tests and the in-process certify path on CUDA do not import them.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-check-out}
SMALL=${GPU_CHECK_SMALL:-0}
PY=${PYTHON:-}
if [ -z "$PY" ]; then  # the interpreter that has torch
  for c in python3 python; do "$c" -c "import torch" >/dev/null 2>&1 && { PY=$(command -v "$c"); break; }; done
  PY=${PY:-python3}
fi
if [ "$SMALL" = 1 ]; then BUDGET=${GPU_CHECK_BUDGET:-1500}; DEVICES=${GPU_CHECK_DEVICES:-cpu}
else BUDGET=${GPU_CHECK_BUDGET:-340}; DEVICES=${GPU_CHECK_DEVICES:-cuda}; fi
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
T0=$(date +%s)
note() { echo "$*" | tee -a "$SUMMARY"; }

# -- environment: wheels into a private folder, rscert importable -----------------------------------
SITE=$(mktemp -d)/site
mkdir -p "$SITE"
{
  echo "wheels: $(ls .whl 2>/dev/null | tr '\n' ' ')"
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check --target "$SITE" .whl/*.whl \
      || { echo "pip failed: unzipping the wheels instead";
           for w in .whl/*.whl; do "$PY" -m zipfile -e "$w" "$SITE"; done; }
  fi
} > "$OUT/00_install.log" 2>&1
[ -e "$SITE/rscert" ] || ln -s "$ROOT/pipeline" "$SITE/rscert"  # the package folder under its import name
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
note "gpu_check: small=$SMALL budget=${BUDGET}s devices=$DEVICES python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"

RC=0
step() {  # step NAME LIMIT_S MIN_S COMMAND...: skipped unless MIN_S of the budget are left; a hard limit;
          # the log in $OUT/NAME.log, its tail on stdout; the exit status in $RC
  local name=$1 limit=$2 need=$3 start left
  shift 3
  start=$(date +%s)
  left=$((BUDGET - (start - T0)))
  if [ "$left" -lt "$need" ]; then note "SKIP $name: ${left}s of the budget left, needs ${need}s"; RC=125; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  note "== $name (limit ${limit}s, at t=$((start - T0))s)"
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  RC=$?
  note "   $name: rc=$RC in $(($(date +%s) - start))s$([ "$RC" = 124 ] && echo ' (TIMED OUT)')"
  tail -n "${TAIL:-25}" "$OUT/$name.log"
}

step 01_env 60 10 bash -c 'nvidia-smi || echo "no nvidia-smi"; echo "C compilers: $(command -v gcc cc clang | tr "\n" " ")"; "$0" bench/gpu_env.py' "$PY"

# -- 1. the device-sensitive tests on CUDA ---------------------------------------------------------
# Every test that takes conftest's `device` fixture, on $DEVICES only (-k selects the [cuda] ids; the
# CPU-only tests run in CI). Deselected: the numba kernel's variants ("kernel"; numba is not here).
FILES=""
for f in tests/test_noise_devices.py tests/test_sampler.py tests/test_sampler_soundness.py \
         tests/test_sequential_sampling.py tests/test_linear_certificate.py tests/test_noise_families.py \
         tests/test_*discrete*.py; do
  [ -f "$f" ] && FILES="$FILES $f"
done
RSCERT_TEST_DEVICES=$DEVICES TAIL=40 step 02_tests 150 30 "$PY" -m pytest -q -p no:cacheprovider -rfE --tb=short \
  --continue-on-collection-errors --junitxml "$OUT/02_tests.xml" -k "$DEVICES and not kernel" $FILES

# -- 2. the sampler on ResNet-50 ---------------------------------------------------------------------
if [ "$SMALL" = 1 ]; then
  MODEL=resnet18; SIZE=32; BATCHES=8,16; BIG=16; STEPS=2; REPEATS=1; EXTRA=""; PREC=fp32,bf16
  E2E="--model resnet18 --inputs 2 --n0 5 --n 20 --batch 1 --precision fp32"  # batch 1: no numba on CPU
else
  MODEL=resnet50; SIZE=224; BATCHES=256,512,1024; BIG=512; STEPS=3; REPEATS=2; EXTRA="--cuda-graphs"
  PREC=fp32,bf16,fp16
  E2E="--model resnet50 --inputs 4 --n0 100 --n 100000 --batch 1024 --precision bf16 --channels-last"
fi
TAIL=80 step 03_bench_sampler 150 60 "$PY" bench/sampler_bench.py --model $MODEL --size $SIZE --batch $BATCHES \
  --steps $STEPS --repeats $REPEATS --precisions $PREC --channels-last --compile-noise --certify $EXTRA \
  --json "$OUT/bench_sampler.jsonl"

# -- 3. rscert certify end to end, in this process (the compiled generator; eager if that fails) -------
TAIL=12 step 04_certify_e2e 120 60 "$PY" bench/certify_bench.py $E2E --compile-noise --json "$OUT/certify_e2e.jsonl"
E2E_RC=$RC

# -- 4. what channels-last and torch.compile bring (batch 512) ----------------------------------------
TAIL=20 step 05_bench_nchw 60 30 "$PY" bench/sampler_bench.py --model $MODEL --size $SIZE --batch $BIG \
  --steps $STEPS --repeats $REPEATS --precisions fp32,bf16 --no-paper --json "$OUT/bench_nchw.jsonl"
TAIL=20 step 06_bench_compile 150 90 "$PY" bench/sampler_bench.py --model $MODEL --size $SIZE --batch $BIG \
  --steps $STEPS --repeats $REPEATS --precisions bf16 --no-paper --channels-last --compile --compile-noise \
  $EXTRA --json "$OUT/bench_compile.jsonl"

# -- 5. end to end with the eager generator (the default), if time is left ----------------------------
TAIL=12 step 07_certify_e2e_eager 120 $([ "$E2E_RC" = 0 ] && echo 70 || echo 40) "$PY" bench/certify_bench.py \
  $E2E --json "$OUT/certify_e2e.jsonl"

note "gpu_check: done in $(($(date +%s) - T0))s; logs in $OUT"
echo; echo "== figures"; "$PY" bench/gpu_results.py "$OUT" 2>&1 | tee "$OUT/figures.txt"
echo; echo "== summary"; cat "$SUMMARY"
