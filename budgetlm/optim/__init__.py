from budgetlm.optim.factory import build_optimizer, set_lr
from budgetlm.registry import OPTIMIZERS

__all__ = ["OPTIMIZERS", "build_optimizer", "set_lr"]
