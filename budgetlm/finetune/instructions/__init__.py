"""Instruction fine-tuning, judged as No Train No Gain judges its T5 runs (issue 20).

Text-to-text tasks in Super-Natural Instructions' format: each task has a definition, a few
positive examples and instances (an input and one or more reference outputs). A model is
fine-tuned on the instances of the training tasks and scored on held-out tasks by greedy
decoding and ROUGE-L against the references (`rouge-score`).

- `data.py`     the data model (`Instance`, `InstructionTask`, `InstructionSuite`), prompts
                (`PromptSettings`, `build_prompt`) and the contamination check
- `suites.py`   `load_instruction_suite`: a suite by name, loaded, capped and checked
- `protocol.py` the fine-tuning protocol (nanoT5's values), the suite names
- `sni.py`      Super-Natural Instructions: SNI's own layout from a local path, the hub copy
- `offline.py`  the offline suite: Natural Instructions tasks from the `bigbench` sdist
- `train.py`    fine-tuning and greedy decoding (T5; GPT as a decoder-only variant)
- `score.py`    ROUGE-L per task and averaged
"""
