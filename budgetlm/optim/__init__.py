from budgetlm.optim.factory import OPTIMIZERS, build_optimizer, set_lr

__all__ = ["OPTIMIZERS", "build_optimizer", "set_lr"]
