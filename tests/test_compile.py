"""``torch.compile`` on a prepared model works under every protocol: offloaded layers run eagerly (the
compiler breaks the graph around them instead of tracing the CSPRNG and the worker calls), and the step
equals plain PyTorch's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from blindtrain import Session
from blindtrain.protocols import load_all

TRAINING = sorted(name for name, cls in load_all().items() if cls.info.trains)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", TRAINING)
def test_a_compiled_training_step_equals_plain_pytorch(protocol):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    reference = copy.deepcopy(model)
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    session = Session(protocol=protocol, device="cpu", seed=0)
    model, optimizer = session.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    for net, opt in ((compiled, optimizer), (reference, reference_optimizer)):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), reference(x), rtol=1e-4, atol=1e-5)
    session.close()
