"""The SRUM flow loss and its flow-matching helpers, against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from srum_ray.losses import (
    SrumLoss,
    noisy_latents,
    sample_timesteps,
    shift_timesteps,
    srum_flow_loss,
    velocity_target,
)


def test_shift_known_points():
    assert shift_timesteps(0.0, 4.0) == 0.0
    assert shift_timesteps(1.0, 4.0) == 1.0
    assert shift_timesteps(0.5, 4.0) == pytest.approx(0.8)  # 4*0.5 / (1 + 3*0.5) = 2 / 2.5
    assert shift_timesteps(0.25, 3.0) == pytest.approx(0.5)  # 0.75 / (1 + 0.5)
    t = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(shift_timesteps(t, 1.0), t)  # s = 1 is the identity
    with pytest.raises(ValueError, match="shift must be > 0"):
        shift_timesteps(t, 0.0)


@pytest.mark.parametrize("mode", ["uniform", "logit_normal"])
def test_sample_timesteps_range_and_reproducibility(mode):
    t = sample_timesteps(512, 1.0, mode, torch.Generator().manual_seed(0))
    assert t.shape == (512,) and t.dtype == torch.float32
    assert float(t.min()) > 0 and float(t.max()) < 1
    again = sample_timesteps(512, 1.0, mode, torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, again)
    shifted = sample_timesteps(512, 4.0, mode, torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, 4 * t / (1 + 3 * t))
    assert float(shifted.mean()) > float(t.mean())  # shift > 1 moves mass toward noise


def test_sample_timesteps_modes_differ_and_bad_mode():
    u = sample_timesteps(4000, 1.0, "uniform", torch.Generator().manual_seed(1))
    ln = sample_timesteps(4000, 1.0, "logit_normal", torch.Generator().manual_seed(1))
    # U(0,1) has variance 1/12 ~ 0.083; sigmoid(N(0,1)) is concentrated near 0.5 (~0.043)
    assert abs(float(u.var()) - 1 / 12) < 0.01
    assert float(ln.var()) < 0.06
    with pytest.raises(ValueError, match="allowed: logit_normal, uniform"):
        sample_timesteps(2, 1.0, "beta")


def test_noisy_latents_and_target():
    x0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(2, 1, 1, 2)
    eps = torch.tensor([[-1.0, 0.0], [1.0, 8.0]]).view(2, 1, 1, 2)
    torch.testing.assert_close(noisy_latents(x0, eps, 0.0), x0)
    torch.testing.assert_close(noisy_latents(x0, eps, torch.ones(2)), eps)
    # t = [0.25, 0.75]: sample 0 = 0.75*[1, 2] + 0.25*[-1, 0] = [0.5, 1.5];
    # sample 1 = 0.25*[3, 4] + 0.75*[1, 8] = [1.5, 7]
    out = noisy_latents(x0, eps, torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(out.view(2, 2), torch.tensor([[0.5, 1.5], [1.5, 7.0]]))
    torch.testing.assert_close(velocity_target(x0, eps).view(2, 2),
                               torch.tensor([[-2.0, -2.0], [-2.0, 4.0]]))
    with pytest.raises(ValueError, match=r"scalar or \[B\]"):
        noisy_latents(x0, eps, torch.ones(3))
    with pytest.raises(ValueError, match="differ in shape"):
        noisy_latents(x0, eps[:1], 0.5)


# v_pred / v_target as [B=2, C=1, h=1, w=2]:
#   diff = v_pred - v_target = [0.5, 0 | 2, -1], squared = [0.25, 0 | 4, 1] (N = 4 elements)
V_PRED = [1.0, 2.0, 3.0, 4.0]
V_TARGET = [0.5, 2.0, 1.0, 5.0]


def tensors():
    v = torch.tensor(V_PRED).view(2, 1, 1, 2).requires_grad_(True)
    return v, torch.tensor(V_TARGET).view(2, 1, 1, 2)


def test_loss_hand_computed_with_negative_weight():
    v, target = tensors()
    weight = torch.tensor([2.0, -1.0])  # [B]
    out = srum_flow_loss(v, target, weight, lambda_c=0.5)
    assert isinstance(out, SrumLoss) and out.total.dim() == 0
    # L_r = (2*0.25 + 2*0 - 1*4 - 1*1) / 4 = -4.5 / 4 = -1.125
    # L_ref = (0.25 + 0 + 4 + 1) / 4 = 1.3125; total = -1.125 + 0.5*1.3125 = -0.46875
    assert out.reward_term.item() == pytest.approx(-1.125)
    assert out.ref_term.item() == pytest.approx(1.3125)
    assert out.total.item() == pytest.approx(-0.46875)
    out.reward_term.backward()
    # dL_r/dv = w * 2 * diff / N: [2*2*0.5/4, 0, -1*2*2/4, -1*2*(-1)/4] = [0.5, 0, -1, 0.5]
    torch.testing.assert_close(v.grad.view(4), torch.tensor([0.5, 0.0, -1.0, 0.5]))
    # positive weight: gradient has the sign of the error (descent pulls toward the target);
    # negative weight: opposite sign (descent pushes away from the sample)
    assert v.grad.view(4)[0] > 0 and v.grad.view(4)[2] < 0 and v.grad.view(4)[3] > 0


def test_lambda_zero_total_is_reward_term_exactly():
    v, target = tensors()
    out = srum_flow_loss(v, target, torch.tensor([2.0, -1.0]), lambda_c=0.0)
    assert torch.equal(out.total, out.reward_term)
    assert out.ref_term.item() == pytest.approx(1.3125)  # still reported


def test_separate_anchor():
    v, target = tensors()
    ref_pred = torch.tensor([1.0, 1.0]).view(1, 1, 1, 2).requires_grad_(True)
    ref_target = torch.tensor([0.0, 3.0]).view(1, 1, 1, 2)
    out = srum_flow_loss(v, target, 1.0, 2.0, ref_pred=ref_pred, ref_target=ref_target)
    # L_r = mean([0.25, 0, 4, 1]) = 1.3125; L_ref = (1 + 4) / 2 = 2.5; total = 1.3125 + 2*2.5
    assert out.reward_term.item() == pytest.approx(1.3125)
    assert out.ref_term.item() == pytest.approx(2.5)
    assert out.total.item() == pytest.approx(6.3125)
    out.total.backward()
    # d(2 * L_ref)/d ref_pred = 2 * 2 * [1, -2] / 2 = [2, -4]
    torch.testing.assert_close(ref_pred.grad.view(2), torch.tensor([2.0, -4.0]))
    with pytest.raises(ValueError, match="both ref_pred and ref_target"):
        srum_flow_loss(v, target, 1.0, 0.5, ref_pred=ref_pred)


def test_weight_broadcasting():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, 2, 2, generator=g)
    target = torch.randn(2, 3, 2, 2, generator=g)
    sq = (v - target) ** 2
    w_map = torch.randn(2, 1, 2, 2, generator=g)
    # [B, 1, h, w]: the same map on every channel
    expected = (w_map.expand(2, 3, 2, 2) * sq).sum() / 24
    torch.testing.assert_close(srum_flow_loss(v, target, w_map, 0.0).total, expected)
    # [B, C, h, w]
    w_full = torch.randn(2, 3, 2, 2, generator=g)
    torch.testing.assert_close(srum_flow_loss(v, target, w_full, 0.0).total, (w_full * sq).mean())
    # [B] and scalar
    w_b = torch.tensor([0.5, -2.0])
    expected = (0.5 * sq[0].sum() - 2.0 * sq[1].sum()) / 24
    torch.testing.assert_close(srum_flow_loss(v, target, w_b, 0.0).total, expected)
    torch.testing.assert_close(srum_flow_loss(v, target, 3.0, 0.0).total, 3 * sq.mean())
    # weight 1 everywhere (SFT) equals L_ref
    out = srum_flow_loss(v, target, torch.ones(2, 1, 2, 2), 0.5)
    torch.testing.assert_close(out.reward_term, out.ref_term)


def test_shape_errors_are_clear():
    v = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="does not broadcast"):
        srum_flow_loss(v, v, torch.ones(2, 1, 3, 3), 0.5)
    with pytest.raises(ValueError, match="does not broadcast"):
        srum_flow_loss(v, v, torch.ones(2, 2, 2), 0.5)
    with pytest.raises(ValueError, match=r"weight \[B\] has B = 3"):
        srum_flow_loss(v, v, torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="v_pred .* and v_target .* differ"):
        srum_flow_loss(v, torch.zeros(2, 3, 2, 1), 1.0, 0.5)
    with pytest.raises(ValueError, match="lambda_c must be"):
        srum_flow_loss(v, v, 1.0, -0.1)
    with pytest.raises(ValueError, match="ref_pred .* and ref_target .* differ"):
        srum_flow_loss(v, v, 1.0, 0.5, ref_pred=v, ref_target=torch.zeros(1))


def test_weight_gets_no_gradient_and_bf16_is_upcast():
    v = torch.tensor([1.0, 3.0], dtype=torch.bfloat16).view(1, 1, 1, 2).requires_grad_(True)
    target = torch.zeros(1, 1, 1, 2, dtype=torch.bfloat16)
    w = torch.tensor([2.0], requires_grad=True)
    out = srum_flow_loss(v, target, w, 0.0)
    assert out.total.dtype == torch.float32
    assert out.total.item() == pytest.approx(10.0)  # 2 * (1 + 9) / 2
    out.total.backward()
    assert w.grad is None and v.grad is not None
