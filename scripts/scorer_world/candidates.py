import sys, numpy as np, pandas as pd, glob, warnings
warnings.filterwarnings("ignore")
sys.argv = ["x", sys.argv[1]]
exec(open(__file__.rsplit("/", 1)[0] + "/explore.py").read().split("if __name__")[0])
from reviewgen.score.combiner import Candidate, Detector
base = [s for s in df.source.unique() if s.startswith("val:") and any(x in s for x in ("T=0.7,k=0,p=1","T=0.85,","T=1,k=0,p=1","T=1.15,","T=1.3,k=0,p=1","T=1,k=40","p=0.9"))]
both = base + [s for s in df.source.unique() if s.startswith("val:") and any(x in s for x in ("T=0.5,","k=5","cont"))]
orig = C.DETECTOR_CANDIDATES
for name in [c.name for c in orig]:
    for srcs, tag in ((base,"base"),(both,"both")):
        det = fit(srcs, None, [c for c in orig if c.name == name])
        report(det, f"{name} {tag}")
