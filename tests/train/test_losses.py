"""Preference losses against plain-torch transcriptions of their formulas, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from halluremedy.train.losses import (
    PairLogps,
    PreferenceLoss,
    dpo_objective,
    hinge_loss,
    ipo_loss,
    nll_term,
    povid_stage2_loss,
    sigmoid_loss,
)

# --- the formulas, written out independently of the module -------------------------------------


def softplus_neg(z):  # -log sigma(z) = log(1 + exp(-z))
    return torch.log1p(torch.exp(-z))


def ref_sigmoid(pc, pr, rc, rr, beta, eps=0.0):
    z = beta * ((pc - pr) - (rc - rr))
    return (1 - eps) * softplus_neg(z) + eps * softplus_neg(-z)


def ref_ipo(pc, pr, rc, rr, beta, lc, lr):
    h = (pc / lc - pr / lr) - (rc / lc - rr / lr)
    return (h - 1 / (2 * beta)) ** 2


def ref_hinge(pc, pr, rc, rr, beta):
    return torch.clamp(1 - beta * ((pc - pr) - (rc - rr)), min=0)


# --- helpers -----------------------------------------------------------------------------------


def random_logps(batch=7, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(-torch.rand(batch, generator=g, dtype=torch.float64) * 30).requires_grad_() for _ in range(4)]


def grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss.sum(), inputs)


LENGTHS = (torch.tensor([3, 5, 8, 1, 2, 9, 4]), torch.tensor([4, 4, 7, 2, 3, 8, 6]))

VARIANTS = {
    "sigmoid": (lambda lp: sigmoid_loss(PairLogps(*lp), 0.1), lambda *lp: ref_sigmoid(*lp, 0.1)),
    "cdpo": (lambda lp: sigmoid_loss(PairLogps(*lp), 0.1, label_smoothing=0.2),
             lambda *lp: ref_sigmoid(*lp, 0.1, eps=0.2)),
    "ipo": (lambda lp: ipo_loss(PairLogps(*lp), 0.1, *LENGTHS), lambda *lp: ref_ipo(*lp, 0.1, *LENGTHS)),
    "hinge": (lambda lp: hinge_loss(PairLogps(*lp), 0.5), lambda *lp: ref_hinge(*lp, 0.5)),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_losses_and_gradients_match_the_formula(name):
    ours, ref = VARIANTS[name]
    lp = random_logps()
    out = ours(lp)
    expected = ref(*lp)
    assert out.losses.shape == (7,)
    torch.testing.assert_close(out.losses, expected, rtol=1e-12, atol=1e-12)
    for g_ours, g_ref in zip(grads(out.losses, lp), grads(expected, lp)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)


def test_label_smoothing_zero_is_plain_sigmoid():
    lp = PairLogps(*random_logps(seed=3))
    assert torch.equal(sigmoid_loss(lp, 0.3, label_smoothing=0.0).losses, sigmoid_loss(lp, 0.3).losses)


def test_ipo_with_lengths_equals_ipo_on_averages():
    lp = PairLogps(*random_logps(seed=4))
    a = ipo_loss(lp, 0.2, *LENGTHS)
    b = ipo_loss(lp.per_token(*LENGTHS), 0.2)
    torch.testing.assert_close(a.losses, b.losses)
    torch.testing.assert_close(a.chosen_rewards, b.chosen_rewards)


def one_example() -> PairLogps:
    return PairLogps(*(torch.tensor([v], dtype=torch.float64, requires_grad=True) for v in (-5.0, -7.0, -6.0, -6.0)))


def test_hand_computed_example():
    lp = one_example()
    # h = (pc - pr) - (rc - rr) = (-5 + 7) - (-6 + 6) = 2; beta = 0.5 -> beta h = 1.
    # sigmoid: -log sigma(1) = log(1 + e^-1) = 0.313261687518...
    out = sigmoid_loss(lp, 0.5)
    assert out.losses.item() == pytest.approx(0.3132616875182228, abs=1e-12)
    # d loss / d pc = -beta (1 - sigma(1)) = -0.5 * 0.268941421369995 = -0.134470710684998
    (g_pc,) = torch.autograd.grad(out.losses.sum(), lp.policy_chosen)
    assert g_pc.item() == pytest.approx(-0.134470710684998, abs=1e-12)
    # rewards: chosen 0.5 * (-5 + 6) = 0.5, rejected 0.5 * (-7 + 6) = -0.5
    assert out.chosen_rewards.item() == 0.5 and out.rejected_rewards.item() == -0.5
    # cDPO eps = 0.1: 0.9 * 0.313261... + 0.1 * (-log sigma(-1) = 1 + 0.313261...) = 0.313261... + 0.1
    assert sigmoid_loss(lp, 0.5, 0.1).losses.item() == pytest.approx(0.4132616875182228, abs=1e-12)
    # hinge, beta 0.25: relu(1 - 0.25 * 2) = 0.5
    assert hinge_loss(lp, 0.25).losses.item() == 0.5
    # ipo, beta 0.5, chosen 2 tokens, rejected 4: averages pc -2.5, pr -1.75, rc -3, rr -1.5;
    # h = (-2.5 + 1.75) - (-3 + 1.5) = 0.75; (0.75 - 1 / (2 * 0.5))^2 = 0.0625
    lengths = (torch.tensor([2]), torch.tensor([4]))
    assert ipo_loss(lp, 0.5, *lengths).losses.item() == pytest.approx(0.0625, abs=1e-12)
    # RPO: nll = 5 / 2 = 2.5; alpha 0.5 -> 0.313261... + 1.25
    assert nll_term(lp.policy_chosen, lengths[0]).item() == 2.5
    rpo = dpo_objective(lp, beta=0.5, alpha=0.5, chosen_lengths=lengths[0])
    assert rpo.losses.item() == pytest.approx(1.5632616875182228, abs=1e-12)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_objective_adds_alpha_times_nll(loss_type):
    lp = random_logps(seed=5)
    base = dpo_objective(PairLogps(*lp), loss_type=loss_type, beta=0.2, chosen_lengths=LENGTHS[0],
                         rejected_lengths=LENGTHS[1])
    assert base.nll is None
    out = dpo_objective(PairLogps(*lp), loss_type=loss_type, beta=0.2, alpha=0.7, chosen_lengths=LENGTHS[0],
                        rejected_lengths=LENGTHS[1])
    expected = base.losses + 0.7 * (-lp[0] / LENGTHS[0])
    torch.testing.assert_close(out.losses, expected)
    for g_ours, g_ref in zip(grads(out.losses, lp), grads(expected, lp)):
        torch.testing.assert_close(g_ours, g_ref)
    assert "nll" in out.metrics() and not out.nll.requires_grad


def test_dpo_objective_argument_errors():
    lp = PairLogps(*random_logps())
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_objective(lp, alpha=1.0)
    with pytest.raises(ValueError, match="ipo loss needs"):
        dpo_objective(lp, loss_type="ipo")
    with pytest.raises(ValueError, match="sigmoid loss only"):
        dpo_objective(lp, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_objective(lp, loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        sigmoid_loss(lp, 0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        sigmoid_loss(lp, 0.1, label_smoothing=0.6)


def test_reward_metrics():
    loss = PreferenceLoss(losses=torch.tensor([1.0, 2.0, 3.0, 4.0]),
                          chosen_rewards=torch.tensor([0.5, 0.0, -1.0, 0.2]),
                          rejected_rewards=torch.tensor([-0.5, 0.0, 1.0, 0.1]))
    m = {k: v.item() for k, v in loss.metrics().items()}
    # margins 1.0, 0.0 (a tie is not a win), -2.0, 0.1
    assert m == pytest.approx({"loss": 2.5, "rewards/accuracy": 0.5, "rewards/margin": -0.225,
                               "rewards/chosen": -0.075, "rewards/rejected": 0.15})
    assert loss.loss.item() == 2.5


def test_rewards_are_detached_and_scaled():
    lp = random_logps(seed=6)
    out = sigmoid_loss(PairLogps(*lp), 0.3)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    torch.testing.assert_close(out.chosen_rewards, 0.3 * (lp[0] - lp[2]).detach())
    torch.testing.assert_close(out.rejected_rewards, 0.3 * (lp[1] - lp[3]).detach())


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.8, 0.3)])
def test_povid_stage2_combination(weights):
    text, noise = random_logps(seed=7), random_logps(seed=8)
    noise[0], noise[2] = text[0], text[2]  # the noise term's chosen side: the same clean-image log-probs of y+
    wt, wn = weights
    out = povid_stage2_loss(PairLogps(*text), PairLogps(*noise), beta=0.1, weight_text=wt, weight_noise=wn)
    expected = wt * ref_sigmoid(*text, 0.1) + wn * ref_sigmoid(*noise, 0.1)
    torch.testing.assert_close(out.losses, expected, rtol=1e-12, atol=1e-12)
    inputs = text + [noise[1], noise[3]]
    for g_ours, g_ref in zip(grads(out.losses, inputs), grads(expected, inputs)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)
    m = out.metrics()
    assert m["loss"].item() == pytest.approx(out.loss.item())
    assert m["noise/rewards/chosen"].item() == pytest.approx(m["text/rewards/chosen"].item())
    assert {"text/loss", "noise/rewards/accuracy", "text/rewards/margin"} <= m.keys()


def test_povid_stage2_without_a_noise_pair_is_the_weighted_text_term():
    text = random_logps(seed=9)
    out = povid_stage2_loss(PairLogps(*text), None, beta=0.1, weight_text=0.7, weight_noise=0.0)
    torch.testing.assert_close(out.losses, 0.7 * ref_sigmoid(*text, 0.1), rtol=1e-12, atol=1e-12)
    assert out.noise is None and not any(k.startswith("noise/") for k in out.metrics())
    with pytest.raises(ValueError, match="needs the noise pair"):
        povid_stage2_loss(PairLogps(*text), None, beta=0.1, weight_noise=0.5)


def test_noise_positions_where_argmax_is_ground_truth_contribute_nothing():
    torch.manual_seed(0)
    batch, steps, vocab = 3, 6, 11

    def scores(clean_logits, noised_logits, labels):
        """Summed clean-image log-probs of y+ and of the noised-image argmax a_t, and a_t itself."""
        logp = clean_logits.log_softmax(-1)
        a = noised_logits.argmax(-1)
        return logp.gather(-1, labels[..., None]).sum((1, 2)), logp.gather(-1, a[..., None]).sum((1, 2)), a

    pol_clean = torch.randn(batch, steps, vocab, dtype=torch.float64, requires_grad=True)
    pol_noised, ref_clean, ref_noised = (torch.randn(batch, steps, vocab, dtype=torch.float64) for _ in range(3))
    labels = torch.randint(vocab, (batch, steps))
    # The policy's noised argmax agrees with y+ at even steps, the reference's (at least) at step 0.
    labels[:, ::2] = pol_noised.argmax(-1)[:, ::2]
    ref_noised[:, 0] = pol_noised[:, 0]
    pc, pr, a_pol = scores(pol_clean, pol_noised, labels)
    rc, rr, a_ref = scores(ref_clean, ref_noised, labels)
    same_pol, same_ref = a_pol == labels, a_ref == labels
    assert same_pol[:, ::2].all() and same_ref[:, [0]].all()

    # h is the sum over positions where the argmax differs from y+ only.
    lp_pol, lp_ref = pol_clean.log_softmax(-1), ref_clean.log_softmax(-1)

    def diff(lp, a):
        return lp.gather(-1, labels[..., None])[..., 0] - lp.gather(-1, a[..., None])[..., 0]

    h_expected = ((diff(lp_pol, a_pol) * ~same_pol).sum(1) - (diff(lp_ref, a_ref) * ~same_ref).sum(1))
    noise = PairLogps(pc, pr, rc, rr)
    torch.testing.assert_close(noise.margin(), h_expected)

    # ... so the clean logits at those positions get exactly no gradient from the noise term.
    text = PairLogps(*(t.detach() for t in random_logps(batch, seed=9)))
    out = povid_stage2_loss(text, noise, beta=0.1)
    (g,) = torch.autograd.grad(out.losses.sum(), pol_clean)
    assert torch.equal(g[same_pol], torch.zeros_like(g[same_pol]))
    assert g[~same_pol].abs().sum() > 0


def test_sigmoid_is_stable_for_large_margins():
    lp = PairLogps(torch.tensor([0.0]), torch.tensor([-1e4]), torch.tensor([-1e4]), torch.tensor([0.0]))
    out = sigmoid_loss(lp, 1.0)
    assert torch.isfinite(out.losses).all() and out.losses.item() == 0.0
    assert math.isfinite(sigmoid_loss(PairLogps(*(-x for x in lp)), 1.0).losses.item())
