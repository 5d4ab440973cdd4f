"""dpo_loss and the baseline objectives against float64 hand computations and the paper's invariants."""

import math

import pytest
import torch

from dpo_core.losses import (
    bradley_terry_loss,
    dpo_gradient_weight,
    dpo_loss,
    hinge_loss,
    implicit_reward,
    ipo_loss,
    preferred_ft_loss,
    unlikelihood_loss,
)

BETAS = [0.05, 0.1, 1.0, 5.0]  # the paper's sweep, Section 6.1


def random_logps(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 80) for _ in range(4)]


def sigmoid64(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("beta", BETAS)
def test_dpo_loss_matches_hand_computed_eq7(beta):
    inputs = [x.float() for x in random_logps()]  # fp32, as in training
    losses, chosen_rewards, rejected_rewards = dpo_loss(*inputs, beta)
    pc, pr, rc, rr = [x.double() for x in inputs]  # the same values, reduced in float64 below
    for i in range(len(pc)):
        h = (pc[i] - rc[i]).item() - (pr[i] - rr[i]).item()
        expected = -math.log(sigmoid64(beta * h)) if beta * h > -30 else -beta * h  # log1p(e^-x) ~ -x
        assert losses[i].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert chosen_rewards[i].item() == pytest.approx(beta * (pc[i] - rc[i]).item(), rel=1e-5, abs=1e-5)
        assert rejected_rewards[i].item() == pytest.approx(beta * (pr[i] - rr[i]).item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("beta", BETAS)
def test_dpo_loss_matches_paper_appendix_b_listing(beta):
    # The paper's App. B code, indexing one tensor of all log-probs with yw/yl indices.
    pc, pr, rc, rr = random_logps(seed=1)
    pi_logps, ref_logps = torch.cat([pc, pr]), torch.cat([rc, rr])
    yw, yl = torch.arange(16), torch.arange(16, 32)
    pi_logratios = pi_logps[yw] - pi_logps[yl]
    ref_logratios = ref_logps[yw] - ref_logps[yl]
    expected = -torch.nn.functional.logsigmoid(beta * (pi_logratios - ref_logratios))
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    torch.testing.assert_close(losses, expected)


def test_torchtune_style_known_values():
    # logits [0, 10, 20] with beta = 0.1 give -log sigma([0, 1, 2])
    h = torch.tensor([0.0, 10.0, 20.0])
    losses, _, _ = dpo_loss(h, torch.zeros(3), torch.zeros(3), torch.zeros(3), beta=0.1)
    expected = torch.tensor([-math.log(sigmoid64(x)) for x in (0.0, 1.0, 2.0)])
    torch.testing.assert_close(losses, expected)


@pytest.mark.parametrize("beta", BETAS)
def test_policy_equal_reference_gives_ln2_and_zero_rewards(beta):
    pc, pr, _, _ = random_logps(seed=2)
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta)
    assert torch.all(losses == math.log(2))
    assert torch.all(chosen_rewards == 0) and torch.all(rejected_rewards == 0)


@pytest.mark.parametrize("beta", BETAS)
def test_gradient_equals_closed_form_of_section_4(beta):
    pc, pr, rc, rr = random_logps(seed=3)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta)
    losses.sum().backward()
    r_w = (beta * (pc - rc)).detach()
    r_l = (beta * (pr - rr)).detach()
    # closed form computed independently in float64 scalars
    expected = torch.tensor([-beta * sigmoid64((l - w).item()) for w, l in zip(r_w, r_l)], dtype=torch.float64)
    torch.testing.assert_close(pc.grad, expected)
    torch.testing.assert_close(pr.grad, -expected)
    torch.testing.assert_close(dpo_gradient_weight(chosen_rewards, rejected_rewards), -expected / beta)


@pytest.mark.parametrize("margin", [1e4, -1e4])
@pytest.mark.parametrize("beta", BETAS)
def test_finite_loss_and_gradient_at_extreme_margins(margin, beta):
    pc = torch.tensor([margin], requires_grad=True)
    losses, _, _ = dpo_loss(pc, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all()
    if margin < 0:  # badly mis-ordered: loss ~ -beta*h, gradient ~ -beta
        assert losses.item() == pytest.approx(-beta * margin, rel=1e-6)
        assert pc.grad.item() == pytest.approx(-beta, rel=1e-6)


def test_label_smoothing_zero_is_plain_dpo_and_otherwise_cdpo():
    pc, pr, rc, rr = random_logps(seed=4)
    plain, _, _ = dpo_loss(pc, pr, rc, rr, 0.1)
    zero, _, _ = dpo_loss(pc, pr, rc, rr, 0.1, label_smoothing=0.0)
    torch.testing.assert_close(plain, zero, rtol=0, atol=0)
    eps = 0.2
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, 0.1, label_smoothing=eps)
    for i in range(len(pc)):
        h = 0.1 * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        expected = -(1 - eps) * math.log(sigmoid64(h)) - eps * math.log(sigmoid64(-h))
        assert smoothed[i].item() == pytest.approx(expected, rel=1e-6)


def test_rewards_are_detached_and_bad_arguments_are_rejected():
    pc = torch.zeros(2, requires_grad=True)
    _, chosen_rewards, _ = dpo_loss(pc, torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.1)
    assert not chosen_rewards.requires_grad
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(pc, pc, pc, pc, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(pc, pc, pc, pc, beta=0.1, label_smoothing=0.5)


def test_implicit_reward_is_beta_times_log_ratio():
    assert implicit_reward(torch.tensor([-3.0]), torch.tensor([-5.0]), 0.5).item() == 1.0


def test_bradley_terry_loss_eq2():
    r_w, r_l = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    expected = [-math.log(sigmoid64(1.5)), -math.log(sigmoid64(-2.0))]
    torch.testing.assert_close(bradley_terry_loss(r_w, r_l), torch.tensor(expected))
    # equal rewards: the model is indifferent, p = 1/2
    assert bradley_terry_loss(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(math.log(2))


def test_preferred_ft_and_unlikelihood():
    chosen, rejected = torch.tensor([-10.0, -4.0]), torch.tensor([-7.0, -9.0])
    torch.testing.assert_close(preferred_ft_loss(chosen), torch.tensor([10.0, 4.0]))
    torch.testing.assert_close(unlikelihood_loss(chosen, rejected, alpha=0.5), torch.tensor([6.5, -0.5]))
    torch.testing.assert_close(unlikelihood_loss(chosen, rejected, alpha=0.0), preferred_ft_loss(chosen))
    with pytest.raises(ValueError, match="alpha"):
        unlikelihood_loss(chosen, rejected, alpha=2.0)


def test_ipo_hand_computed():
    # h = (-1 - -2) - (-3 - -2) = 2; IPO's target margin is 1 / (2 beta)
    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    assert ipo_loss(pc, pr, rc, rr, beta=0.25).item() == 0.0  # target 2, reached
    assert ipo_loss(pc, pr, rc, rr, beta=0.5).item() == 1.0  # target 1: (2 - 1)^2
    assert ipo_loss(pc, pr, rc, rr, beta=0.1).item() == pytest.approx(9.0)  # target 5: (2 - 5)^2
    # the gradient in the policy's chosen log-prob is 2 (h - 1 / (2 beta)), pulling h to its target from both sides
    pc = torch.tensor([-1.0], requires_grad=True)
    ipo_loss(pc, pr, rc, rr, beta=0.1).sum().backward()
    assert pc.grad.item() == pytest.approx(2 * (2 - 5))
    zero = torch.zeros(3)
    torch.testing.assert_close(ipo_loss(zero, zero, zero, zero, 0.1), torch.full((3,), 25.0))  # pi = pi_ref: (1/(2 beta))^2
    with pytest.raises(ValueError, match="beta must be > 0"):
        ipo_loss(zero, zero, zero, zero, 0.0)


def test_hinge_hand_computed():
    pc, pr, rc, rr = torch.tensor([-1.0, -1.0]), torch.tensor([-3.0, 0.0]), torch.zeros(2), torch.zeros(2)
    # h = 2 and h = -1: max(0, 1 - beta h)
    torch.testing.assert_close(hinge_loss(pc, pr, rc, rr, beta=0.25), torch.tensor([0.5, 1.25]))
    torch.testing.assert_close(hinge_loss(pc, pr, rc, rr, beta=1.0), torch.tensor([0.0, 2.0]))  # ordered by margin 1: 0
    zero = torch.zeros(2)
    torch.testing.assert_close(hinge_loss(zero, zero, zero, zero, 0.1), torch.ones(2))  # pi = pi_ref


def test_registry_losses_at_pi_equal_pi_ref():
    from dpo_core import methods

    logps = torch.tensor([-5.0, -9.0])
    expected = {"dpo": math.log(2), "ipo": (1 / (2 * 0.1)) ** 2, "hinge": 1.0, "unlikelihood": 5 - 0.1 * 5,
                "preferred_ft": 5.0}
    assert sorted(methods.OFFLINE) == sorted(expected)
    for name, value in expected.items():
        out = methods.get(name).loss(logps[:1], logps[:1], logps[:1], logps[:1], 0.1)
        assert out.item() == pytest.approx(value), name
    with pytest.raises(ValueError, match="unknown method 'dp0'"):
        methods.get("dp0")
    assert methods.run_label("dpo", 0.1) == "DPO (ours), beta 0.1" and methods.run_label("preferred_ft", 0) == "Preferred-FT"
