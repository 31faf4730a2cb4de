import lightning as L
import torch

from tunelab.callbacks.grad_clip import GradClip


class _OneParam(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.logged = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = value


def test_clipping_logs_the_pre_clip_norm_and_clips():
    module = _OneParam()
    module.w.grad = torch.tensor([3.0, 4.0])  # norm 5
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    GradClip(max_norm=1.0).on_before_optimizer_step(None, module, opt)
    assert module.logged["train/grad_norm"] == 5.0
    assert torch.allclose(module.w.grad, torch.tensor([0.6, 0.8]), atol=1e-6)
