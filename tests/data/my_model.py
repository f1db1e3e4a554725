"""A user's own model file, for ``blindtrain train --model tests/data/my_model.py:build`` (tests)."""

import torch
from torch import nn


class TwoLayer(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, 32)
        self.out = nn.Linear(32, classes)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x.flatten(1))))


def build(input_shape, num_classes):
    channels, height, width = input_shape
    return TwoLayer(channels * height * width, num_classes)


def not_a_model():
    return "a string"


def broken():
    raise RuntimeError("factory exploded")
