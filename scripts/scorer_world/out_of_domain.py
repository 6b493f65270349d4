import sys, numpy as np, pandas as pd, glob, warnings
warnings.filterwarnings("ignore")
sys.argv = ["x", sys.argv[1]]
exec(open(__file__.rsplit("/", 1)[0] + "/explore.py").read().split("if __name__")[0])
base = [s for s in df.source.unique() if s.startswith("val:") and any(x in s for x in ("T=0.7,k=0,p=1","T=0.85,","T=1,k=0,p=1","T=1.15,","T=1.3,k=0,p=1","T=1,k=40","p=0.9"))]
det = fit(base, 0.99)
for lang, c in det.combiners.items():
    print(lang, c.features, "radius", round(c.domain_radius,2))
def od(d): return det.out_of_domain(S(d), d.language.tolist())
def dist(name, d):
    o = od(d); p = p_of(det, d)
    print(f"{name:28s} n={len(d):5d} ood>0 {np.mean(o>0):.2f} ood=1 {np.mean(o>=1):.2f} mean {np.nanmean(o):.2f}  p>=0.9 {np.mean(p>=0.9):.2f}")
dist("test_human", df[df.source=="test_human"])
for s in sorted(x for x in df.source.unique() if x.startswith("test:G")): dist(s, df[df.source==s])
g = df[df.source=="gpt4"]
for lang in ("en","zh"):
    for lab, nm in ((0,"human"),(1,"gpt4")):
        dist(f"gpt4 {lang} {nm}", g[(g.flang==lang)&(g.is_generated==lab)])
