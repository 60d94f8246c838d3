#!/usr/bin/env bash
# The GPU benchmark suite in one script: at most 10 minutes on one GPU, no network.
#
# On a CPU machine with the repository (network for packages only), once:
#   bench/gpu_suite.sh --prepare-only            # = bench/prepare_gpu_data.sh: -> bench/gpu-data/
# On the GPU machine (the folder carried with the tree: device tool `carry: ["bench/gpu-data"]`,
# and nanoGPT's model.py somewhere outside the repository, e.g. carried under shared/):
#   bench/gpu_suite.sh --nanogpt PATH/model.py [--out DIR] [--fidelity-budget 3s-rst]
# A second go into the same --out (results are appended) can run what the first missed:
#   bench/gpu_suite.sh --out DIR --stages calibrate,fidelity     # of side-by-side,calibrate,fidelity
# Anywhere, end to end on CPU in a few minutes (tiny presets, a step or two, tiny budgets):
#   bench/gpu_suite.sh --cpu-smoke --out /tmp/suite
#
# Stages, each under its own time limit (printed with its elapsed time; a stage that runs out is
# killed and the next one starts, so the whole suite stays inside TOTAL_S = 575 s):
#   1. side by side (bench/side_by_side.py, compiled, one process per preset): ours against
#      nanoGPT (gpt2-small), transformers BERT (bert-cramming) and T5 v1.1 (t5-v1_1-base).
#      Targets: GPT >= 1.15x nanoGPT, BERT and T5 >= 1.5x transformers compiled.
#   2. a fresh RST table for the three configs (`budgetlm calibrate`), written to DIR/table.json.
#   3. RST fidelity (bench/rst_fidelity.py --table) for every method and optimizer arm of the
#      three configs. Target: |RST - wall| / wall <= 5%.
# The configs are the shipped ones with the overrides of the last H100 figures
# (bench/results/README.md): a smaller global batch so that a short budget makes tens of steps,
# train.compile=false (tables are eager) and data.path at the carried prepared data.
# Output (default bench/results/gpu-suite-<date>/; a smoke's bench/gpu-data/smoke-<date>/):
# side-by-side.jsonl, table.json, rst-fidelity-<preset>.{jsonl,md}, configs/, log-*.txt and
# stages.txt. Relative paths given as arguments are read from the directory the script is started
# in. The package is imported from this tree (PYTHONPATH), with whatever Python is on PATH when
# there is no .venv; its dependencies (torch, transformers, tokenizers, pyyaml) must be there.
set -uo pipefail

NANOGPT=""
OUT=""
DATA=""
SMOKE=0
PREPARE_ONLY=0
FIDELITY_BUDGET=""
STAGES=side-by-side,calibrate,fidelity
while (($#)); do
    case $1 in
    --nanogpt) NANOGPT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    --prepare-only) PREPARE_ONLY=1; shift ;;
    --fidelity-budget) FIDELITY_BUDGET=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

# Paths given are the caller's; the stages run from the repository root.
[[ -n $NANOGPT ]] && NANOGPT=$(realpath -m "$NANOGPT")
[[ -n $OUT ]] && OUT=$(realpath -m "$OUT")
[[ -n $DATA ]] && DATA=$(realpath -m "$DATA")
cd "$(dirname "$0")/.."
DATA=${DATA:-bench/gpu-data}

if ((PREPARE_ONLY)); then
    exec bench/prepare_gpu_data.sh "$DATA"
fi
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
if ((SMOKE)); then # a smoke's numbers are not results: under the git-ignored data folder
    OUT=${OUT:-bench/gpu-data/smoke-$(date -u +%Y-%m-%d-%H%M)}
else
    OUT=${OUT:-bench/results/gpu-suite-$(date -u +%Y-%m-%d-%H%M)}
fi
mkdir -p "$OUT/configs"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" # this tree's budgetlm, installed or not

if ((SMOKE)); then
    # The tiny presets on CPU: every stage once, seconds each; the numbers mean nothing.
    DATA="$OUT/data"
    bench/prepare_gpu_data.sh --smoke "$DATA" >"$OUT/log-prepare.txt" 2>&1 ||
        { cat "$OUT/log-prepare.txt"; exit 1; }
    NAMES=(gpt-tiny bert-tiny t5-tiny)
    PRESETS=(gpt-tiny bert-tiny t5-tiny)
    # One thread: on a busy 2-core machine two threads per process oversubscribe it (a tiny
    # AdamW step timed at 0.9 s instead of 2 ms) and the smoke takes many times longer.
    export OMP_NUM_THREADS=1
    OVERRIDES=("train.threads=1")
    SBS_ARGS=(--compile no --repeats 2 --steps 1 --warmup 1 --batch 4)
    # Limits far above the work: a shared CPU can be several times slower than when idle, and a
    # smoke must not fail for the machine's speed (tests/bench runs it).
    SBS_LIMIT=(300 300 300)
    # Two sizes (T5's two stacks need two to fit), large enough that a tiny model's passes are
    # not all launch overhead and load: the fit refuses a cost that does not grow with depth.
    # Short whole-loop runs for the overheads: the smoke checks the stages, not the figures.
    CALIBRATE_ARGS=(--repeats 2 --warmup 1 --batch-sizes 8 16 --tolerance 100 --loop-steps 8)
    CALIBRATE_LIMIT=600
    FIDELITY_BUDGET=${FIDELITY_BUDGET:-0.5s-rst}
    TOTAL_S=3600
else
    NAMES=(gpt2-small bert-cramming t5-v1_1-base)
    PRESETS=(gpt2-small bert-cramming t5-v1_1-base)
    # Global batch (micro-batch as shipped): tens of steps in a few seconds of RST.
    declare -A BATCH=([gpt2-small]=128 [bert-cramming]=256 [t5-v1_1-base]=96)
    OVERRIDES=()
    SBS_ARGS=(--compile yes --repeats 3 --steps 3 --warmup 3)
    # Compiling ours and the reference is most of stage 1 (T5's two stacks take longest).
    SBS_LIMIT=(60 50 80)
    # Fewer repeats than calibrate's default: 3 configs and their 3 staged-growth targets must
    # fit in about 3.5 minutes, leaving about 3 for the 30 fidelity arms.
    CALIBRATE_ARGS=(--repeats 3 --warmup 1)
    CALIBRATE_LIMIT=40
    FIDELITY_BUDGET=${FIDELITY_BUDGET:-3s-rst}
    TOTAL_S=575 # + a stage's 10 s grace to be killed, + writing the configs: under 10 minutes
fi
[[ -f $DATA/paths.env ]] || {
    echo "no $DATA/paths.env: run bench/gpu_suite.sh --prepare-only on a CPU machine first" >&2
    exit 2
}
BUDGETLM_CACHE="$(cd "$DATA" && pwd)/cache"
export BUDGETLM_CACHE

# The arms of stage 3 (rst_fidelity.py's; RHO-loss runs apart, see there).
METHODS=(layer_stacking layer_drop staged selective_backprop)
OPTIMIZERS=(lion sophia muon)

START=$SECONDS
STATUS=0
echo "== $(date -u '+%Y-%m-%d %H:%M:%S') stages $STAGES" >>"$OUT/stages.txt"
left() { echo $((TOTAL_S - (SECONDS - START))); }
# stage NAME LIMIT_S LOG CMD...: run CMD under min(LIMIT_S, time left), log it, print the time.
stage() {
    local name=$1 limit=$2 log=$3 t0=$SECONDS rc
    shift 3
    ((limit > $(left))) && limit=$(left)
    if ((limit <= 0)); then
        echo "$name: skipped, the suite's $TOTAL_S s are spent" | tee -a "$OUT/stages.txt"
        STATUS=1
        return
    fi
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    ((rc == 124 || rc == 137)) && rc="timeout after $limit s"
    [[ $rc == 0 ]] || STATUS=1
    printf '%-40s %4d s (total %4d s) rc=%s\n' "$name" $((SECONDS - t0)) $((SECONDS - START)) \
        "$rc" | tee -a "$OUT/stages.txt"
}

# The configs as run: shipped config + overrides + data.path of the carried prepared data.
for name in "${NAMES[@]}"; do
    overrides=("${OVERRIDES[@]}")
    ((SMOKE)) || overrides+=("train.batch_size=${BATCH[$name]}" "train.compile=false")
    path=$(sed -n "s/^$name=//p" "$DATA/paths.env")
    [[ -n $path ]] || { echo "$DATA/paths.env has no dataset for $name" >&2; exit 2; }
    [[ $path == /* ]] || path="$PWD/$path" # relative to the repository root
    overrides+=("data.path=$path")
    "$PY" - "configs/$name.yaml" "$OUT/configs/$name.yaml" "${overrides[@]}" <<'EOF' || exit 2
import sys

import yaml

source, target, *overrides = sys.argv[1:]
config = yaml.safe_load(open(source))
for item in overrides:
    key, value = item.split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
yaml.safe_dump(config, open(target, "w"), sort_keys=False)
EOF
done

# 1. Side by side, one process per preset (a crash or a slow compile costs that preset only).
nanogpt=()
[[ -n $NANOGPT ]] && nanogpt=(--nanogpt "$NANOGPT")
[[ ,$STAGES, == *,side-by-side,* ]] || PRESETS=()
for i in "${!PRESETS[@]}"; do
    stage "side-by-side ${PRESETS[$i]}" "${SBS_LIMIT[$i]}" "$OUT/log-side-by-side.txt" \
        "$PY" bench/side_by_side.py --presets "${PRESETS[$i]}" "${SBS_ARGS[@]}" "${nanogpt[@]}" \
        --out "$OUT/side-by-side.jsonl"
done

# 2. A fresh table for the three configs (each call extends the same table file): the config's
# shape with every optimizer an arm runs, then each shape a method also trains (staged growth's
# targets: `--set model.n_layers=...`, as the pricing refusal asks). A refused fit (a noisy spell
# on a shared machine) is measured once more within the stage's limit.
method_shapes() { # CONFIG -> one line of --set overrides per extra shape its methods train
    "$PY" - "$1" "${METHODS[@]}" rho_loss <<'EOF'
import dataclasses
import sys

from budgetlm.config import load_config, model_overrides
from budgetlm.models import get_shape
from budgetlm.train.pricing import run_shapes

config, *methods = sys.argv[1:]
cfg = load_config(config)
start = get_shape(cfg.model.preset, **model_overrides(cfg.model))
lines = []
for method in methods:
    for shape in run_shapes(dataclasses.replace(cfg, method=method), start)[1:]:
        changed = [
            f"model.{f.name}={getattr(shape, f.name)}"
            for f in dataclasses.fields(shape)
            if getattr(shape, f.name) != getattr(start, f.name)
        ]
        if changed and " ".join(changed) not in lines:
            lines.append(" ".join(changed))
print("\n".join(lines))
EOF
}
CALIBRATE=("${NAMES[@]}")
[[ ,$STAGES, == *,calibrate,* ]] || CALIBRATE=()
for name in "${CALIBRATE[@]}"; do
    config="$OUT/configs/$name.yaml"
    optimizer=$("$PY" -c 'import sys; from budgetlm.config import load_config
print(load_config(sys.argv[1]).optim.name)' "$config")
    optimizers=$(printf '%s\n' "$optimizer" adamw "${OPTIMIZERS[@]}" | awk '!seen[$0]++')
    stage "calibrate $name" "$CALIBRATE_LIMIT" "$OUT/log-calibrate.txt" \
        bash -c '"$@" || "$@"' twice "$PY" -m budgetlm calibrate "$config" --out "$OUT/table.json" \
        --quiet "${CALIBRATE_ARGS[@]}" --optimizers $optimizers
    while read -r -a shape; do
        ((${#shape[@]})) || continue
        stage "calibrate $name ${shape[*]}" "$CALIBRATE_LIMIT" "$OUT/log-calibrate.txt" \
            bash -c '"$@" || "$@"' twice "$PY" -m budgetlm calibrate "$config" \
            --out "$OUT/table.json" --quiet "${CALIBRATE_ARGS[@]}" --set "${shape[@]}"
    done < <(method_shapes "$config" 2>>"$OUT/log-calibrate.txt")
done

# 3. RST fidelity with that table, the time left shared out between the configs.
if [[ ,$STAGES, != *,fidelity,* ]]; then
    :
elif [[ -f $OUT/table.json ]]; then
    for i in "${!NAMES[@]}"; do
        name=${NAMES[$i]}
        share=$(($(left) / (${#NAMES[@]} - i)))
        config="$OUT/configs/$name.yaml"
        # Three calls, each appending its rows when it ends (a call killed at its limit loses
        # only its own arms): the baselines bracketing two methods, the other methods and the
        # optimizers, then RHO-loss alone, last, since it first trains its irreducible-loss model.
        fidelity=("$PY" bench/rst_fidelity.py --configs "$config" --table "$OUT/table.json"
            --budget "$FIDELITY_BUDGET" --out "$OUT/rst-fidelity-$name")
        stage "rst-fidelity $name baselines" $((share * 35 / 100)) "$OUT/log-rst-fidelity.txt" \
            "${fidelity[@]}" --methods baseline "${METHODS[@]:0:2}" --optimizers
        stage "rst-fidelity $name methods" $((share * 45 / 100)) "$OUT/log-rst-fidelity.txt" \
            "${fidelity[@]}" --methods "${METHODS[@]:2}" --optimizers "${OPTIMIZERS[@]}"
        stage "rst-fidelity $name rho_loss" $((share * 20 / 100)) "$OUT/log-rst-fidelity.txt" \
            "${fidelity[@]}" --methods rho_loss --optimizers
    done
else
    echo "rst-fidelity: skipped, no table" | tee -a "$OUT/stages.txt"
    STATUS=1
fi

echo "suite: $((SECONDS - START)) s, results in $OUT" | tee -a "$OUT/stages.txt"
exit $STATUS
