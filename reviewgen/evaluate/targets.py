"""The evaluation's targets (GAN vs MLE at matched diversity, no collapse, rating match, scorer quality,
copying), each judged MET, NOT MET or N/A from the metrics dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reviewgen.evaluate.quality import MODELS, mean_of
from reviewgen.evaluate.scorer_eval import OOD_TOP_K


def _status(ok: bool | None) -> str:
    return "N/A" if ok is None else ("MET" if ok else "NOT MET")


def check_targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The evaluation's targets, each {"status": MET|NOT MET|N/A, "detail": str, ...} ."""
    mt, h, sw = r["matched"], r["human"], r["sweep"]
    g_t, m_t = mt["gan"]["temperature"], mt["mle"]["temperature"]
    g, m = sw["gan"][f"{g_t:g}"], sw["mle"][f"{m_t:g}"]
    out: dict[str, dict[str, Any]] = {}

    def v(entry, key):
        return mean_of(entry.get(key))

    # 1. GAN dominates MLE at matched diversity
    subs = {}
    b_g, b_m = v(g, "bleu4"), v(m, "bleu4")
    subs["bleu4"] = None if b_g is None or b_m is None else b_g >= b_m + 0.02
    f_g, f_m = v(g, "fed"), v(m, "fed")
    subs["fed"] = None if f_g is None or f_m is None else f_g <= 0.9 * f_m
    u_g, u_m = v(g, "mauve"), v(m, "mauve")
    subs["mauve"] = None if u_g is None or u_m is None else u_g >= u_m + 0.02
    subs["nll"] = r["nll"]["gan"] <= 1.05 * r["nll"]["mle"]
    matched_ok = mt["gan"]["within"] and mt["mle"]["within"]
    decided = [x for x in subs.values() if x is not None]
    ok = matched_ok and bool(decided) and all(decided)
    if not matched_ok:
        why = "; ".join(f"{n}: closest T={mt[n]['temperature']:g} has Self-BLEU-4 {mt[n]['self_bleu4']:.3f} "
                        f"(human {mt['human_self_bleu4']:.3f}, off by {mt[n]['diff']:+.3f})"
                        for n in MODELS if not mt[n]["within"])
        detail = f"no temperature within ±{mt['tolerance']} of the human Self-BLEU-4 ({why}); compared at closest T anyway. "
    else:
        detail = ""
    detail += (f"GAN T={g_t:g} vs MLE T={m_t:g}: BLEU-4 {_f(b_g)} vs {_f(b_m)} (need +0.02), FED {_f(f_g)} vs {_f(f_m)} "
               f"(need -10%), MAUVE {_f(u_g)} vs {_f(u_m)} (need +0.02), test NLL {r['nll']['gan']:.4f} vs "
               f"{r['nll']['mle']:.4f} (need <= +5%)")
    if any(x is None for x in subs.values()):
        detail += "; null sub-checks (embeddings unavailable) are not counted"
    out["gan_dominates_mle"] = {"status": _status(ok), "detail": detail,
                                "checks": {k: _status(x) for k, x in subs.items()}}

    # 2. no collapse
    sb_ok = abs(v(g, "self_bleu4") - h["self_bleu4"]) <= 0.03
    d2_ok = v(g, "distinct2") >= 0.9 * h["distinct2"]
    out["no_collapse"] = {"status": _status(sb_ok and d2_ok), "detail":
                          f"GAN T={g_t:g}: Self-BLEU-4 {v(g, 'self_bleu4'):.4f} vs human {h['self_bleu4']:.4f} "
                          f"(need ±0.03); distinct-2 {v(g, 'distinct2'):.4f} vs 90% of human {0.9 * h['distinct2']:.4f}"}

    # 3. rating match
    ra_g, ra_h = v(g, "rating_acc"), h.get("rating_acc")
    ok = None if ra_g is None or ra_h is None else abs(ra_g - ra_h) <= 0.02
    out["rating_match"] = {"status": _status(ok), "detail":
                           f"rating classifier accuracy on GAN T={g_t:g} reviews {_f(ra_g)} vs real {_f(ra_h)} (need within 0.02)"}

    # 4. scorer, on every GAN sweep temperature
    rows = [(k, s) for k, s in r["scorer"]["settings"].items()
            if s["model"] == "gan" and s["top_p"] == 1.0 and not s.get("top_k")]
    au = min(s["calibrated"]["auroc"] for _, s in rows)
    ec = max(s["calibrated"]["ece"] for _, s in rows)
    margin = min(s["calibrated"]["accuracy"] - s["tfidf_lr"]["accuracy"] for _, s in rows)
    out["scorer"] = {"status": _status(au >= 0.99 and ec <= 0.03 and margin >= 0.02), "detail":
                     f"over GAN temperatures: worst AUROC {au:.4f} (need >= 0.99), worst ECE {ec:.4f} (need <= 0.03), "
                     f"smallest accuracy margin over TF-IDF+LR {margin:+.4f} (need >= +0.02)"}

    # 4b. the detector: own generator's samples, and a generator the scorer never saw
    ood = [s for s in r["scorer"]["settings"].values() if s.get("source") == "out_of_family"]
    au_ood = min((s["calibrated"]["auroc"] for s in ood), default=None)
    ok = au >= 0.95 and ec <= 0.05 and (au_ood is not None and au_ood >= 0.85)
    floor = max((s["calibrated"].get("ece_floor") or 0.0) for _, s in rows)
    world_ok, world = _fakes_check(r["scorer"].get("fakes"))
    out["scorer_detection"] = {"status": _status(ok and world_ok is not False), "detail":
                               f"p_human over GAN temperatures: worst AUROC {au:.4f} (need >= 0.95), worst ECE {ec:.4f} "
                               f"(need <= 0.05; a perfectly calibrated scorer would read up to {floor:.4f} on these "
                               f"rows); out-of-family generator (top-k {OOD_TOP_K}): AUROC {_f(au_ood)} "
                               "(need >= 0.85" + ("; no out-of-family model was given)" if au_ood is None else ")")
                               + f"; {world}"}

    # 5. copying: accepted output, every GAN setting
    acr = max(mean_of(s.get("accepted_copy_rate")) or 0.0 for s in sw["gan"].values())
    raw = max(mean_of(s.get("copy_rate")) or 0.0 for s in sw["gan"].values())
    out["copying"] = {"status": _status(acr <= 0.01), "detail":
                      f"worst accepted-output copy rate over GAN temperatures {acr:.4f} (need <= 0.01); before the output filter "
                      f"{raw:.4f} of raw samples copy >= {r['meta']['copy_span']} training tokens and are rejected"}
    return out


def _fakes_check(fakes: dict[str, Any] | None) -> tuple[bool | None, str]:
    """Another generator's reviews (`--fakes`), every language: AUROC >= 0.80 and >= 0.70 in every length
    bin, and at most 5% of its machine reviews scored p_human >= 0.9. None when no fakes file was read."""
    if not fakes or not fakes.get("languages"):
        return None, "no fakes file was read (--fakes)"
    oks, parts = [], []
    for lang, m in fakes["languages"].items():
        wb = m.get("worst_bin_auroc")
        oks.append(m["auroc"] >= 0.80 and wb is not None and wb >= 0.70 and m["confident_human"] <= 0.05)
        parts.append(f"[{lang}] AUROC {m['auroc']:.4f} (need >= 0.80), worst length bin {_f(wb)} (need >= 0.70), "
                     f"machine reviews at p_human >= 0.9 {m['confident_human']:.4f} (need <= 0.05)")
    return all(oks), f"fakes file {Path(fakes['file']).name}: " + "; ".join(parts)


def _f(x: float | None, nd: int = 4) -> str:
    return "null" if x is None else f"{x:.{nd}f}"
