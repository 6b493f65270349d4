"""The evaluation's targets (GAN vs MLE at matched diversity, no collapse, rating match, scorer quality,
copying), each judged MET, NOT MET or N/A from an `EvalResult`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from reviewgen.evaluate.matching import MatchedPoint
from reviewgen.evaluate.results import EvalResult, ScorerResult, Target
from reviewgen.evaluate.scorer_eval import OOD_TOP_K
from reviewgen.evaluate.world import FakesSection


def _status(ok: bool | None) -> str:
    return "N/A" if ok is None else ("MET" if ok else "NOT MET")


# GAN vs MLE at matched diversity: (metric, how much the GAN must exceed the MLE baseline by)
GAN_MARGINS = (("mauve", 0.02), ("category_acc", 0.05), ("polarity_agreement", 0.05), ("title_relevance", 0.0))
# reported beside the verdict, not judged
REPORTED_ONLY = (("bleu4", "BLEU-4"), ("fed", "FED"), ("rating_acc", "rating accuracy"), ("rating_mae", "rating MAE"))
LABELS = {
    "mauve": "MAUVE",
    "category_acc": "category accuracy",
    "polarity_agreement": "polarity agreement",
    "title_relevance": "title relevance",
}


def check_targets(r: EvalResult) -> dict[str, Target]:
    """The evaluation's targets by name: GAN vs MLE at matched diversity, no collapse, rating match, the
    scorer against its baseline, the detector (own, out-of-family and fakes sources), and copying."""
    g = r.matched.points["gan"]
    return {
        "gan_dominates_mle": _gan_vs_mle(r),
        "no_collapse": Target(*_verdict(_collapse(g, r.human))),
        "rating_match": _rating_match(g, r.human),
        **_scorer_targets(r.scorer),
        "copying": _copying(r),
    }


def _verdict(check: tuple[bool | None, str]) -> tuple[str, str]:
    ok, detail = check
    return _status(ok), detail


def _rating_match(g: MatchedPoint, human: Mapping[str, Any]) -> Target:
    """The rating classifier's accuracy on GAN reviews at matched diversity within 0.02 of the real reviews'."""
    ra_g, ra_h = g.metrics.get("rating_acc"), human.get("rating_acc")
    ok = None if ra_g is None or ra_h is None else abs(ra_g - ra_h) <= 0.02
    return Target(
        _status(ok),
        f"rating classifier accuracy on GAN reviews at matched diversity "
        f"(T={g.temperature:.3f}) {_f(ra_g)} vs real {_f(ra_h)} (need within 0.02)",
    )


def _scorer_targets(scorer: ScorerResult) -> dict[str, Target]:
    """The scorer over every GAN sweep temperature (AUROC, ECE, margin over TF-IDF+LR), and the detector:
    own samples, a generator the scorer never saw, and another generator's reviews (`--fakes`)."""
    rows = [s for s in scorer.settings.values() if s["model"] == "gan" and s["top_p"] == 1.0 and not s.get("top_k")]
    cal = [s["calibrated"] for s in rows]
    au, ec = min(m["auroc"] for m in cal), max(m["ece"] for m in cal)
    margin = min(s["calibrated"]["accuracy"] - s["tfidf_lr"]["accuracy"] for s in rows)
    out = {
        "scorer": Target(
            _status(au >= 0.99 and ec <= 0.03 and margin >= 0.02),
            f"over GAN temperatures: worst AUROC {au:.4f} (need >= 0.99), worst ECE {ec:.4f} (need "
            f"<= 0.03), smallest accuracy margin over TF-IDF+LR {margin:+.4f} (need >= +0.02)",
        )
    }
    ood = [s["calibrated"] for s in scorer.settings.values() if s.get("source") == "out_of_family"]
    au_ood = min((m["auroc"] for m in ood), default=None)
    ok = au >= 0.95 and ec <= 0.05 and (au_ood is not None and au_ood >= 0.85)
    floor = max((m.get("ece_floor") or 0.0) for m in cal)
    world_ok, world = _fakes_check(scorer.fakes)
    out["scorer_detection"] = Target(
        _status(ok and world_ok is not False),
        f"p_human over GAN temperatures: worst AUROC {au:.4f} (need >= 0.95), "
        f"worst ECE {ec:.4f} (need <= 0.05; a perfectly calibrated scorer would read "
        f"up to {floor:.4f} on these rows); out-of-family generator (top-k "
        f"{OOD_TOP_K}): AUROC {_f(au_ood)} (need >= 0.85"
        + ("; no out-of-family model was given)" if au_ood is None else ")")
        + f"; {world}",
    )
    return out


def _copying(r: EvalResult) -> Target:
    """Accepted output copies at most 1% at every GAN temperature (raw copies reported beside it)."""
    gan = r.sweep.of("gan")
    acr = max(p.mean("accepted_copy_rate") or 0.0 for p in gan)
    raw = max(p.mean("copy_rate") or 0.0 for p in gan)
    return Target(
        _status(acr <= 0.01),
        f"worst accepted-output copy rate over GAN temperatures {acr:.4f} (need "
        f"<= 0.01); before the output filter {raw:.4f} of raw samples copy >= "
        f"{r.meta.max_copy_span} training tokens and are rejected",
    )


def _collapse(point: MatchedPoint, human: Mapping[str, Any]) -> tuple[bool | None, str]:
    """Self-BLEU-4 within ±0.03 of the human texts' and distinct-2 at least 90% of theirs, at `point`."""
    sb, d2 = point.metrics.get("self_bleu4"), point.metrics.get("distinct2")
    if sb is None or d2 is None:
        return None, "no Self-BLEU-4 or distinct-2 at the matched point"
    h_sb, h_d2 = human["self_bleu4"], human["distinct2"]
    ok = abs(sb - h_sb) <= 0.03 and d2 >= 0.9 * h_d2
    return ok, (
        f"GAN at T={point.temperature:.3f}: Self-BLEU-4 {sb:.4f} vs human {h_sb:.4f} "
        f"(need ±0.03); distinct-2 {d2:.4f} vs 90% of human {0.9 * h_d2:.4f}"
    )


def _gan_vs_mle(r: EvalResult) -> Target:
    """GAN vs MLE at matched diversity (`reviewgen.evaluate.matching`): MAUVE, category accuracy, polarity
    agreement and title relevance ahead by `GAN_MARGINS`, no collapse, accepted copies <= 1%. BLEU, FED,
    rating accuracy/MAE and test NLL are reported beside it, not judged."""
    mt = r.matched
    g, m = mt.points["gan"], mt.points["mle"]
    gm, mm = g.metrics, m.metrics
    subs: dict[str, bool | None] = {}
    parts = []
    for key, margin in GAN_MARGINS:
        a, b = gm.get(key), mm.get(key)
        subs[key] = None if a is None or b is None else a >= b + margin
        parts.append(f"{LABELS[key]} {_f(a)} vs {_f(b)} (need " + (f"+{margin:g})" if margin else ">=)"))
    subs["no_collapse"], collapse = _collapse(g, r.human)
    acr = gm.get("accepted_copy_rate")
    subs["copying"] = None if acr is None else acr <= 0.01
    parts += [f"no collapse: {collapse}", f"accepted-output copy rate {_f(acr)} (need <= 0.01)"]
    matched_ok = mt.common and g.reached and m.reached
    decided = [x for x in subs.values() if x is not None]
    ok = matched_ok and bool(decided) and all(decided)
    where = (
        f"at Self-BLEU-4 {mt.target_self_bleu4:.4f} (human {mt.human_self_bleu4:.4f}"
        + ("" if mt.target_is_human else "; the closest value both curves reach")
        + ")"
    )
    if not matched_ok:
        where = (
            f"no common Self-BLEU-4 over the sampled temperatures (GAN closest {g.self_bleu4:.4f}, MLE "
            f"closest {m.self_bleu4:.4f}, human {mt.human_self_bleu4:.4f}); compared there anyway"
        )
    reported = [f"{lab} {_f(gm.get(k))} vs {_f(mm.get(k))}" for k, lab in REPORTED_ONLY]
    reported.append(f"test NLL {_f(r.nll.get('gan'))} vs {_f(r.nll.get('mle'))}")
    detail = (
        f"{where}, GAN T={g.temperature:.3f} vs MLE T={m.temperature:.3f}: "
        + "; ".join(parts)
        + ". Reported, not judged: "
        + ", ".join(reported)
    )
    if any(x is None for x in subs.values()):
        detail += "; null sub-checks (embeddings or a classifier unavailable) are not counted"
    return Target(_status(ok), detail, {k: _status(x) for k, x in subs.items()})


def _fakes_check(fakes: FakesSection | None) -> tuple[bool | None, str]:
    """Another generator's reviews (`--fakes`), every language: AUROC >= 0.80 and >= 0.70 in every length
    bin, and at most 5% of its machine reviews scored p_human >= 0.9. None when no fakes file was read."""
    if fakes is None or not fakes.languages:
        return None, "no fakes file was read (--fakes)"
    oks, parts = [], []
    for lang, m in fakes.languages.items():
        wb = m.worst_bin_auroc
        oks.append(m.auroc >= 0.80 and wb is not None and wb >= 0.70 and m.confident_human <= 0.05)
        parts.append(
            f"[{lang}] AUROC {m.auroc:.4f} (need >= 0.80), worst length bin {_f(wb)} (need >= 0.70), "
            f"machine reviews at p_human >= 0.9 {m.confident_human:.4f} (need <= 0.05)"
        )
    return all(oks), f"fakes file {Path(fakes.file).name}: " + "; ".join(parts)


def _f(x: float | None, nd: int = 4) -> str:
    return "null" if x is None else f"{x:.{nd}f}"
