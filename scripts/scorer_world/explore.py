import sys, numpy as np, pandas as pd, warnings
warnings.filterwarnings("ignore")
from dataclasses import replace
import reviewgen.score.calibration as C
from reviewgen.score.combiner import Detector, ANY_LANGUAGE, fit_domain, base_signal
from reviewgen.core.metrics import auroc, ece
from reviewgen.score.signals import SIGNALS
import glob
df = pd.concat([pd.read_parquet(f) for f in glob.glob(sys.argv[1] + "/*.parquet")], ignore_index=True)
def S(d): return {k: d[k].to_numpy(np.float64) for k in SIGNALS}
def group(src):
    g = src.split(":")[1]; rest = src.split(":")[2]
    plain = ("k=0" in rest and "p=1" in rest and not any(x in rest for x in ("T=0.5", "T=0.3", "T=0.0001"))) or rest.startswith("cont")
    if any(x in rest for x in ("T=0.5,", "T=0.3,", "T=0.0001", "k=5,")):
        return f"{g}:sharp"
    if rest.startswith("cont"):
        return f"{g}:continued"
    return f"{g}:{'plain' if plain else 'truncated'}"
def fit(fit_sources, domain_q=0.99, candidates=None):
    v = df[(df.source == "val_human") | df.source.isin(fit_sources)]
    y = (v.label == 1).astype(float).to_numpy()
    groups = ["human" if s == "val_human" else group(s) for s in v.source]
    C.DOMAIN_QUANTILE = domain_q or 0.99
    if candidates is not None: C.DETECTOR_CANDIDATES = candidates
    det = C.fit_detector(S(v), y, groups, v.language.tolist())
    if domain_q is None:  # the variant without the out-of-domain measure
        det = replace(det, combiners={k: replace(c, domain={}, domain_radius=0.0) for k, c in det.combiners.items()})
    return det
def p_of(det, d):
    return 1 / (1 + np.exp(-det.logit(S(d), d.language.tolist())))
def report(det, name=""):
    th = df[df.source == "test_human"]; ph = p_of(det, th)
    own = []
    for src in sorted(s for s in df.source.unique() if s.startswith("test:G:")):
        f = df[df.source == src]; pf = p_of(det, f)
        y = np.r_[np.ones(len(ph)), np.zeros(len(pf))]; p = np.r_[ph, pf]; ok = np.isfinite(p)
        own.append((src[7:], auroc(y[ok], p[ok]), ece(y[ok], p[ok])))
    g = df[df.source == "gpt4"]; pg = p_of(det, g)
    out = [name]
    for lang in ("en", "zh"):
        r = (g.flang == lang).to_numpy() & np.isfinite(pg)
        y = 1 - g.is_generated.to_numpy()[r]; p = pg[r]; ch = g.nchar.to_numpy()[r]
        edges = np.quantile(ch, np.linspace(0, 1, 5)); bins = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            b = (ch >= lo) & (ch <= hi)
            bins.append(auroc(y[b], p[b]))
        out.append(f"{lang}: AUC {auroc(y,p):.3f} bins {' '.join(f'{x:.2f}' for x in bins)} conf {np.mean(p[y==0]>=0.9):.2f} humconf {np.mean(p[y==1]>=0.9):.2f}")
    print(" | ".join(out))
    print("   own:", " ".join(f"{s}:{a:.3f}/{e:.3f}" for s, a, e in own))
if __name__ == "__main__":
    base = [s for s in df.source.unique() if s.startswith("val:") and any(x in s for x in ("T=0.7,k=0,p=1","T=0.85,","T=1,k=0,p=1","T=1.15,","T=1.3,k=0,p=1","T=1,k=40","p=0.9"))]
    det = fit(base, None); report(det, "base,nodomain")
    det = fit(base, 0.99); report(det, "base,domain")
    both = base + [s for s in df.source.unique() if s.startswith("val:") and any(x in s for x in ("T=0.5,","T=0.0001,","k=5","cont"))]
    det = fit(both, None); report(det, "both,nodomain")
    det = fit(both, 0.99); report(det, "both,domain")
