"""Branch an adversarial phase off a finished MLE checkpoint with other train settings, for the GAN ablation
(docs/results/gan_ablation.md). Copies MLE_DIR to OUT/state, applies `train.KEY=VALUE` overrides to its
config, and continues in-process (the MLE phase is not rerun, so every branch shares one MLE baseline).

    python scripts/gan_ablation/branch.py runs/demo/model/mle runs/demo/data runs/abl/cond120 \
        train.adv_steps=120 train.rating_reward_weight=0.5
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from reviewgen.core.config import RunConfig
from reviewgen.core.config_io import parse_set_options
from reviewgen.train.local import train_local


def main(mle_dir: str, data_dir: str, out: str, *overrides: str) -> None:
    out_dir = Path(out)
    state = out_dir / "state"
    if not (state / "meta.json").is_file():
        shutil.copytree(mle_dir, state)
        cfg_path = state / "config.json"
        doc = json.loads(cfg_path.read_text())
        cfg = RunConfig.from_dict(doc["run"]).override(parse_set_options(overrides), source="branch")
        cfg_path.write_text(json.dumps(doc | {"run": cfg.to_dict()}, indent=2))
        # a Ray Train checkpoint's loader position means nothing to the in-process loader: start it afresh
        ts = torch.load(state / "train_state.pt", weights_only=True)
        ts["run"] = {k: v for k, v in ts.get("run", {}).items() if k != "loader"}
        torch.save(ts, state / "train_state.pt")
    train_local(data_dir, out_dir, RunConfig(), log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main(*sys.argv[1:])
