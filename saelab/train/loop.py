"""`train_sae`: the one training loop every SAE kind goes through (docs/methods.md,
"Training loop").

Adam with linear warm-up and a linear decay over the last `decay_frac` of steps; input
scaling so that E||s x||^2 = d_in; `b_dec` initialised at the sample mean; decoder rows
kept unit-norm with the parallel gradient component removed before each step; dead
latents tracked (no firing in the last `dead_tokens` tokens). Batch `i` of the stream is
a pure function of (seed, i), so a run resumed from a checkpoint ends with the same
weights, bit for bit, as one that was never interrupted. Under torchrun,
`distributed=True` splits every batch over the ranks (saelab/train/distributed.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saelab.activations import ActivationStore
from saelab.io import atomic_folder, write_bytes
from saelab.sae import SAE, TrainContext, load_sae, make_sae, sae_class
from saelab.train.distributed import Ranks
from saelab.train.schedule import TrainConfig, batch_indices, estimate_input_scale, lr_factor

CHECKPOINT = "checkpoint"


class NonFiniteError(FloatingPointError):
    """Training met NaN or inf; the message names the step and the last good checkpoint."""


def _save_checkpoint(folder: Path, sae: SAE, trainer_state: dict) -> None:
    """SAE folder + trainer state (optimiser, step, scale, dead counters) written atomically."""
    with atomic_folder(folder) as tmp:
        sae.save(tmp / "sae")
        buffer = io.BytesIO()  # through saelab.io, so a full disk is a clear error
        torch.save(trainer_state, buffer)
        write_bytes(tmp / "trainer.pt", buffer.getbuffer())


def _resume_or_start(
    ckpt: Path | None, store: ActivationStore, cfg: TrainConfig, device, dtype
) -> tuple[SAE, dict]:
    """(SAE, trainer state) from the checkpoint in `ckpt` when there is one, else a fresh SAE
    initialised from a sample of `store` (input scale, `b_dec`)."""
    if ckpt is not None and (ckpt / "trainer.pt").exists():
        sae = load_sae(ckpt / "sae").to(device)
        state = torch.load(ckpt / "trainer.pt", weights_only=False)
        if state["config"] != asdict(cfg):
            raise ValueError(
                f"{ckpt} was written by a run with other settings: "
                f"{state['config']} vs {asdict(cfg)}"
            )
        return sae, state
    sample_ND = store.sample(cfg.scale_sample, seed=cfg.seed)
    if not torch.isfinite(sample_ND).all():
        raise NonFiniteError(
            "non-finite values in the activations sampled for input scaling (step 0)"
        )
    scale = estimate_input_scale(sample_ND)
    sae = make_sae(cfg.kind, store.d_in, cfg.width, seed=cfg.seed, dtype=dtype, **cfg.options)
    sae = sae.to(device)
    sae.init_from_sample((scale * sample_ND).to(device, dtype))
    state = {
        "config": asdict(cfg),
        "step": 0,
        "scale": scale,
        "optimizer": None,
        "history": [],
        "since_fired_F": torch.zeros(cfg.width, dtype=torch.long),
    }
    return sae, state


def _non_finite(x_BD: torch.Tensor, loss: torch.Tensor, step: int, kind: str) -> str | None:
    """What went non-finite at `step` (the batch, else the loss), or None."""
    if not torch.isfinite(x_BD).all():
        return f"non-finite activations in the training batch at step {step}"
    if not torch.isfinite(loss):
        return f"the {kind} loss became {loss.item()} at step {step}"
    return None


def train_sae(
    store: ActivationStore | torch.Tensor,
    kind: str = "topk",
    width: int = 4608,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    lr: float | str | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 200,
    callback: Callable[[dict], None] | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    log_every: int = 10,
    config: TrainConfig | None = None,
    distributed: bool = False,
    **options,
) -> SAE:
    """Train an SAE of `kind` on `store` (an `ActivationStore` or a plain `[N, d]` tensor);
    `options` are the kind's config fields (k=32, target_l0=40, ...).

    `max_tokens` caps the training tokens (None: one pass over the store). `batch_size` and
    `lr` left as None take the kind's `training_defaults` (JumpReLU: batch 256), else 512
    and `schedule.default_learning_rate` (from the width and the step count); so do options
    not given (JumpReLU: centred, constant θ, `topk_cap`, θ's own rate). With `checkpoint_dir`, a
    checkpoint is written every `checkpoint_every` steps and an existing one is resumed from.
    `callback(log)` gets each logged dict (step, tokens, loss, mse, fvu, l0, dead_fraction,
    lr). Returns the SAE with the input scale folded in, in the activations' own units;
    `sae.history` holds the logged dicts.

    `distributed=True` (under `torchrun --nproc_per_node=N`) trains with DDP: `batch_size`
    stays the global batch, each rank takes its `1/N` of it, and rank 0 alone logs, calls
    `callback` and writes checkpoints (saelab/train/distributed.py). Every rank returns the
    same SAE.
    """
    if isinstance(store, torch.Tensor):
        store = ActivationStore.from_tensor(store)
    if config is None:
        defaults = sae_class(kind).training_defaults
        batch_size = batch_size or defaults.get("batch_size", 512)
        lr = lr if lr is not None else defaults.get("lr")
        options = {**defaults.get("options", {}), **options}  # the kind's, unless given
        config = TrainConfig(
            kind=kind,
            width=width,
            max_tokens=max_tokens,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            options=options,
        )
    cfg = config
    if sae_class(cfg.kind).composite:
        raise ValueError(
            f"a {cfg.kind} SAE is built from trained parts: "
            "use saelab.train_residual(base, store, ...)"
        )
    ranks = Ranks.join(device, cfg.batch_size) if distributed else Ranks.single(device)
    device = ranks.device
    n_steps = cfg.n_steps(len(store))
    if len(store) < cfg.batch_size:
        raise ValueError(
            f"the store holds {len(store)} tokens, fewer than one batch of {cfg.batch_size}"
        )

    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    sae, state = _resume_or_start(ckpt, store, cfg, device, dtype)
    ranks.check_same_step(state["step"], ckpt)
    sae.cfg.hookpoint, sae.cfg.model = store.info.hookpoint, store.info.model
    scale, since_fired_F, history = (
        ranks.broadcast_scale(state["scale"]),
        state["since_fired_F"].to(device),
        state["history"],
    )
    # Kinds may ask for a larger step on some parameters (JumpReLU's log-thresholds).
    lr_scales = sae.lr_scales(cfg.learning_rate(n_steps))
    groups = [
        {"params": [p], "lr_scale": lr_scales.get(name, 1.0)} for name, p in sae.named_parameters()
    ]
    optimizer = torch.optim.Adam(groups, lr=cfg.learning_rate(n_steps), betas=sae.adam_betas)
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    model = ranks.wrap(sae)  # `training_loss`, or under DDP the module whose hooks reduce

    def checkpoint(step: int) -> None:
        error = None
        if ranks.is_main:
            try:
                _save_checkpoint(ckpt, sae, {**state, "step": step, "history": history,
                                             "optimizer": optimizer.state_dict(),
                                             "since_fired_F": since_fired_F.cpu()})  # fmt: skip
            except Exception as err:  # every rank hears of it (no rank waits forever)
                error = err
        ranks.barrier(error)

    bar = tqdm(
        total=n_steps,
        initial=state["step"],
        desc=f"train {cfg.kind} F={cfg.width}",
        unit="step",
        disable=not (progress and ranks.is_main),
    )
    for step in range(state["step"], n_steps):
        rows = ranks.local_rows(batch_indices(step, len(store), cfg.batch_size, cfg.seed))
        x_BD = store.get(rows).to(device, dtype) * scale
        for group in optimizer.param_groups:
            group["lr"] = (
                group["lr_scale"]
                * cfg.learning_rate(n_steps)
                * lr_factor(step, n_steps, cfg.warmup_steps, cfg.decay_frac)
            )
        out = model(x_BD, TrainContext(step, n_steps, since_fired_F > cfg.dead_tokens))
        problem = _non_finite(x_BD, out.loss, step, cfg.kind)
        fired_F, failed = ranks.fired_and_failed(out.fired_F, problem is not None)
        if failed:
            raise NonFiniteError(
                (problem or f"another rank met non-finite values at step {step}")
                + (f"; the last good checkpoint is {ckpt}" if ckpt and ckpt.exists() else "")
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.project_decoder_grad()
        optimizer.step()
        sae.normalize_decoder()
        since_fired_F += cfg.batch_size  # tokens of the global batch
        since_fired_F[fired_F] = 0

        if step % log_every == 0 or step == n_steps - 1:
            variance = (x_BD - x_BD.mean(0)).pow(2).sum(-1).mean()
            log = {
                "step": step,
                "tokens": (step + 1) * cfg.batch_size,
                "loss": out.loss.item(),
                "mse": out.mse.item(),
                "fvu": (out.mse / variance).item(),
                "l0": out.l0.item(),
                "dead_fraction": (since_fired_F > cfg.dead_tokens).float().mean().item(),
                "lr": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_scale"],
                **out.terms,
            }
            log = ranks.mean_log(log)  # as it is in one process
            history.append(log)
            bar.set_postfix(
                fvu=f"{log['fvu']:.3f}", l0=f"{log['l0']:.1f}", dead=f"{log['dead_fraction']:.1%}"
            )
            if callback is not None and ranks.is_main:
                callback(log)
        bar.update(1)
        if ckpt is not None and (step + 1) % checkpoint_every == 0 and step + 1 < n_steps:
            checkpoint(step + 1)
    bar.close()
    # the SAE leaves without stale gradients (memory, frozen reuse)
    optimizer.zero_grad(set_to_none=True)
    if ckpt is not None and state["step"] < n_steps:
        checkpoint(n_steps)  # a finished run: calling again with this folder returns the same SAE

    sae.fold_input_scale(scale)
    sae.cfg.training = {
        **asdict(cfg),
        "n_steps": n_steps,
        "store_tokens": len(store),
        "learning_rate": cfg.learning_rate(n_steps),  # what lr=None came to
    }
    sae.history = history
    return sae
