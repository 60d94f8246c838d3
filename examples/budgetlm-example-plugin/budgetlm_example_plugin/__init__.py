"""Two budgetlm plug-ins, registered by this distribution's entry points (pyproject.toml):

- `method=seq_warmup`: sequence-length warm-up (`budgetlm_example_plugin.seq_warmup`);
- `optim.name=schedule_free_adamw`: schedule-free AdamW (`budgetlm_example_plugin.schedule_free`).

docs/your-method.md in the budgetlm repository walks through them.
"""
