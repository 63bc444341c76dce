"""Golden fixtures from DiffuSeq-v2: the ``diffuseq-v2`` branch of Shark-NLP/DiffuSeq.

Run by hand (not in CI), with a Python that can import that checkout (their code needs
``transformers`` 4.x and ``blobfile``; ``wandb`` is replaced by a stand-in when it is missing):

    git -C /path/to/DiffuSeq.git archive diffuseq-v2 | tar -x -C /tmp/DiffuSeq-v2
    python tests/golden/make_v2_fixtures.py --diffuseq-v2 /tmp/DiffuSeq-v2 --commit <sha of diffuseq-v2>

It imports their modules from the checkout as they are (nothing is copied or edited), runs
them on small inputs with fixed, recorded randomness, and writes ``tests/golden/fixtures/v2_*.pt``
(every file loads with ``torch.load(..., weights_only=True)``). The tiny network and the toy
batch are the ones of ``make_fixtures.py`` (same BERT config, sizes and seeds' recipe), built
here through their ``create_model_and_diffusion`` with ``learned_mean_embed=True``.

Randomness: their Gaussian draws go through ``torch.randn_like`` and their discrete (absorbing
state) draws through ``Tensor.bernoulli``; both are replaced while their code runs by seeded
stand-ins that record every draw in call order. A Bernoulli draw is recorded as its
probabilities ``probs``, the uniforms ``uniform`` and the outcome ``mask = uniform < probs``, so
another implementation can replay it from the uniforms.

Their code that needs a GPU (``autocast``/``GradScaler`` of ``--use_fp16``, ``.cuda()`` in the
decoders) runs here on a CPU, where ``torch.cuda.amp`` disables itself: the fp16 path is then the
fp32 arithmetic (the fixtures record that the scaler was disabled).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import random
import sys
import tempfile
import types
import warnings
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Self

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from make_fixtures import (BATCH, BERT_CONFIG, HIDDEN_DIM, ORIGINAL_MODULES, SEQ_LEN, VOCAB,  # noqa: E402
                           load_original, toy_batch)

# the tiny model and toy batch of make_fixtures.py (VOCAB, HIDDEN_DIM, SEQ_LEN, BATCH, BERT_CONFIG, toy_batch)
MODEL_SEED = 7
# what their scripts/train.sh passes (the rest are their diffuseq/config.json defaults)
TRAIN_SH = {"diffusion_steps": 2000, "noise_schedule": "sqrt", "learned_mean_embed": True, "denoise": True,
            "denoise_rate": 0.5, "use_fp16": True, "schedule_sampler": "lossaware", "lr": 1e-4}


def load_v2(path: Path) -> SimpleNamespace:
    """Import their modules from the checkout (their logger imports wandb: a stand-in if it is missing)."""
    try:
        importlib.import_module("wandb")
    except ImportError:
        stub = types.ModuleType("wandb")
        stub.init = lambda *args, **kwargs: None
        stub.log = lambda *args, **kwargs: None
        stub.config = SimpleNamespace(update=lambda *args, **kwargs: None)
        sys.modules["wandb"] = stub
    modules = {key: module for key, module in ORIGINAL_MODULES.items() if key != "text_datasets"}  # needs `datasets`
    return load_original(path, {**modules, "dpm": "dpm_solver_pytorch"})


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


class Recorder:
    """Stands in for ``torch.randn_like``: seeded draws, recorded in call order."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.draws: list[torch.Tensor] = []
        self._orig = torch.randn_like

    def __call__(self, x, *args, **kwargs):
        out = torch.randn(x.shape, generator=self.gen, dtype=x.dtype if x.is_floating_point() else torch.float32)
        self.draws.append(out.clone())
        return out

    def __enter__(self) -> Self:
        torch.randn_like = self
        return self

    def __exit__(self, *exc) -> None:
        torch.randn_like = self._orig


class BernoulliRecorder:
    """Stands in for ``Tensor.bernoulli`` (their absorbing-state draws): ``mask = uniform < probs``."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.calls: list[dict[str, torch.Tensor]] = []
        self._orig = torch.Tensor.bernoulli

    def __enter__(self) -> Self:
        recorder = self

        def bernoulli(probs, *args, **kwargs):
            assert not args and not kwargs, "their code calls .bernoulli() without arguments"
            uniform = torch.rand(probs.shape, generator=recorder.gen, dtype=torch.float32)
            mask = (uniform < probs).to(probs.dtype)
            recorder.calls.append({"probs": probs.detach().clone(), "uniform": uniform, "mask": mask.clone()})
            return mask

        torch.Tensor.bernoulli = bernoulli  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc) -> None:
        torch.Tensor.bernoulli = self._orig  # type: ignore[method-assign]


class DDPLike(torch.nn.Module):
    """What their losses expect as the model: a wrapper with ``.module`` (DDP on a GPU); their
    ``_WrappedModel.mean_embed`` reads ``mean_embed`` of a non-DDP wrapper directly."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    @property
    def mean_embed(self):
        return self.module.mean_embed

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class CallRecorder(torch.nn.Module):
    """Records every network call: the float timesteps, (optionally) the input, the output."""

    def __init__(self, net: torch.nn.Module, keep_input: bool = False) -> None:
        super().__init__()
        self.net = net
        self.keep_input = keep_input
        self.calls: list[dict[str, torch.Tensor]] = []

    @property
    def mean_embed(self):
        return self.net.mean_embed

    def forward(self, x, ts, **kwargs):
        out = self.net(x, ts, **kwargs)
        call = {"t": ts.detach().clone(), "out": out.detach().clone()}
        if self.keep_input:
            call["x"] = x.detach().clone()
        self.calls.append(call)
        return out

    def get_embeds(self, ids):
        return self.net.get_embeds(ids)

    def get_logits(self, h):
        return self.net.get_logits(h)


def bert_config_dir(tmp: Path) -> str:
    folder = tmp / "bert_config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(BERT_CONFIG))
    return str(folder)


def create_args(v2: SimpleNamespace, config_dir: str, **overrides) -> dict:
    """The keyword arguments their train.py passes to create_model_and_diffusion: every key of their
    diffuseq/config.json, the tiny sizes, then ``overrides`` (their train.sh flags by default)."""
    args = dict(v2.defaults)
    args.update(hidden_dim=HIDDEN_DIM, hidden_t_dim=HIDDEN_DIM, vocab_size=VOCAB, config_name=config_dir, dropout=0.0,
                device="cpu")
    args.update({k: v for k, v in TRAIN_SH.items() if k in args})
    args.update(overrides)
    return args


def build(v2: SimpleNamespace, config_dir: str, state: dict | None = None, **overrides):
    """Their create_model_and_diffusion (seeded like make_fixtures.tiny_model, word embeddings halved)."""
    args = create_args(v2, config_dir, **overrides)
    torch.manual_seed(MODEL_SEED)
    model, diffusion = quiet(v2.basic_utils.create_model_and_diffusion, **args)
    with torch.no_grad():
        model.word_embedding.weight.mul_(0.5)
    if state is not None:
        model.load_state_dict({k: v for k, v in state.items() if k != "mean_embed" or model.mean_embed is not None})
    return model, diffusion, args


def stacked(calls: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Bernoulli records of equal shapes, one tensor per field (first dimension: the call)."""
    if not calls:
        return {}
    return {key: torch.stack([call[key] for call in calls]) for key in calls[0]}


def jsonable(args: dict) -> dict:
    """The arguments as plain values (the BERT config folder is a temporary path: BERT_CONFIG is stored)."""
    out = {k: v for k, v in args.items() if isinstance(v, (str, int, float, bool))}
    out["config_name"] = "<bert_config>"
    return out


# -------------------------------------------------------------------------------------------- fixtures


def model_fixture(v2: SimpleNamespace, config_dir: str) -> dict:
    """The tiny v2 network (state dict with ``mean_embed``) and one forward."""
    model, diffusion, args = build(v2, config_dir)
    model.eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, SEQ_LEN, HIDDEN_DIM, generator=gen)
    t = torch.tensor([0.0, 1.5, 499.5, 999.0])
    with torch.no_grad():
        out = model(x, t)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"state_dict": state, "state_dict_keys": list(state), "bert_config": BERT_CONFIG,
            "create_args": jsonable(args), "seed": MODEL_SEED, "word_embedding_scale": 0.5,
            "mean_embed_init_std": HIDDEN_DIM ** -0.5, "x": x, "t": t, "out": out,
            "diffusion": {"reg_rate": float(diffusion.reg_rate), "denoise": bool(diffusion.denoise),
                          "denoise_rate": float(diffusion.denoise_rate),
                          "rejection_rate": float(diffusion.rejection_rate),
                          "max_T": int(diffusion.max_T)}}


def schedules_fixture(v2: SimpleNamespace) -> dict:
    out = {}
    for steps in (10, 20, 100, 2000):
        out[f"warmup-decay_{steps}"] = torch.from_numpy(v2.gd.get_named_beta_schedule("warmup-decay", steps))
    for ratio in (0.05, 0.2):  # the argument their CLI never passes (the default is 0.1)
        out[f"warmup-decay_2000_ratio{ratio}"] = torch.from_numpy(
            v2.gd.get_named_beta_schedule("warmup-decay", 2000, warmup_steps_ratio=ratio))
    return out


def q_sample_fixture(v2: SimpleNamespace, config_dir: str, state: dict) -> dict:
    """q_sample with the learned mean (absorbing state) and discrete noise, explicit noise, recorded Bernoulli."""
    _, mask = toy_batch(4)
    gen = torch.Generator().manual_seed(13)
    x_start = torch.randn(BATCH, SEQ_LEN, HIDDEN_DIM, generator=gen) * 0.5
    noise = torch.randn(BATCH, SEQ_LEN, HIDDEN_DIM, generator=gen)
    mean_embed = state["mean_embed"].clone()
    cases = {}
    settings = [  # name, schedule, T, denoise, denoise_rate, mean_embed?, t
        ("mean_no_denoise_sqrt2000", "sqrt", 2000, False, 0.5, True, [0, 500, 1500, 1999]),
        ("mean_denoise0.5_sqrt2000", "sqrt", 2000, True, 0.5, True, [0, 500, 1500, 1999]),
        ("mean_denoise1.0_sqrt2000", "sqrt", 2000, True, 1.0, True, [1, 999, 1998, 1999]),
        ("mean_denoise0.5_warmup-decay2000", "warmup-decay", 2000, True, 0.5, True, [10, 1700, 1850, 1999]),
        ("no_mean_no_denoise_sqrt2000", "sqrt", 2000, False, 0.5, False, [0, 500, 1500, 1999]),
    ]
    for seed, (name, schedule, steps, denoise, rate, with_mean, ts) in enumerate(settings, start=50):
        _, diffusion, _ = build(v2, config_dir, diffusion_steps=steps, noise_schedule=schedule, denoise=denoise,
                                denoise_rate=rate)
        t = torch.tensor(ts)
        with BernoulliRecorder(seed) as bern, Recorder(seed) as rec:
            x_t = diffusion.q_sample(x_start, t, noise=noise, mask=mask, mean_embed=mean_embed if with_mean else None)
        assert not rec.draws
        cases[name] = {"noise_schedule": schedule, "diffusion_steps": steps, "denoise": denoise,
                       "denoise_rate": rate, "with_mean_embed": with_mean, "t": t, "bernoulli": bern.calls,
                       "x_t": x_t}
    return {"x_start": x_start, "noise": noise, "mask": mask, "mean_embed": mean_embed, "cases": cases}


def losses_fixture(v2: SimpleNamespace, config_dir: str, state: dict) -> dict:
    """Every term of their training_losses on a v2 network, with recorded draws and the gradient of the mean."""
    ids, mask = toy_batch(4)
    cases = {}
    settings = [  # name, schedule, T, learned_mean_embed, denoise, denoise_rate, t
        ("train_sh_sqrt2000", "sqrt", 2000, True, True, 0.5, [0, 1, 999, 1999]),
        ("mean_only_sqrt2000", "sqrt", 2000, True, False, 0.5, [0, 1, 999, 1999]),
        ("denoise1.0_sqrt100", "sqrt", 100, True, True, 1.0, [3, 50, 97, 99]),
        ("train_sh_warmup-decay2000", "warmup-decay", 2000, True, True, 0.5, [0, 1000, 1850, 1999]),
        ("diffuseq_v1_equivalent_sqrt2000", "sqrt", 2000, False, False, 0.5, [0, 1, 999, 1999]),
    ]
    for seed, (name, schedule, steps, learned, denoise, rate, ts) in enumerate(settings, start=60):
        # reg_rate=0.5 is requested to show that create_model_and_diffusion drops it (0.01 is used)
        model, diffusion, _ = build(v2, config_dir, state, diffusion_steps=steps, noise_schedule=schedule,
                                    learned_mean_embed=learned, denoise=denoise, denoise_rate=rate, reg_rate=0.5)
        model.train()
        t = torch.tensor(ts)
        with BernoulliRecorder(seed) as bern, Recorder(seed) as rec:
            terms = diffusion.training_losses(DDPLike(model), None, t,
                                              model_kwargs={"input_ids": ids.clone(), "input_mask": mask.clone()})
        case = {"noise_schedule": schedule, "diffusion_steps": steps, "learned_mean_embed": learned,
                "denoise": denoise, "denoise_rate": rate, "reg_rate_used": float(diffusion.reg_rate), "t": t,
                "draws": rec.draws, "bernoulli": bern.calls, "terms": {k: v.detach() for k, v in terms.items()}}
        if learned:
            terms["loss"].sum().backward()
            case["mean_embed_grad"] = model.mean_embed.grad.detach().clone()
        cases[name] = case
    return {"ids": ids, "mask": mask, "reg_rate_requested": 0.5, "cases": cases}


def p_sample_fixture(v2: SimpleNamespace, config_dir: str, state: dict) -> dict:
    """Their DDPM decode (sample_seq2seq.py) on a v2 network: p_sample_loop with noise = x_noised,
    v2's denoised_fn_round, mask, x_start; every draw, network call and sample."""
    ids, mask = toy_batch(3)
    ids, mask = ids[:2], mask[:2]
    cases = {}
    settings = [  # name, T, denoise, denoise_rate, clamp_step
        ("train_sh_T20_clamp0", 20, True, 0.5, 0),
        ("train_sh_T10_clamp5", 10, True, 0.5, 5),
        ("mean_only_T10_clamp0", 10, False, 0.5, 0),
    ]
    for seed, (name, steps, denoise, rate, clamp_step) in enumerate(settings, start=70):
        model, diffusion, _ = build(v2, config_dir, state, diffusion_steps=steps, denoise=denoise, denoise_rate=rate)
        model.eval().requires_grad_(False)
        net = CallRecorder(model)
        model_emb = torch.nn.Embedding(num_embeddings=VOCAB, embedding_dim=HIDDEN_DIM,
                                       _weight=model.word_embedding.weight.clone()).eval().requires_grad_(False)
        model_emb.weight = torch.nn.Parameter(model.word_embedding.weight.clone())
        x_start = model.get_embeds(ids)
        with Recorder(seed) as start_rec:
            noise = torch.randn_like(x_start)
        broad = torch.broadcast_to(mask.unsqueeze(dim=-1), x_start.shape)
        x_noised = torch.where(broad == 0, x_start, noise)
        x_init = x_noised.clone()
        with torch.no_grad(), BernoulliRecorder(seed) as bern, Recorder(seed + 100) as rec:
            samples = quiet(diffusion.p_sample_loop, net, (x_start.shape[0], SEQ_LEN, HIDDEN_DIM), noise=x_noised,
                            clip_denoised=False, denoised_fn=partial(v2.rounding.denoised_fn_round, SimpleNamespace(),
                                                                     model_emb),
                            model_kwargs={}, top_p=-1, clamp_step=clamp_step, clamp_first=True, mask=broad,
                            x_start=x_start, gap=1)
            tokens = model.get_logits(samples[-1]).argmax(-1)
        cases[name] = {"diffusion_steps": steps, "denoise": denoise, "denoise_rate": rate, "clamp_step": clamp_step,
                       "top_p": -1, "x_start_noise": start_rec.draws[0], "x_init": x_init,
                       "x_init_plus_mean": x_noised.clone(),  # their loop adds mean_embed * mask in place
                       "step_noise": torch.stack(rec.draws), "bernoulli": stacked(bern.calls),
                       "call_t": torch.stack([c["t"] for c in net.calls]), "samples": torch.stack(samples),
                       "tokens": tokens}
    return {"ids": ids, "mask": mask, "cases": cases}


def toy_model(weight: torch.Tensor):
    """A fixed denoiser for the solver: tanh(x W) scaled down as the model time (0..1000) grows."""
    def toy(x, t_input):
        return torch.tanh(x @ weight) * (1.5 - t_input / 1000.0)[:, None, None]
    return toy


class FnModule(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x, ts):
        return self.fn(x, ts)


def dpm_solver_fixture(v2: SimpleNamespace, config_dir: str, state: dict) -> dict:
    """Their DPM-Solver decode (sample_seq2seq_dpmSolver.py): NoiseScheduleVP('discrete', betas),
    model_wrapper(model_type='x_start'), DPM_Solver(algorithm_type='dpmsolver++'),
    sample(steps, order=2, skip_type='time_uniform', method='multistep', input_ids_mask, x_start)."""
    ids, mask = toy_batch(5)
    gen = torch.Generator().manual_seed(17)
    weight = torch.randn(HIDDEN_DIM, HIDDEN_DIM, generator=gen) * 0.3
    cases = {}
    settings = [  # name, network, schedule, steps of the solver, sequence length, rows
        ("tiny_sqrt2000_steps10", "tiny", "sqrt", 10, SEQ_LEN, 2),
        ("toy_sqrt2000_steps10", "toy", "sqrt", 10, 8, 2),
        ("toy_sqrt2000_steps5", "toy", "sqrt", 5, 8, 2),
        ("toy_sqrt2000_steps20", "toy", "sqrt", 20, 8, 2),
        ("toy_warmup-decay2000_steps10", "toy", "warmup-decay", 10, 8, 2),
    ]
    for seed, (name, kind, schedule, steps, seq_len, rows) in enumerate(settings, start=80):
        model, diffusion, _ = build(v2, config_dir, state, diffusion_steps=2000, noise_schedule=schedule)
        model.eval()
        net = CallRecorder(model if kind == "tiny" else FnModule(toy_model(weight)), keep_input=(kind == "tiny"))
        noise_schedule = v2.dpm.NoiseScheduleVP(schedule="discrete", betas=torch.from_numpy(diffusion.betas))
        model_fn = v2.dpm.model_wrapper(net, noise_schedule, model_type="x_start", model_kwargs={},
                                        guidance_type="uncond")
        dpm_solver = v2.dpm.DPM_Solver(model_fn, noise_schedule, algorithm_type="dpmsolver++")
        case_ids, case_mask = ids[:rows, :seq_len].clone(), mask[:rows, :seq_len].clone()
        x_start = model.get_embeds(case_ids).detach()
        with Recorder(seed) as rec:
            noise = torch.randn_like(x_start)
        input_ids_mask = torch.broadcast_to(case_mask.unsqueeze(dim=-1), x_start.shape)
        x_noised = torch.where(input_ids_mask == 0, x_start, noise)
        x_sample, intermediates = quiet(dpm_solver.sample, x_noised, steps=steps, order=2, skip_type="time_uniform",
                                        method="multistep", input_ids_mask=input_ids_mask, x_start=x_start,
                                        return_intermediate=True)
        grid = dpm_solver.get_time_steps(skip_type="time_uniform", t_T=noise_schedule.T,
                                         t_0=1.0 / noise_schedule.total_N, N=steps, device="cpu")
        with torch.no_grad():
            logits = model.get_logits(x_sample)
        case = {"network": kind, "noise_schedule": schedule, "diffusion_steps": 2000, "steps": steps, "order": 2,
                "skip_type": "time_uniform", "method": "multistep", "algorithm_type": "dpmsolver++",
                "lower_order_final": True, "ids": case_ids, "mask": case_mask, "x_start": x_start,
                "noise": rec.draws[0], "x_noised": x_noised, "grid": grid,
                "grid_log_alpha": noise_schedule.marginal_log_mean_coeff(grid),
                "grid_sigma": noise_schedule.marginal_std(grid), "grid_lambda": noise_schedule.marginal_lambda(grid),
                "call_t": torch.stack([c["t"] for c in net.calls]),
                "call_out": torch.stack([c["out"] for c in net.calls]),
                "intermediates": torch.stack(intermediates), "final": x_sample,
                "tokens": torch.topk(logits, k=1, dim=-1).indices.squeeze(-1)}
        if kind == "tiny":
            case["call_x"] = torch.stack([c["x"] for c in net.calls])
        else:
            case["toy_weight"] = weight
        cases[name] = case
    return {"cases": cases}


def _lr_records(loop, steps: int, ids, mask, seed: int, sampler) -> list[dict]:
    records = []
    original_sample = sampler.sample

    def sample(batch, device):
        t_w = original_sample(batch, device)
        records[-1]["t"].append(t_w[0].clone())
        records[-1]["weights"].append(t_w[1].clone())
        return t_w

    sampler.sample = sample
    for step in range(steps):
        records.append({"t": [], "weights": []})
        with BernoulliRecorder(seed * 100 + step) as bern, Recorder(seed * 100 + step) as rec:
            quiet(loop.run_step, ids, {"input_ids": ids, "input_mask": mask})
        loop.step += 1
        records[-1].update(draws=torch.stack(rec.draws), bernoulli=stacked(bern.calls),
                           lr=loop.opt.param_groups[0]["lr"])
    return records


def training_fixture(v2: SimpleNamespace, config_dir: str, state: dict, tmp: Path) -> dict:
    """A few optimizer steps of their TrainLoop (train.sh flags, --use_fp16 on a CPU), and a resume."""
    quiet(v2.dist_util.setup_dist)
    v2.logger.configure(dir=str(tmp / "log_v2"), format_strs=[])
    seed = 90
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    model, diffusion, _ = build(v2, config_dir, state, diffusion_steps=100)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    sampler = v2.step_sample.create_named_schedule_sampler("lossaware", diffusion)
    ids, mask = toy_batch(seed)
    ids, mask = torch.cat([ids, ids.flip(0)]), torch.cat([mask, mask.flip(0)])
    settings = {"batch_size": 8, "microbatch": 4, "lr": 1e-3, "ema_rate": "0.9", "learning_steps": 10,
                "use_fp16": True, "gradient_clipping": -1.0, "weight_decay": 0.0, "diffusion_steps": 100,
                "schedule_sampler": "lossaware", "denoise": True, "denoise_rate": 0.5, "learned_mean_embed": True}
    loop = quiet(v2.train_util.TrainLoop, model=model, diffusion=diffusion, data=None, batch_size=8, microbatch=4,
                 lr=1e-3, ema_rate="0.9", log_interval=1000, save_interval=1000, resume_checkpoint="none",
                 use_fp16=True, fp16_scale_growth=1e-3, schedule_sampler=sampler, weight_decay=0.0,
                 learning_steps=10, checkpoint_path=str(tmp), gradient_clipping=-1.0, eval_data=None,
                 eval_interval=-1)
    loop.ddp_model = DDPLike(model)  # their losses reach the network as model.module (DDP on a GPU)
    records = _lr_records(loop, 2, ids, mask, seed, sampler)
    names = [name for name, _ in model.named_parameters()]
    out = {"ids": ids, "mask": mask, "settings": settings, "records": records, "param_names": names,
           "final": {k: v.detach().clone() for k, v in model.state_dict().items()},
           # the EMA update is main's (see training.pt); here its per-parameter sums and the EMA mean
           "ema_sums": {name: p.detach().double().sum() for name, p in zip(names, loop.ema_params[0])},
           "ema_mean_embed": loop.ema_params[0][names.index("mean_embed")].detach().clone(),
           "scaler_enabled": bool(loop.scaler.is_enabled())}

    # resume: their _load_and_sync_parameters sets resume_step = 0 after parsing it from the name
    resumed_state = {k: (v * 1.01 if v.is_floating_point() else v) for k, v in state.items()}
    folder = tmp / "resume"
    folder.mkdir()
    torch.save(resumed_state, folder / "model000100.pt")
    torch.save(resumed_state, folder / "ema_0.9_000100.pt")
    model2, diffusion2, _ = build(v2, config_dir, state, diffusion_steps=100)
    sampler2 = v2.step_sample.create_named_schedule_sampler("uniform", diffusion2)
    loop2 = quiet(v2.train_util.TrainLoop, model=model2, diffusion=diffusion2, data=None, batch_size=8, microbatch=4,
                  lr=1e-3, ema_rate="0.9", log_interval=1000, save_interval=1000,
                  resume_checkpoint=str(folder / "model000100.pt"), use_fp16=False, schedule_sampler=sampler2,
                  weight_decay=0.0, learning_steps=110, checkpoint_path=str(folder), gradient_clipping=-1.0,
                  eval_data=None, eval_interval=-1)
    loop2.ddp_model = DDPLike(model2)
    loaded = all(torch.equal(v, resumed_state[k]) for k, v in model2.state_dict().items())
    ema_is_model = all(torch.equal(e, p) for e, p in zip(loop2.ema_params[0], model2.parameters()))
    records2 = _lr_records(loop2, 2, ids, mask, seed + 1, sampler2)
    out["resume"] = {"learning_steps": 110, "lr": 1e-3, "checkpoint_step": 100, "resume_step": int(loop2.resume_step),
                     "model_loaded": bool(loaded), "ema_initialised_from_model": bool(ema_is_model),
                     "lr_per_step": [r["lr"] for r in records2]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffuseq-v2", required=True, type=Path,
                        help="checkout (or export) of the diffuseq-v2 branch")
    parser.add_argument("--commit", default="", help="commit of that checkout (read from its .git when absent)")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    torch.set_num_threads(1)
    commit = args.commit
    if not commit and (args.diffuseq_v2 / ".git").exists():
        commit = os.popen(f"git -C {args.diffuseq_v2} rev-parse HEAD").read().strip()
    import transformers

    meta = {"generated_by": "tests/golden/make_v2_fixtures.py", "commit": commit or "unknown",
            "branch": "diffuseq-v2", "torch": str(torch.__version__), "numpy": np.__version__,
            "transformers": transformers.__version__}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config_dir = bert_config_dir(tmp)
        v2 = load_v2(args.diffuseq_v2)
        model = model_fixture(v2, config_dir)
        state = model["state_dict"]
        results = {
            "v2_model.pt": model,
            "v2_schedules.pt": schedules_fixture(v2),
            "v2_q_sample.pt": q_sample_fixture(v2, config_dir, state),
            "v2_losses.pt": losses_fixture(v2, config_dir, state),
            "v2_p_sample.pt": p_sample_fixture(v2, config_dir, state),
            "v2_dpm_solver.pt": dpm_solver_fixture(v2, config_dir, state),
            "v2_training.pt": training_fixture(v2, config_dir, state, tmp),
        }
    total = 0
    for name, value in results.items():
        torch.save({"meta": meta, **value}, OUT / name)
        torch.load(OUT / name, weights_only=True)  # the tests load them so
        size = (OUT / name).stat().st_size
        total += size
        print(f"{(OUT / name).relative_to(ROOT)}: {size / 1024:.0f} KB")
    print(f"total: {total / 1024:.0f} KB")


if __name__ == "__main__":
    main()
