"""Collect scorer signals on every source for offline detector exploration."""
import sys, numpy as np, pandas as pd, torch
from reviewgen.score.scorer import Scorer, review_conditions
from reviewgen.score.signals import SIGNALS
from reviewgen.data.corpus import load_split
from reviewgen.core.encoding import conditions
from reviewgen.core.sampling import generate_texts, sample, SamplingParams, counter_uniforms, row_seed
from reviewgen.core.text import detect_language
torch.set_num_threads(2)
model, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
sc = Scorer(model)
tok = sc.tok
rows = []
def add(name, conds, texts, label, extra=None):
    r = sc.score_texts(conds, texts)
    df = pd.DataFrame({k: r[k] for k in ["p_human", *SIGNALS]})
    df["source"], df["label"], df["text"] = name, label, texts
    df["language"] = [c.language for c in conds]
    if extra is not None:
        for k, v in extra.items(): df[k] = v
    df.to_parquet(f"{out}/{name.replace(':','_').replace('=','').replace(',','_')}.parquet"); print(name, len(texts), flush=True)
import os; os.makedirs(out, exist_ok=True)
val = load_split(data, "val"); test = load_split(data, "test").sample(n=600, random_state=0)
gp = pd.read_parquet("../shared/data/fakes_maideup_gpt4_hotels.parquet")
gc = review_conditions([{"text": t, "product_title": h, "category": "hotel", "language": l}
                        for t, h, l in zip(gp.text, gp.hotel_name, gp.language)])
add("gpt4", gc, gp.text.tolist(), 0, {"is_generated": gp.is_generated.values, "flang": gp.language.values,
                                      "nchar": gp.text.str.len().values})
vc = conditions(val); add("val_human", vc, val.text.astype(str).tolist(), 1)
tc = conditions(test); add("test_human", tc, test.text.astype(str).tolist(), 1)
gens = {"G": sc.G, "ref": sc.ref}
settings = [(0.7,0,1.0),(0.85,0,1.0),(1.0,0,1.0),(1.15,0,1.0),(1.3,0,1.0),(1.0,40,1.0),(1.0,0,0.9),(0.5,0,1.0),(0.8,5,1.0),(1e-4,0,1.0)]
for (t,k,p) in [(0.9,0,1.0),(0.7,0,1.0),(1.1,0,1.0),(1.3,0,1.0)]:
    keys = [f"test:G:{t}:{i}" for i in range(len(tc))]
    add(f"test:G:T={t:g},k={k},p={p:g}", tc, generate_texts(sc.G, tok, tc, keys, seed=0, temperature=t, top_k=k, top_p=p), 0)
for gname, g in gens.items():
    for (t,k,p) in settings:
        for split, conds in (("val", vc),):
            keys = [f"{split}:{gname}:{t}:{k}:{p}:{i}" for i in range(len(conds))]
            texts = generate_texts(g, tok, conds, keys, seed=0, temperature=t, top_k=k, top_p=p)
            add(f"{split}:{gname}:T={t:g},k={k},p={p:g}", conds, texts, 0)
def continue_openings(G, conds, texts, prefix, opening=8, temperature=0.8):
    ids = tok.review_token_lists(texts)
    rows = [i for i, t in enumerate(ids) if len(t) >= 2 * opening]
    params = SamplingParams(tok.max_review_len - opening, temperature)
    outs = []
    for s in range(0, len(rows), 64):
        b = rows[s:s + 64]
        pre = torch.cat([tok.encode_prefixes([conds[i] for i in b]), torch.tensor([ids[i][:opening] for i in b])], 1)
        gen = sample(G, pre, params, eos_id=tok.eos_id, pad_id=tok.pad_id,
                     uniforms=counter_uniforms([row_seed(f"{prefix}:{i}", 0, 0) for i in b], params.max_new_tokens))
        outs.extend(tok.decode_reviews(torch.cat([pre[:, -opening:], gen], 1)))
    return [conds[i] for i in rows], outs
for gname, g in gens.items():
    for split, conds, df in (("val", vc, val),):
        for t in (0.8, 1.0):
            c2, t2 = continue_openings(g, conds, df.text.astype(str).tolist(), f"{split}{gname}{t}", temperature=t)
            add(f"{split}:{gname}:cont,T={t:g}", c2, t2, 0)
