#!/bin/bash
# Issue 20, item 5: a t5-tiny pre-trained on the bundled corpus, fine-tuned on the offline
# instruction suite (capped), beside the same architecture fine-tuned from random init.
set -euo pipefail
cd /work/exp20
export PYTHONPATH=/work/exp20 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME=$(mktemp -d)
B=/work/main/.venv/bin/python
date -u +"start %FT%TZ"; uptime
$B -m budgetlm train configs/t5-tiny.yaml data.corpus=bundled budget=1500steps \
  run.dir=out/t5-tiny-pretrain train.eval_every=0.25 train.progress_bar=false --quiet
date -u +"pretrained %FT%TZ"
FT="--suite instructions --steps 600 --lr 1e-3 --batch-size 16 --max-instances 40 --max-eval-instances 30 --seeds 1 2"
$B -m budgetlm finetune out/t5-tiny-pretrain $FT
date -u +"finetuned %FT%TZ"
$B -m budgetlm finetune out/t5-tiny-pretrain $FT --random-init --out out/t5-tiny-random-init
date -u +"control %FT%TZ"; uptime
