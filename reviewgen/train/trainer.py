"""Training: MLE pretraining, discriminator warm-up, adversarial training.

`GANTrainer` owns the models, optimizers, RNG and phase state, and advances one step at a time from
whatever batch iterator it is given. `reviewgen.train.local.train_local` runs it through the one training
loop (`reviewgen.train.loop`) in this process with a local sink; the Ray Train path
(`reviewgen.train.distributed`) runs the same loop inside each worker with DDP-wrapped models.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from reviewgen.core.base_ref import own_state
from reviewgen.core.build import discriminator_on, generator_from_state, trunk_state
from reviewgen.core.checkpoint import load_checkpoint, save_checkpoint
from reviewgen.core.config import RunConfig
from reviewgen.core.hf_import import HFBase, HFImportError
from reviewgen.core.lora import share_base, shared_copy
from reviewgen.core.losses import Tokens, adversarial_step, condition_rewards, disc_step, mle_step
from reviewgen.core.model_dir import CheckpointError, Meta
from reviewgen.core.models import Discriminator, Generator, base_view, count_params
from reviewgen.core.sampling import SamplingParams, counter_uniforms, row_seed, sample
from reviewgen.core.tokenizer import ReviewTokenizer

PHASES = ("mle", "disc", "adv", "done")


# -- the trainer -------------------------------------------------------------------------------------


@dataclass
class StepResult:
    phase: str
    step: int
    metrics: dict[str, Any]
    phase_done: bool


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class GANTrainer:
    """Models, optimizers and phase state of one training run (one worker's view under DDP)."""

    def __init__(
        self,
        cfg: RunConfig,
        tok: ReviewTokenizer,
        categories: list[str],
        device="cpu",
        *,
        wrap: Callable[[torch.nn.Module, str], torch.nn.Module] | None = None,
        rank: int = 0,
        world_size: int = 1,
        base: HFBase | None = None,
    ):
        """`base`: start G from a pretrained base's weights (G takes its tensors, with no random-init copy)
        and D from its trunk; its record goes into every checkpoint's meta.json. Every worker of a run
        must pass the same base."""
        self.cfg, self.tok, self.categories = cfg, tok, categories
        self.device = torch.device(device)
        self.rank, self.world = rank, world_size
        # the trainer's own RNG (dropout): swapped in around each step, so the caller's global RNG is
        # never touched, and saved with the training state
        self.rng = torch.Generator().manual_seed(cfg.train.seed)
        self._cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=self._cuda):
            torch.manual_seed(cfg.train.seed)  # scoped: model init draws from the forked global RNG
            self.G, self.D = self._new_models(base)
            if base is not None and not self._init_discriminator_from_generator():
                raise HFImportError(f"base {base.path}: the discriminator's shape differs from the base's")
            self.cuda_rng_state = torch.cuda.get_rng_state(self.device) if self._cuda else None
        wrap = wrap or (lambda m, name: m)
        self.g, self.d = wrap(self.G, "generator"), wrap(self.D, "discriminator")
        t = cfg.train
        # only what trains (all of a full model; adapters and heads on a LoRA base) gets optimizer state
        self.opt_g = torch.optim.AdamW(_trainable(self.G), lr=t.lr_g, weight_decay=t.weight_decay, betas=(0.9, 0.95))
        self.opt_d = torch.optim.AdamW(_trainable(self.D), lr=t.lr_d, weight_decay=t.d_weight_decay, betas=(0.5, 0.999))
        self.ref: Generator | None = None
        self.cond: Discriminator | None = None  # D frozen at the end of its warm-up: the condition rewards' judge
        self.tk = Tokens.of(tok)
        self.phase, self.step, self.global_step = "mle", 0, 0
        T = cfg.tokenizer.prefix_len + cfg.tokenizer.max_review_len
        self.replay = torch.zeros((t.replay_size, T), dtype=torch.long)
        self.replay_n = 0
        self.base: dict[str, Any] | None = base.meta() if base is not None else None  # meta.json's "base"
        self._skip_empty_phases()

    def _new_models(self, base: HFBase | None) -> tuple[Generator, Discriminator]:
        """G and D drawn fresh, or G holding `base` and D starting from its trunk (shared under LoRA)."""
        cfg, dev = self.cfg, self.device
        D_args = (cfg.discriminator, cfg.tokenizer.prefix_len, self.tok.pad_id)
        if base is None:
            G, D = Generator(cfg.generator), Discriminator(*D_args)
            if self.shared_base:  # D's trunk is G's frozen base: one storage of the base weights
                share_base(G, D)
            return G.to(dev), D.to(dev)
        try:
            G = generator_from_state(cfg.generator, base.state)
            D = discriminator_on(G, *D_args) if self.shared_base else Discriminator(*D_args)
        except ValueError as e:
            raise HFImportError(f"base {base.path}: its weights do not fit the models ({e})") from e
        return G.to(dev), D.to(dev)

    @property
    def lora(self) -> bool:
        """G trains adapters on a frozen base; its reference is that base (G with the adapters disabled)."""
        return self.cfg.generator.lora.enabled

    @property
    def shared_base(self) -> bool:
        """D's adapters sit on G's frozen base too (the same tensors)."""
        return self.cfg.discriminator.lora.enabled

    def _new_reference(self) -> Generator:
        # the frozen MLE generator; on a LoRA base, the base itself with no copy
        return base_view(self.G) if self.lora else copy.deepcopy(self.G).eval().requires_grad_(False)

    # -- phases ----------------------------------------------------------------------------------
    def phase_length(self, phase: str | None = None) -> int:
        t = self.cfg.train
        return {"mle": t.mle_steps, "disc": t.disc_warmup_steps, "adv": t.adv_steps, "done": 0}[phase or self.phase]

    def has_finished(self, phase: str) -> bool:
        """Whether `phase` is over (the trainer is in a later phase)."""
        return PHASES.index(self.phase) > PHASES.index(phase)

    def _skip_empty_phases(self) -> None:
        while self.phase != "done" and self.step >= self.phase_length():
            self._enter(PHASES[PHASES.index(self.phase) + 1])

    def _enter(self, phase: str) -> None:
        self.phase, self.step = phase, 0
        if phase in ("disc", "adv") and self.ref is None:
            # the frozen MLE generator: KL anchor target and the baseline the GAN must beat
            self.ref = self._new_reference()
            if self.cfg.train.d_init_from_generator:
                self._init_discriminator_from_generator()
        if phase == "adv":
            for g in self.opt_g.param_groups:
                g["lr"] = self.cfg.train.lr_g_adv
            if self.cond is None and self._uses_conditions():
                self.cond = shared_copy(self.D).eval().requires_grad_(False)

    def _uses_conditions(self) -> bool:
        t = self.cfg.train
        return t.rating_reward_weight != 0 or t.category_reward_weight != 0

    def _init_discriminator_from_generator(self) -> bool:
        """Start D's encoder from the pretrained LM (embeddings, blocks, final norm) when the shapes match.

        A D trained from scratch on a few thousand examples learns slowly; the LM's features already
        know the language, so D reaches a better held-out accuracy in fewer warm-up steps. Heads stay
        freshly initialised."""
        if self.shared_base:
            return True  # D's trunk already is G's base
        g = trunk_state(self.G)
        d = self.D.state_dict()
        if any(k not in d or d[k].shape != v.shape for k, v in g.items()):
            return False
        self.D.load_state_dict(g, strict=False)
        return True

    def _lr_g(self) -> float:
        t = self.cfg.train
        if self.phase != "mle":
            return t.lr_g_adv
        if self.step < t.warmup_steps:
            return t.lr_g * (self.step + 1) / t.warmup_steps
        frac = (self.step - t.warmup_steps) / max(1, t.mle_steps - t.warmup_steps)
        return t.lr_g * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    # -- sampling ----------------------------------------------------------------------------------
    def sample_fakes(self, prefixes: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Full rows (prefix + sampled review) for each prefix, `repeats` consecutive samples each.

        The randomness is a function of (seed, phase, step, global row), so the samples do not depend
        on how the global batch is split across workers."""
        t = self.cfg.train
        prefixes = prefixes.repeat_interleave(repeats, dim=0)
        n = prefixes.shape[0]
        first = self.rank * n
        seeds = [row_seed(f"{self.phase}:{self.step}", first + i, t.seed) for i in range(n)]
        params = SamplingParams(self.cfg.tokenizer.max_review_len, t.sample_temperature, t.sample_top_k, t.sample_top_p)
        fake = sample(
            self.G,
            prefixes,
            params,
            eos_id=self.tk.eos_id,
            pad_id=self.tk.pad_id,
            uniforms=counter_uniforms(seeds, params.max_new_tokens),
        )
        return torch.cat([prefixes, fake], dim=1)

    def _replay_mix(self, fake: torch.Tensor) -> torch.Tensor:
        """Swap a fraction of fresh fakes for older ones, then store the fresh ones (D must not forget
        the generator's earlier modes)."""
        t = self.cfg.train
        out = fake
        k = int(fake.shape[0] * t.replay_frac)
        if k and self.replay_n >= k:
            g = torch.Generator().manual_seed(row_seed("replay", self.global_step, t.seed) & 0x7FFFFFFF)
            pick = torch.randint(0, min(self.replay_n, t.replay_size), (k,), generator=g)
            out = torch.cat([fake[:-k], self.replay[pick].to(fake.device)])
        if t.replay_size:
            for row in fake.cpu():
                self.replay[self.replay_n % t.replay_size] = row
                self.replay_n += 1
        return out

    # -- one step ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _own_rng(self):
        """Run the block on the trainer's RNG state instead of the caller's global one."""
        with torch.random.fork_rng(devices=self._cuda):
            torch.set_rng_state(self.rng.get_state())
            if self._cuda:
                torch.cuda.set_rng_state(self.cuda_rng_state, self.device)
            yield
            self.rng.set_state(torch.get_rng_state())
            if self._cuda:
                self.cuda_rng_state = torch.cuda.get_rng_state(self.device)

    def train_step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        """Advance the current phase by one step on `batch` (this worker's rows)."""
        if self.phase == "done":
            raise RuntimeError("training is finished")
        with self._own_rng():
            return self._train_step(batch)

    def _train_step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        t, P = self.cfg.train, self.tk.prefix_len
        self.G.train()
        self.D.train()
        phase, t0 = self.phase, time.perf_counter()
        if phase == "mle":
            for g in self.opt_g.param_groups:
                g["lr"] = self._lr_g()
            m = mle_step(self.g, self.opt_g, batch, t, self.tk)
        elif phase == "disc":
            fake = self.sample_fakes(batch["ids"][:, :P])
            m = disc_step(self.d, self.opt_d, batch, self._replay_mix(fake), t, self.tk)
        else:
            n_prompts = max(1, batch["ids"].shape[0] // t.group_size)
            # every group_size-th row, not the first n: with equal per-worker slices, the union of the
            # workers' prompts is then exactly the single-process choice (split-invariant)
            prompts = batch["ids"][:: t.group_size][:n_prompts, :P]
            fake = self.sample_fakes(prompts, repeats=t.group_size)
            terminal, terms = self._condition_rewards(batch, fake)
            m = adversarial_step(
                self.g, self.d, self.ref, self.opt_g, batch, fake, cfg=t, tk=self.tk, terminal=terminal
            )
            m.update(terms)
            for _ in range(t.d_steps_per_g_step):
                d_fake = self._replay_mix(fake[: batch["ids"].shape[0]])
                m.update(disc_step(self.d, self.opt_d, batch, d_fake, t, self.tk))
        dt = time.perf_counter() - t0
        m["tokens_per_s"] = m.get("tokens", 0) / dt if dt > 0 else 0.0
        m["samples_per_s"] = batch["ids"].shape[0] / dt if dt > 0 else 0.0
        m["step_time_s"] = dt
        self.step += 1
        self.global_step += 1
        step = self.step
        done = self.step >= self.phase_length()
        if done:
            self._enter(PHASES[PHASES.index(phase) + 1])
            self._skip_empty_phases()
        return StepResult(phase, step, m, done)

    def _condition_rewards(self, batch: dict[str, torch.Tensor], fake: torch.Tensor):
        """The terminal condition reward of each fake row (targets: its prompt's rating and category), and
        each term's mean log-probability for the log; (None, {}) when the condition weights are 0."""
        if self.cond is None:
            return None, {}
        g = self.cfg.train.group_size
        n = fake.shape[0] // g

        def targets(x):
            return x[::g][:n].repeat_interleave(g)

        return condition_rewards(
            self.cond, fake, targets(batch["rating"]), targets(batch["category"]), self.cfg.train, self.tk
        )

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self, run_state: dict | None = None) -> dict[str, Any]:
        """Everything needed to resume, as tensors and primitives (loads with weights_only=True).
        `run_state` is the driver's part (loader position, attempt count, time trained)."""
        return {
            "phase": self.phase,
            "step": self.step,
            "global_step": self.global_step,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng_cpu": self.rng.get_state(),
            "rng_cuda": [self.cuda_rng_state] if self._cuda else [],
            "replay": self.replay[: min(self.replay_n, len(self.replay))].clone(),
            "replay_n": self.replay_n,
            "cond": (
                None if self.cond is None else (own_state(self.cond) if self.shared_base else self.cond.state_dict())
            ),
            "run": run_state or {},
        }

    def load_state_dict(
        self, s: dict[str, Any], generator_sd: dict, discriminator_sd: dict, reference_sd: dict | None
    ) -> None:
        self.G.load_state_dict(generator_sd, strict=False)
        self.D.load_state_dict(discriminator_sd)
        if reference_sd is not None and self.lora:  # the reference is the base G already holds
            self.ref = base_view(self.G)
        elif reference_sd is not None:
            self.ref = Generator(self.cfg.generator).to(self.device)
            self.ref.load_state_dict(reference_sd, strict=False)
            self.ref.eval().requires_grad_(False)
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.phase, self.step, self.global_step = s["phase"], int(s["step"]), int(s["global_step"])
        self.rng.set_state(s["rng_cpu"])
        if s.get("rng_cuda") and self._cuda:
            self.cuda_rng_state = s["rng_cuda"][0]
        if s.get("cond") is not None:
            self.cond = shared_copy(self.D)  # on a LoRA base, only its adapters and heads are stored
            self.cond.load_state_dict(s["cond"], strict=not self.shared_base)
            self.cond.eval().requires_grad_(False)
        rep = s["replay"]
        self.replay[: len(rep)] = rep
        self.replay_n = int(s["replay_n"])

    def resume_from(self, path: str | Path) -> dict:
        """Load a training checkpoint (with train_state.pt) into this trainer; returns its run state
        (as given to `save`: loader position, attempts, time trained)."""
        ck = load_checkpoint(path, self.device, train_state=True)
        if ck.train_state is None:
            raise CheckpointError(f"{path}: no train_state.pt, so it cannot be resumed (it is an exported model)")
        self.load_state_dict(
            ck.train_state, ck.generator.state_dict(), ck.discriminator.state_dict(), ck.reference_state
        )
        self.base = dict(ck.meta.base) if ck.meta.base is not None else None
        return dict(ck.train_state.get("run", {}))

    def save(self, path: str | Path, meta: Meta | None = None, run_state: dict | None = None) -> Path:
        """Write a resumable training checkpoint; `meta` is the caller's record, the position and base are added."""
        meta = meta if meta is not None else Meta()
        meta = replace(
            meta,
            phase=self.phase,
            step=self.step,
            global_step=self.global_step,
            base=self.base if self.base is not None else meta.base,
        )
        return save_checkpoint(
            path,
            config=self.cfg,
            categories=self.categories,
            tokenizer=self.tok,
            generator=self.G,
            discriminator=self.D,
            reference=self.ref,
            meta=meta,
            train_state=self.state_dict(run_state),
        )

    def describe(self) -> str:
        lora = (
            (
                f", LoRA: {sum(p.numel() for p in _trainable(self.G)) / 1e6:.3f}M trainable in G, "
                f"{sum(p.numel() for p in _trainable(self.D)) / 1e6:.3f}M in D"
                f"{' (one shared base)' if self.shared_base else ''}"
            )
            if self.lora
            else ""
        )
        return (
            f"G {count_params(self.G) / 1e6:.2f}M params, D {count_params(self.D) / 1e6:.2f}M params{lora}, "
            f"device {self.device}"
        )
