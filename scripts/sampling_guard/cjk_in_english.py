"""English reviews of the `make demo` model with and without the script rule of the sampler's guard: the share
that holds a CJK character, the real-word rate and MAUVE against the test split's English reviews, per seed.
Both arms write whole UTF-8 characters; only the rule that English rows forbid CJK tokens differs.
Run: python scripts/sampling_guard/cjk_in_english.py [runs/demo]"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from reviewgen.core.checkpoint import load_checkpoint
from reviewgen.core.encoding import conditions
from reviewgen.core.sampling import SamplingParams, counter_uniforms, row_seed, sample, text_guard
from reviewgen.core.utf8 import Utf8Guard
from reviewgen.data.corpus import load_split
from reviewgen.evaluate import text_metrics as TM
from reviewgen.evaluate.fluency import real_word_rate, vocabulary
from reviewgen.generate.config import GenerateConfig

CJK = re.compile(r"[\u3000-\u9fff\uf900-\uffef]")


def main(demo: Path) -> None:
    ck, s = load_checkpoint(demo / "model"), GenerateConfig().sampling
    tok = ck.tokenizer
    test = load_split(demo / "data", "test")
    en = test[test["language"] == "en"]
    rows = en.sample(min(300, len(en)), random_state=0)
    conds = conditions(rows)
    vocab = vocabulary(load_split(demo / "data", "train")["text"].astype(str))
    human = TM.embed_texts(en["text"].astype(str).tolist())
    params = SamplingParams(tok.max_review_len, s.temperature, 0, s.top_p)
    print(f"{len(conds)} English test conditions, T {s.temperature}, top-p {s.top_p}")
    print("| seed | rule | with CJK | real-word rate | MAUVE |\n|---|---|---|---|---|")
    for seed in (0, 1, 2):
        seeds = [row_seed(f"{p}:{i}", 0, seed) for i, p in enumerate(rows["product_id"])]
        for rule in (False, True):
            texts = []
            for b in range(0, len(conds), 64):
                c = conds[b : b + 64]
                guard = text_guard(tok, c) if rule else Utf8Guard(tok.utf8_table(), len(c), "cpu")
                ids = sample(
                    ck.generator,
                    tok.encode_prefixes(c),
                    params,
                    eos_id=tok.eos_id,
                    pad_id=tok.pad_id,
                    uniforms=counter_uniforms(seeds[b : b + 64], params.max_new_tokens),
                    guard=guard,
                )
                texts += tok.decode_reviews(ids)
            cjk = np.mean([bool(CJK.search(t)) for t in texts])
            rwr = real_word_rate(texts, vocab)["real_word_rate"]
            mauve = TM.mauve_score(human, TM.embed_texts(texts))
            print(f"| {seed} | {'on' if rule else 'off'} | {cjk:.3f} | {rwr:.3f} | {mauve:.3f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
