"""Control for the field engine's precision target: how far apart two *plain* resnet18/synthetic runs
(batch 8, SGD lr 1e-3, 20 steps, same seed and data) drift when only torch's thread count differs (1 vs 2),
i.e. how much float32 rounding alone is amplified by this training run.

    PYTHONPATH=src python scripts/plain_thread_control.py
"""
import torch
import torch.nn.functional as F

from blindtrain import data as datasets
from blindtrain.models import build

def run(threads, steps=20):
    torch.set_num_threads(threads)
    ds = datasets.load("synthetic", seed=0)
    torch.manual_seed(0)
    model = build("resnet18", ds.input_shape, ds.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = []
    for i, (x, y) in enumerate(ds.batches(batch_size=8, epoch=0, seed=0)):
        if i == steps:
            break
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


if __name__ == "__main__":
    one, two = run(1), run(2)
    for step, (u, v) in enumerate(zip(one, two)):
        print(step, f"{u:.6f} {v:.6f} rel {abs(u - v) / abs(u):.2e}")
