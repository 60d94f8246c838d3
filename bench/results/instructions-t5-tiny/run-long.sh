#!/bin/bash
# Issue 20, item 5, a longer fine-tune: every training instance up to nanoT5's cap of 100 per
# task, 3 epochs, 50 held-out instances per task; the same pre-trained run and its control.
set -euo pipefail
cd /work/exp20
export PYTHONPATH=/work/exp20 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=$(mktemp -d)
B=/work/main/.venv/bin/python
date -u +"start %FT%TZ"; uptime
FT="--suite instructions --epochs 3 --lr 1e-3 --batch-size 16 --max-instances 100 --max-eval-instances 50 --seeds 1 2"
$B -m budgetlm finetune out/t5-tiny-pretrain $FT --out out/long-pretrained
date -u +"finetuned %FT%TZ"
$B -m budgetlm finetune out/t5-tiny-pretrain $FT --random-init --out out/long-random-init
date -u +"control %FT%TZ"; uptime
