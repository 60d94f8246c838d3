#!/usr/bin/env bash
# Prepare, on a CPU machine, the data bench/gpu_suite.sh needs, so the GPU machine needs no network.
#
#   bench/prepare_gpu_data.sh                 # -> bench/gpu-data/ (git-ignored): the 3 GPU configs
#   bench/prepare_gpu_data.sh --smoke DIR     # the tiny configs only (what --cpu-smoke runs)
#
# Each config's corpus is tokenized with its own tokenizer (trained here, or GPT-2's from its
# package) by `budgetlm prepare` into DIR/cache (BUDGETLM_CACHE). DIR/paths.env maps each config
# to its prepared dataset, relative to the repository root when inside it, so the folder can be
# carried to the GPU machine with the tree (the device tool's `carry: ["bench/gpu-data"]`) and
# read there through `data.path`, whatever the corpus files' timestamps. Text is capped at
# MAX_BYTES (default 16 MB: a few million tokens, more than the suite's short runs read and
# small enough to carry: about 25 MB for the three datasets).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
if [[ ${1:-} == --smoke ]]; then
    SMOKE=1
    shift
fi
DATA=${1:-bench/gpu-data}
MAX_BYTES=${MAX_BYTES:-16000000}
if [[ -x .venv/bin/budgetlm ]]; then BUDGETLM=(.venv/bin/budgetlm); else BUDGETLM=(budgetlm); fi

if ((SMOKE)); then
    CONFIGS=(configs/gpt-tiny.yaml configs/bert-tiny.yaml configs/t5-tiny.yaml)
else
    CONFIGS=(configs/gpt2-small.yaml configs/bert-cramming.yaml configs/t5-v1_1-base.yaml)
fi

mkdir -p "$DATA/cache"
DATA_ABS=$(cd "$DATA" && pwd)
# Nothing here may reach the Hub: a tokenizer comes from a package or is trained from the corpus.
export BUDGETLM_CACHE="$DATA_ABS/cache" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
: >"$DATA/paths.env"
for config in "${CONFIGS[@]}"; do
    start=$SECONDS
    overrides=()
    ((SMOKE)) || overrides=("data.max_bytes=$MAX_BYTES")
    path=$("${BUDGETLM[@]}" prepare "$config" "${overrides[@]}" | sed -n 's/^prepared dataset: //p')
    [[ -n $path ]] || { echo "prepare $config: no dataset path printed" >&2; exit 1; }
    path=${path#"$ROOT/"} # relative to the repository root when it is inside it
    echo "$(basename "$config" .yaml)=$path" >>"$DATA/paths.env"
    echo "prepared $config -> $path ($((SECONDS - start)) s)"
done
du -sh "$DATA" | sed 's/^/total: /'
