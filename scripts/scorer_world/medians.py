import sys, glob, numpy as np, pandas as pd
df = pd.concat([pd.read_parquet(f) for f in glob.glob(sys.argv[1] + "/*.parquet")], ignore_index=True)
cols = ["ngram_logprob","trigram_seen","mean_logprob","mean_log_rank","binoculars","fast_detect","d_logit","log_tokens","mean_entropy"]
for lang in ("zh","en"):
    print(lang)
    rows=[]
    for s in sorted(df.source.unique()):
        if s.startswith("test:") : continue
        d = df[(df.source==s)&(df.language==lang)] if s!="gpt4" else None
        if s=="gpt4":
            g = df[(df.source=="gpt4")&(df.flang==lang)]
            for lab,nm in ((0,"gpt4-human"),(1,"gpt4-machine")):
                d2=g[g.is_generated==lab]; rows.append([nm,len(d2)]+[round(np.nanmedian(d2[c]),3) for c in cols])
            continue
        rows.append([s,len(d)]+[round(np.nanmedian(d[c]),3) for c in cols])
    print(pd.DataFrame(rows, columns=["src","n"]+cols).to_string(index=False))
