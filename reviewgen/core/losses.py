"""Losses and step functions for the three phases.

Each step function takes the (possibly DDP-wrapped) models, one optimizer and one batch, and does exactly
one forward and one backward per wrapped model, so it runs unchanged under Ray Train's DDP:
- real and fake rows (and the real reviews alone, for the rating and category heads) go through D in one
  concatenated forward;
- the policy-gradient rows and the MLE-anchor rows go through G in one concatenated forward;
- rewards, references and samples use the unwrapped modules under no_grad, so D's gradients are never
  all-reduced during G's step.
Losses are means over rows (each row's tokens averaged first), so that DDP's gradient averaging over equal
per-worker batches equals the single-process loss on the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reviewgen.core.config import TrainConfig
from reviewgen.core.device import autocast, training_dtype
from reviewgen.core.models import unwrap
from reviewgen.core.tokenizer import NEGATIVE_TOKENS, POSITIVE_TOKENS, review_mask


@dataclass
class Tokens:
    """Special ids the losses need."""

    pad_id: int
    eos_id: int
    prefix_len: int
    positive: tuple[int, ...] = ()  # condition tokens that ask for a positive review (4-5 stars, positive)
    negative: tuple[int, ...] = ()  # and for a negative one (1-2 stars, negative)

    @classmethod
    def of(cls, tok) -> "Tokens":
        """The ids of a `ReviewTokenizer`."""
        return cls(
            pad_id=tok.pad_id,
            eos_id=tok.eos_id,
            prefix_len=tok.prefix_len,
            positive=tuple(tok.special[n] for n in POSITIVE_TOKENS),
            negative=tuple(tok.special[n] for n in NEGATIVE_TOKENS),
        )


def target_polarity(ids: torch.Tensor, tk: Tokens) -> torch.Tensor:
    """[B] the polarity each row's prompt asks for, read from its condition token: 1 positive, 0 negative,
    -100 neither (3 stars, neutral). The Chinese corpus carries polarity only, never a star rating."""
    pre = ids[:, : tk.prefix_len]
    pos = torch.isin(pre, torch.tensor(tk.positive, dtype=pre.dtype, device=pre.device)).any(1)
    neg = torch.isin(pre, torch.tensor(tk.negative, dtype=pre.dtype, device=pre.device)).any(1)
    return torch.where(pos, 1, torch.where(neg, 0, -100))


def rating_target_logprob(
    logits: torch.Tensor, rating: torch.Tensor, polarity: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, log p of its target under the rating head's `logits` [B, 5]: the star rating (0..4) where
    known, else its polarity side (p of 1-2 or of 4-5 stars) where known, else 0; and the rows with a target."""
    lp = torch.log_softmax(logits.float(), -1)
    exact = lp.gather(1, rating.clamp_min(0)[:, None]).squeeze(1)
    side = torch.where(polarity == 1, torch.logsumexp(lp[:, 3:], -1), torch.logsumexp(lp[:, :2], -1))
    has_rating, has_side = rating >= 0, polarity >= 0
    return torch.where(has_rating, exact, torch.where(has_side, side, 0.0)), has_rating | has_side


def _row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum(1) / m.sum(1).clamp_min(1.0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position from logits [B, R, V] and targets [B, R]."""
    return -F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


def review_logits(G, ids: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """G's logits predicting review tokens ids[:, P:], from one forward over ids[:, :-1]."""
    return G(ids[:, :-1], logits_from=prefix_len - 1)


def mle_loss(G, ids: torch.Tensor, tk: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """(row-mean NLL loss, per-row summed NLL and token counts for reporting)."""
    targets = ids[:, tk.prefix_len :]
    mask = targets != tk.pad_id
    nll = -token_logprobs(review_logits(G, ids, tk.prefix_len), targets)
    return _row_mean(nll, mask).mean(), torch.stack([(nll * mask).sum(), mask.sum()])


def clip_and_step(model, opt, clip: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


def mle_step(G, opt, batch: dict, cfg: TrainConfig, tk: Tokens) -> dict:
    """One MLE step on real reviews."""
    ids = batch["ids"]
    with autocast(ids.device, training_dtype(ids.device)):
        loss, (nll_sum, n_tok) = mle_loss(G, ids, tk)
    loss.backward()
    gnorm = clip_and_step(G, opt, cfg.grad_clip)
    return {"g_loss": loss.item(), "tokens": int(n_tok), "g_grad_norm": gnorm}


@torch.no_grad()
def val_nll(G, batches, tk: Tokens) -> float:
    """Token-level NLL (nats/token) over validation batches."""
    G = unwrap(G)
    was = G.training
    G.eval()
    tot, n = 0.0, 0
    for b in batches:
        _, (s, c) = mle_loss(G, b["ids"], tk)
        tot, n = tot + float(s), n + int(c)
    G.train(was)
    return tot / max(n, 1)


def review_only(ids: torch.Tensor, tk: Tokens) -> torch.Tensor:
    """`ids` with the prompt blanked: every prefix position but the last (<sep>) becomes padding, so that D
    reads the review alone. Its rating and category heads learn and judge on this view: with the prompt in
    view they would read the asked-for rating and category from it, whatever the review says."""
    out = ids.clone()
    out[:, : tk.prefix_len - 1] = tk.pad_id
    return out


def disc_loss(
    D,
    real: torch.Tensor,
    fake: torch.Tensor,
    rating: torch.Tensor,
    category: torch.Tensor,
    *,
    cfg: TrainConfig,
    tk: Tokens,
) -> tuple[torch.Tensor, dict]:
    """Sequence + per-token real/fake BCE, plus rating/category CE on the real rows' reviews alone
    (`review_only`; AC-GAN style), all in one forward."""
    n_real, n = real.shape[0], real.shape[0] + fake.shape[0]
    ids = torch.cat([real, fake])
    label = torch.cat([torch.ones(n_real, device=ids.device), torch.zeros(fake.shape[0], device=ids.device)])
    out = D(torch.cat([ids, review_only(real, tk)]))
    seq = F.binary_cross_entropy_with_logits(out.seq_logits[:n].float(), label)
    mask = review_mask(ids[:, tk.prefix_len :], tk.eos_id, tk.pad_id)
    tok = F.binary_cross_entropy_with_logits(
        out.token_logits[:n].float(), label[:, None].expand_as(out.token_logits[:n]), reduction="none"
    )
    tok = _row_mean(tok, mask).mean()
    # divide by the row count, not the labelled count, so equal worker splits average exactly
    rating_lp, _ = rating_target_logprob(out.rating_logits[n:], rating, target_polarity(real, tk))
    aux = (
        -rating_lp.sum()
        + F.cross_entropy(out.category_logits[n:].float(), category, ignore_index=-100, reduction="sum")
    ) / n_real
    loss = seq + cfg.token_loss_weight * tok + cfg.aux_loss_weight * aux
    with torch.no_grad():
        pred = out.seq_logits[:n] > 0
        acc = (pred == label.bool()).float().mean()
        real_acc = pred[:n_real].float().mean()
    return loss, {
        "d_loss": loss.item(),
        "d_seq_loss": seq.item(),
        "d_tok_loss": tok.item(),
        "d_aux_loss": aux.item(),
        "d_acc": float(acc),
        "d_real_acc": float(real_acc),
    }


def disc_step(D, opt, batch: dict, fake: torch.Tensor, cfg: TrainConfig, tk: Tokens) -> dict:
    """One D step: real rows of `batch` against `fake` full rows (prefix + sampled review)."""
    with autocast(fake.device, training_dtype(fake.device)):
        loss, m = disc_loss(D, batch["ids"], fake, batch["rating"], batch["category"], cfg=cfg, tk=tk)
    loss.backward()
    m["d_grad_norm"] = clip_and_step(D, opt, cfg.grad_clip)
    m.setdefault("tokens", int((batch["ids"] != tk.pad_id).sum() + (fake != tk.pad_id).sum()))
    return m


@torch.no_grad()
def dense_rewards(D, full: torch.Tensor, cfg: TrainConfig, tk: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards in [0, 1] from D's token head, mixed with its sequence score; and the mask."""
    D = unwrap(D)
    was = D.training
    D.eval()
    out = D(full)
    D.train(was)
    mask = review_mask(full[:, tk.prefix_len :], tk.eos_id, tk.pad_id)
    w = cfg.seq_reward_weight
    r = (1 - w) * torch.sigmoid(out.token_logits.float()) + w * torch.sigmoid(out.seq_logits.float())[:, None]
    return r * mask, mask


@torch.no_grad()
def condition_rewards(
    C, full: torch.Tensor, rating: torch.Tensor, category: torch.Tensor, cfg: TrainConfig, tk: Tokens
) -> tuple[torch.Tensor, dict]:
    """Per-row reward for writing the review that was asked for: the weighted log-probability, under the
    frozen classifier C (D's rating and category heads frozen at the end of D's warm-up), of the target
    rating (its polarity where the prompt asks for a polarity only, as in Chinese) and category, judged from
    the review alone (`review_only`: the prompt names the targets). Rows without a target get 0 for that
    term. C is frozen so that G cannot chase a target that moves with it."""
    out = C(review_only(full, tk))
    cat_has = category >= 0
    cat_lp = torch.log_softmax(out.category_logits.float(), -1).gather(1, category.clamp_min(0)[:, None]).squeeze(1)
    terms = {}
    total = torch.zeros(full.shape[0], device=full.device)
    for name, (lp, has), w in (
        (
            "rating",
            rating_target_logprob(out.rating_logits, rating, target_polarity(full, tk)),
            cfg.rating_reward_weight,
        ),
        ("category", (cat_lp * cat_has, cat_has), cfg.category_reward_weight),
    ):
        terms[f"r_{name}"] = float(lp.sum() / has.sum().clamp_min(1))
        total += w * lp
    return total, terms


def add_terminal(rewards: torch.Tensor, mask: torch.Tensor, terminal: torch.Tensor, gamma: float) -> torch.Tensor:
    """`rewards` with a per-row reward at each row's last review token, scaled by 1 / (1 - gamma) so that
    after `group_advantages`' (1 - gamma) scaling it adds exactly `terminal` to the last token's return and
    gamma^k * terminal to the token k steps earlier."""
    last = (mask.sum(1).long() - 1).clamp_min(0)
    bonus = torch.zeros_like(rewards)
    bonus.scatter_(1, last[:, None], (terminal / (1 - gamma))[:, None].to(rewards.dtype))
    return rewards + bonus * mask


def group_advantages(rewards: torch.Tensor, mask: torch.Tensor, group_size: int, gamma: float) -> torch.Tensor:
    """Discounted return-to-go per token minus the group-mean return at the same position.

    The baseline is the mean over the samples of the same prompt, so it needs no value network and does
    not depend on other workers' rows."""
    B, R = rewards.shape
    ret = torch.zeros_like(rewards)
    running = torch.zeros(B, device=rewards.device, dtype=rewards.dtype)
    for t in range(R - 1, -1, -1):
        running = rewards[:, t] + gamma * running * mask[:, t]
        ret[:, t] = running
    ret = ret * (1 - gamma)  # returns in [0, 1]: stable scale without a cross-worker std
    m = mask.to(ret.dtype).view(B // group_size, group_size, R)
    g = ret.view(B // group_size, group_size, R)
    base = (g * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    return ((g - base) * m).view(B, R)


def adversarial_step(
    G,
    D,
    ref,
    opt,
    batch: dict,
    fake_full: torch.Tensor,
    *,
    cfg: TrainConfig,
    tk: Tokens,
    terminal: torch.Tensor | None = None,
) -> dict:
    """One policy-gradient step on G.

    `fake_full` holds `group_size` samples per prompt (rows grouped consecutively). The loss is
    REINFORCE with dense per-token D rewards (plus an optional per-row `terminal` reward at each review's
    end, such as `condition_rewards`) and a group-mean baseline, plus a KL anchor to the frozen MLE
    generator `ref` and an MLE anchor on the real rows of `batch`.
    """
    real = batch["ids"]
    n_fake = fake_full.shape[0]
    realness, mask = dense_rewards(D, fake_full, cfg, tk)
    rewards = realness if terminal is None else add_terminal(realness, mask, terminal, cfg.gamma)
    adv = group_advantages(rewards, mask, cfg.group_size, cfg.gamma)
    with autocast(real.device, training_dtype(real.device)):
        both = torch.cat([fake_full, real])
        targets = both[:, tk.prefix_len :]
        logp = token_logprobs(review_logits(G, both, tk.prefix_len), targets)
        with torch.no_grad():
            ref_logp = token_logprobs(review_logits(ref, fake_full, tk.prefix_len), fake_full[:, tk.prefix_len :])
    fake_logp = logp[:n_fake]
    pg = -_row_mean(adv * fake_logp, mask).mean()
    # k3 estimator of KL(pi || ref): unbiased, always >= 0, low variance
    log_ratio = ref_logp - fake_logp
    kl = _row_mean(torch.exp(log_ratio) - log_ratio - 1, mask).mean()
    real_mask = real[:, tk.prefix_len :] != tk.pad_id
    mle = _row_mean(-logp[n_fake:], real_mask).mean()
    loss = pg + cfg.kl_coef * kl + cfg.mle_coef * mle
    loss.backward()
    gnorm = clip_and_step(G, opt, cfg.grad_clip)
    n_tok = mask.sum()
    return {
        "g_loss": loss.item(),
        "pg_loss": pg.item(),
        "kl": kl.item(),
        "g_mle": mle.item(),
        "reward": float(realness.sum() / n_tok.clamp_min(1)),
        "fake_len": float(mask.sum(1).float().mean()),
        "g_grad_norm": gnorm,
        "tokens": int(n_tok + real_mask.sum()),
    }
