"""own_weights: loaded CPU tensors at unaligned addresses get memory of their own (see
srum_ray.models.base.own_weights; the save / load round trips in test_tiny.py and
test_registry.py are the end-to-end check)."""

from __future__ import annotations

import torch

from srum_ray.models.base import own_weights


def _unaligned(n: int) -> torch.Tensor:
    """A float32 view 8 bytes past a fresh (64-byte aligned) allocation."""
    backing = torch.arange(n + 2, dtype=torch.float32)
    view = backing[2:]
    assert view.data_ptr() % 64 == 8
    return view


def test_copies_unaligned_parameters_and_buffers_only():
    m = torch.nn.Linear(4, 3)
    aligned_ptr = m.bias.data_ptr()
    assert aligned_ptr % 64 == 0
    m.weight.data = _unaligned(12).view(3, 4)
    m.register_buffer("stat", _unaligned(5))
    weight = m.weight
    before_w, before_s = m.weight.detach().clone(), m.stat.clone()

    assert own_weights(m) == 2
    assert m.weight is weight  # same Parameter: optimizers and tied weights still point at it
    assert m.weight.data_ptr() % 64 == 0 and m.stat.data_ptr() % 64 == 0
    assert torch.equal(m.weight, before_w) and torch.equal(m.stat, before_s)
    assert m.bias.data_ptr() == aligned_ptr  # aligned tensors are not copied
    assert own_weights(m) == 0  # nothing left to do


def test_tied_parameter_is_copied_once_and_stays_tied():
    a, b = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False)
    a.weight.data = _unaligned(16).view(4, 4)
    b.weight = a.weight
    outer = torch.nn.Sequential(a, b)
    assert own_weights(outer) == 1
    assert outer[0].weight is outer[1].weight
