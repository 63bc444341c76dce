"""The training loop: data, model, optimizer, EMA, checkpoints and logging, read top to bottom.

``Trainer`` is one process of a (possibly distributed) run; :func:`diffuseq.training.setup.train`
builds and runs it. Under
``torchrun`` every process calls it; the model is wrapped in DDP, each rank
takes its slice of every global batch, and rank 0 writes the files.
"""

from __future__ import annotations

import inspect
import logging
import math
import signal
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import dist_util
from ..config import TrainConfig
from ..data import BatchStream, load_split
from ..data.vocab import Vocabulary
from ..diffusion.penalty import DistancePenalty
from ..diffusion.process import GaussianDiffusion
from ..diffusion.timesteps import TimestepDistribution, create_timestep_distribution
from ..errors import UserError
from ..loading import create_model
from ..model import EncoderConfig
from ..model import checkpoints as ckpt
from ..model.checkpoints import load_model_weights
from ..model.plm_init import load_bert_weights
from ..runtime import autocast_dtype, compile_model, keep_freed_memory_on, use_tf32_on
from .cross_entropy import CrossEntropyWorkspace
from .losses import diffuseq_losses, distance_penalty_losses
from .reporting import TrainingReport
from .state import rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)
VALID_EXAMPLES = 256


class Trainer:
    """One process of a training run: owns the model, optimizer, EMA, timestep sampler, data stream and the
    cross-entropy's workspace."""

    def __init__(self, cfg: TrainConfig, checkpoint_dir: Path, vocab: Vocabulary, device: torch.device,
                 encoder: EncoderConfig | None = None) -> None:
        self.cfg = cfg
        self.dir = checkpoint_dir
        self.vocab = vocab
        self.device = device
        self.rank, self.world = dist_util.rank(), dist_util.world_size()
        self.is_main = self.rank == 0

        train = load_split(Path(cfg.data_dir), "train", vocab, cfg.seq_len, report=self.is_main, cache=cfg.data_cache)
        self.valid = load_split(Path(cfg.data_dir), "valid", vocab, cfg.seq_len, max_examples=VALID_EXAMPLES,
                                cache=cfg.data_cache)
        self.stream = BatchStream(train, cfg.batch_size * self.world, self.rank, self.world, cfg.seed)
        self.batches = iter(self.stream)
        self.microbatch = self.stream.local_batch if cfg.microbatch <= 0 else min(cfg.microbatch,
                                                                                 self.stream.local_batch)

        self.diffusion = GaussianDiffusion.from_schedule(cfg.noise_schedule, cfg.diffusion_steps)
        self.timestep_sampler: TimestepDistribution = create_timestep_distribution(cfg.schedule_sampler,
                                                                                   cfg.diffusion_steps)
        self.workspace = CrossEntropyWorkspace()
        self.penalty = (DistancePenalty.create(cfg.simi_penalty, cfg.simi_lambda, self.diffusion, cfg.simi_step,
                                               cfg.simi_noise) if cfg.simi_penalty else None)
        self.lr_schedule = cfg.resolved_lr_schedule()

        seed_everything(cfg.seed)  # identical initial weights on every rank
        self.model = create_model(cfg, vocab.size, encoder).to(device)
        self.params = list(self.model.parameters())
        self.ema_rates = cfg.ema_rates()
        self.ema = {rate: [p.detach().clone() for p in self.params] for rate in self.ema_rates}
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.step = 0

        # fp16 autocast with loss scaling runs as on CUDA on any device (slowly on a CPU), so tests see it
        self.autocast_dtype = autocast_dtype(cfg.precision)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
        use_tf32_on(device, cfg.tf32, cfg.precision)

        self.bad_steps_in_row = 0
        self.bad_steps_total = 0
        self.overflow_steps = 0  # fp16 steps skipped by the loss scaler (not bad steps)
        self.last_skip_overflow = False
        self.stop_requested = False
        self.stopped_by: int | None = None  # the signal that stopped the run (SIGINT / SIGTERM), if any
        self._previous_handlers: dict[int, Any] = {}
        self.control_group = None  # the process group the stop flag travels in (see _agree_to_stop)
        seed_everything(cfg.seed * 1000 + self.rank)  # per-rank training randomness

    # -- loading ------------------------------------------------------------

    def load(self, path: Path, exact: bool) -> None:
        """Start from ``modelK.pt`` (or ``ema_<rate>_K.pt``) at step K.

        ``exact`` (a restart in the run's own folder): the optimizer, data position, timestep
        sampler and RNGs continue from the ``optK.pt`` / ``trainstateK.pt`` beside it. Otherwise
        (post-training from another run, DiffuSeq's ``--resume_checkpoint``): the weights, the
        EMA of each rate from ``ema_<rate>_K.pt`` beside it (else a copy of the weights), a fresh
        optimizer, and the step count K.
        """
        step = ckpt.parse_step(path)
        folder = path.parent
        load_model_weights(self.model, ckpt.safe_load(path), path)
        with torch.no_grad():
            for rate in self.ema_rates:
                ema_file = folder / ckpt.ema_name(rate, step)
                if ema_file.is_file() and ema_file != path:
                    ema_model = create_model(self.cfg, self.vocab.size, self.model.encoder_config)
                    load_model_weights(ema_model, ckpt.safe_load(ema_file), ema_file)
                    for dst, src in zip(self.ema[rate], ema_model.parameters()):
                        dst.copy_(src)
                else:
                    for dst, src in zip(self.ema[rate], self.params):
                        dst.copy_(src)
        self.step = step
        state_file = folder / ckpt.trainstate_name(step)
        if not exact:
            seed_everything(self.cfg.seed * 1000 + self.rank + step)
            if self.is_main:
                logger.info("starting from the weights of %s at step %d (fresh optimizer, as DiffuSeq)", path, step)
            return
        opt_file = folder / ckpt.opt_name(step)
        if opt_file.is_file():
            try:
                self.opt.load_state_dict(ckpt.safe_load(opt_file))
            except (ValueError, KeyError) as err:
                raise UserError(f"{opt_file} does not fit this model's optimizer: {err}") from None
        if state_file.is_file():
            state = ckpt.safe_load(state_file)
            self.stream.load_state_dict(state["data"])
            self.timestep_sampler.load_state_dict(state["sampler"])
            self.bad_steps_total = int(state.get("bad_steps_total", 0))
            self.overflow_steps = int(state.get("overflow_steps", 0))
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            if len(state["rng"]) == self.world:
                set_rng_state(state["rng"][self.rank])
            else:
                if self.is_main:
                    logger.warning("the checkpoint was written by %d process(es), this run has %d: the global batch "
                                   "changes from %d to %d (--bsz %d is per process) and the random streams are "
                                   "seeded afresh", len(state["rng"]), self.world,
                                   self.cfg.batch_size * len(state["rng"]), self.cfg.batch_size * self.world,
                                   self.cfg.batch_size)
                seed_everything(self.cfg.seed * 1000 + self.rank + step)
        else:
            seed_everything(self.cfg.seed * 1000 + self.rank + step)
        missing = [f.name for f in (opt_file, state_file) if not f.is_file()]
        if missing and self.is_main:
            logger.warning("%s has no %s: the optimizer state, data position or RNGs start afresh (not an exact "
                           "continuation)", folder, " / ".join(missing))
        if self.is_main:
            logger.info("resumed from %s at step %d", path, step)

    def init_from_bert(self, folder: Path) -> None:
        """DiffuSeq's ``--use_plm_init bert``: embeddings and encoder from the BERT weights in ``folder``."""
        load_bert_weights(self.model, folder)
        with torch.no_grad():
            for rate in self.ema_rates:
                for dst, src in zip(self.ema[rate], self.params):
                    dst.copy_(src)
        if self.is_main:
            logger.info("word embeddings, position embeddings and encoder initialised from %s", folder)

    # -- saving -------------------------------------------------------------

    def _state_dict_with(self, values: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's state dict with ``values`` in place of its parameters (tied weights stay tied)."""
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        by_id = {id(p): v for p, v in zip(self.params, values)}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            state[name] = by_id[id(param)].detach().cpu().clone()
        return state

    def save(self) -> None:
        """Write the checkpoint of the current step (rank 0), the train state marker last."""
        rngs = dist_util.all_gather_objects(rng_state())
        if not self.is_main:
            dist_util.barrier()
            return
        files = {ckpt.model_name(self.step): self._state_dict_with(self.params)}
        for rate in self.ema_rates:
            files[ckpt.ema_name(rate, self.step)] = self._state_dict_with(self.ema[rate])
        files[ckpt.opt_name(self.step)] = self.opt.state_dict()
        for name, obj in files.items():
            ckpt.atomic_save(obj, self.dir / name)
        marker = {"step": self.step, "data": self.stream.state_dict(), "sampler": self.timestep_sampler.state_dict(),
                  "rng": rngs, "bad_steps_total": self.bad_steps_total, "overflow_steps": self.overflow_steps,
                  "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                  "files": {name: (self.dir / name).stat().st_size for name in files}}
        ckpt.atomic_save(marker, self.dir / ckpt.trainstate_name(self.step))
        logger.info("saved checkpoint %s", self.dir / ckpt.model_name(self.step))
        dist_util.barrier()

    # -- one step -----------------------------------------------------------

    def losses(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, t: torch.Tensor,
               with_nll: bool, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The loss terms of training and of validation; random draws from ``generator`` (default: the training
        stream of this rank)."""
        v2 = {"denoise_rate": self.cfg.denoise_rate if self.cfg.denoise else None, "reg_rate": self.cfg.reg_rate}
        if self.penalty is None:
            return diffuseq_losses(model, self.diffusion, ids, mask, t, with_nll=with_nll, workspace=self.workspace,
                                   generator=generator, **v2)
        return distance_penalty_losses(model, self.diffusion, self.penalty, ids, mask, t, with_nll=with_nll,
                                       workspace=self.workspace, generator=generator, **v2)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, ddp_model: nn.Module, with_nll: bool) -> dict[str, torch.Tensor] | None:
        """Forward/backward over the microbatches of one batch, then one optimizer step.

        Returns the batch-mean loss terms, or None when the step was skipped for a non-finite loss
        or gradient (``last_skip_overflow`` then tells whether it was an fp16 loss-scale overflow,
        which the scaler answers by lowering its scale). The finiteness check is the step's only
        host-device synchronisation; a skipped step leaves the timestep sampler's history as it was.
        """
        ids, mask = next(self.batches)
        if self.device.type == "cuda":  # a copy from pinned memory does not wait for the GPU
            ids, mask = ids.pin_memory(), mask.pin_memory()
        ids, mask = ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        local = ids.size(0)
        totals: dict[str, torch.Tensor] = {}
        self.opt.zero_grad(set_to_none=True)
        history = self.timestep_sampler.snapshot()
        for start in range(0, local, self.microbatch):
            micro_ids, micro_mask = ids[start:start + self.microbatch], mask[start:start + self.microbatch]
            t, weights = self.timestep_sampler.sample(micro_ids.size(0), self.device)
            last = start + self.microbatch >= local
            sync = nullcontext() if last or not isinstance(ddp_model, DDP) else ddp_model.no_sync()
            with sync:
                with self._autocast():
                    terms = self.losses(ddp_model, micro_ids, micro_mask, t, with_nll and start == 0)
                self.timestep_sampler.update(t, terms["loss"])
                # as DiffuSeq: each microbatch's mean loss is backpropagated, so gradients add up
                loss = (terms["loss"] * weights).mean()
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            for key, value in terms.items():
                share = 1.0 if key == "nll" else micro_ids.size(0) / local
                totals[key] = totals.get(key, 0.0) + value.detach().float().mean() * share

        if self.scaler:
            self.scaler.unscale_(self.opt)
        max_norm = self.cfg.gradient_clipping if self.cfg.gradient_clipping > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        # the step's one host sync; the gradient is all-reduced, so every rank decides alike
        if not bool(grad_norm.isfinite()):
            self.opt.zero_grad(set_to_none=True)
            self.timestep_sampler.restore(history)
            # with fp16 a non-finite gradient is first the loss scaler's business (it halves its scale); once
            # the scale is below 1 it is a bad step, as in fp32 and bf16
            self.last_skip_overflow = bool(self.scaler and self.scaler.get_scale() >= 1.0)
            if self.scaler:
                self.scaler.update()
            return None
        if self.lr_schedule == "linear":
            for group in self.opt.param_groups:
                group["lr"] = self.cfg.lr * (1 - self.step / self.cfg.learning_steps)
        self.opt.step()  # gradients are known finite (and unscaled): GradScaler.step would check again
        if self.scaler:
            self.scaler.update()
        with torch.no_grad():
            for rate in self.ema_rates:  # DiffuSeq's update_ema: ema * rate + param * (1 - rate)
                torch._foreach_mul_(self.ema[rate], float(rate))
                torch._foreach_add_(self.ema[rate], [p.detach() for p in self.params], alpha=1 - float(rate))
        self.step += 1
        totals["grad_norm"] = grad_norm.detach()
        return totals

    @torch.no_grad()
    def validation_loss(self) -> dict[str, float]:
        """Loss terms on a fixed slice of the validation split.

        Its draws (timesteps, noise, neighbours) come from a generator of its own on the device,
        seeded by ``--seed``, so they are the same at every validation and no generator of the
        training stream, on any device, is read or reseeded.
        """
        self.model.eval()
        generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        sums: dict[str, torch.Tensor] = {}
        for start in range(0, len(self.valid), self.microbatch):
            ids, mask = self.valid.rows(slice(start, start + self.microbatch))
            ids, mask = ids.to(self.device), mask.to(self.device)
            t = torch.randint(0, self.diffusion.num_timesteps, (ids.size(0),), device=self.device, generator=generator)
            with self._autocast():
                terms = self.losses(self.model, ids, mask, t, with_nll=True, generator=generator)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value.float().sum()
        self.model.train()
        return {key: float(value) / len(self.valid) for key, value in sums.items()}

    # -- the loop -----------------------------------------------------------

    def _warn_about_slow_ema(self, steps: int) -> None:
        """One warning per EMA rate whose average spans more steps (about 1 / (1 - rate)) than this run makes."""
        for rate in self.ema_rates:
            horizon = 1 / (1 - float(rate))
            if horizon > steps:
                logger.warning("--ema_rate %s averages over about %d steps but this run makes %d: ema_%s_*.pt will "
                               "stay close to the weights the run started from; decode modelNNNNNN.pt, or give a "
                               "rate such as %s", rate, round(horizon), steps, rate,
                               f"{1 - 10 / max(steps, 10):.3g}")

    def _request_stop(self, signum: int, _frame: Any) -> None:
        first = not self.stop_requested
        self.stop_requested = True
        self.stopped_by = self.stopped_by or signum
        if self.is_main and first:
            logger.warning("received signal %d: saving a checkpoint and stopping", signum)

    def restore_signal_handlers(self) -> None:
        """Put back the SIGTERM / SIGINT handlers ``run`` replaced (after a stop by signal it leaves handlers that
        ignore repeats, so that the process-group shutdown after it is not interrupted)."""
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def _agree_to_stop(self) -> bool:
        """Whether any rank was asked to stop (all ranks then agree on the signal).

        The flag travels through a CPU (gloo) group, so that asking costs no GPU synchronisation.
        """
        if not dist_util.is_distributed():
            return self.stop_requested
        if self.control_group is None:
            self.control_group = dist_util.cpu_group()
        flag = torch.tensor([float(self.stopped_by or 0)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.control_group)
        self.stopped_by = int(flag.item()) or None
        return self.stopped_by is not None

    def run(self) -> None:
        """Train until ``learning_steps``; save every ``save_interval`` steps, at the end and on SIGTERM/SIGINT."""
        cfg = self.cfg
        keep_freed_memory_on(self.device)
        ddp_model: nn.Module = self.model
        if self.world > 1:
            # no buffer broadcast before every forward: the only buffer (position ids) never changes
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else {"broadcast_buffers": False})  # the new name (torch >= 2.13) or the old
            ddp_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                            **no_sync)
        if cfg.compile:
            ddp_model = compile_model(ddp_model)
        if self.is_main:
            self._warn_about_slow_ema(cfg.learning_steps - self.step)
        self._previous_handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM,
                                                                                         signal.SIGINT)}
        report = TrainingReport(cfg, self.step, self.is_main, self.device)
        try:
            self.model.train()
            while self.step < cfg.learning_steps:
                log_now = (self.step + 1) % cfg.log_interval == 0
                terms = self.train_step(ddp_model, with_nll=log_now)
                if terms is None and self.last_skip_overflow:
                    self.overflow_steps += 1
                    if self.is_main:
                        logger.info("fp16 loss scale overflow at step %d: step skipped, loss scale lowered to %g",
                                    self.step, self.scaler.get_scale())
                    continue
                if terms is None:
                    self.bad_steps_in_row += 1
                    self.bad_steps_total += 1
                    logger.warning("non-finite loss or gradient at step %d: step skipped (%d in a row)",
                                   self.step, self.bad_steps_in_row)
                    if self.bad_steps_in_row >= cfg.max_bad_steps:
                        raise UserError(f"{self.bad_steps_in_row} steps in a row had a non-finite loss or "
                                        f"gradient; stopped at step {self.step} (the last checkpoint is intact; "
                                        f"lower `lr` or enable `gradient_clipping`)")
                    continue
                self.bad_steps_in_row = 0
                report.add(terms)
                if log_now:
                    report.log(self.step, self.opt.param_groups[0]["lr"], terms.get("nll"))
                if cfg.eval_interval > 0 and self.step % cfg.eval_interval == 0:
                    report.validation(self.step, self.validation_loss())
                if self.step % cfg.save_interval == 0 or self.step == cfg.learning_steps:
                    self.save()
                if self._agree_to_stop():
                    if self.step % cfg.save_interval and self.step != cfg.learning_steps:
                        self.save()
                    break
        finally:
            if self.stopped_by is None:
                self.restore_signal_handlers()
            else:  # stopping: a repeat (torchrun forwards the Ctrl-C every rank got) must not break the shutdown
                for sig in self._previous_handlers:
                    signal.signal(sig, signal.SIG_IGN)  # SIG_IGN, unlike a Python handler, holds until the exit
            report.close()
