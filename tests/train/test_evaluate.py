from types import SimpleNamespace

import pytest
import torch
from torch import nn

from budgetlm.train.evaluate import heldout_loss, heldout_sums, loss_metrics


class Recorder(nn.Module):
    """Loss = mean of the inputs; remembers whether autograd was on and the training flag."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, batch):
        self.seen.append((torch.is_grad_enabled(), self.training))
        x = batch["x"].float()
        return SimpleNamespace(loss=self.w * x.mean(), n_targets=torch.tensor(x.numel()))


def test_sums_are_token_weighted_without_autograd_and_restore_training():
    model = Recorder()
    batches = [{"x": torch.tensor([1.0, 3.0])}, {"x": torch.tensor([5.0, 5.0, 5.0, 5.0])}]
    total, count = heldout_sums(model, batches, torch.device("cpu"))
    assert (total, count) == (24.0, 6)
    assert model.seen == [(False, False), (False, False)]  # no graph, eval mode
    assert model.training
    assert heldout_loss(model, batches, torch.device("cpu"))["val_loss"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="no target tokens"):
        loss_metrics(0.0, 0)
