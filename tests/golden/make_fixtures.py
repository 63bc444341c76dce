"""Golden fixtures from the original code: Shark-NLP/DiffuSeq and ZetangForward/Bridge_Gap_Diffusion.

Run by hand (not in CI), with a Python that can import the two checkouts (their code needs
``transformers`` 4.x, ``datasets``, ``blobfile``; numpy 1.23 or the ``np.int`` alias set below):

    python tests/golden/make_fixtures.py --diffuseq /path/to/DiffuSeq --bridge-gap /path/to/Bridge_Gap_Diffusion

It imports their modules from the checkouts as they are (nothing is copied or edited), runs
them on small inputs with fixed randomness, and writes what they compute into
``tests/golden/fixtures/``. ``tests/test_golden.py`` compares this project against those files.
Where their code needs a GPU or a launcher, the calls are made here on a CPU with the same
arguments their scripts pass.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

if "int" not in np.__dict__:  # their step_sample.py uses np.int, removed in numpy 1.24
    np.int = int  # type: ignore[attr-defined]

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures"
ROOT = HERE.parent.parent
THEIR_TOP_LEVEL = ("diffuseq", "basic_utils", "train_util")

# the tiny model every fixture uses
VOCAB, HIDDEN_DIM, SEQ_LEN, BATCH = 30, 16, 12, 4
BERT_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 2, "intermediate_size": 64, "hidden_act": "gelu",
               "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 64,
               "layer_norm_eps": 1e-12, "type_vocab_size": 2, "vocab_size": VOCAB, "initializer_range": 0.02,
               "pad_token_id": 0, "position_embedding_type": "absolute"}


# the modules of a checkout that the fixtures use, by the name they get in ``load_original``'s namespace
ORIGINAL_MODULES = {"gd": "diffuseq.gaussian_diffusion", "step_sample": "diffuseq.step_sample",
                    "model": "diffuseq.transformer_model", "rounding": "diffuseq.rounding",
                    "text_datasets": "diffuseq.text_datasets", "dist_util": "diffuseq.utils.dist_util",
                    "logger": "diffuseq.utils.logger", "basic_utils": "basic_utils", "train_util": "train_util"}


def load_original(path: Path, modules: dict[str, str] | None = None) -> SimpleNamespace:
    """Import one checkout's ``modules`` (default ``ORIGINAL_MODULES``); every checkout names its package
    ``diffuseq``, so another's modules are dropped first."""
    modules = ORIGINAL_MODULES if modules is None else modules
    for name in list(sys.modules):
        if name.split(".")[0] in {*THEIR_TOP_LEVEL, *(module.split(".")[0] for module in modules.values())}:
            del sys.modules[name]
    sys.path.insert(0, str(path))
    cwd = os.getcwd()
    os.chdir(path)  # basic_utils reads diffuseq/config.json relative to the working folder
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            mods = SimpleNamespace(**{key: importlib.import_module(module) for key, module in modules.items()})
            mods.defaults = mods.basic_utils.load_defaults_config()
    finally:
        os.chdir(cwd)
        sys.path.remove(str(path))
    return mods


def quiet(fn, *args, **kwargs):
    """Call ``fn`` with its prints swallowed (their code prints every step)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


class Recorder:
    """Stands in for ``torch.randn_like`` (their code draws all its Gaussian noise through it).

    Draws come from a seeded generator and are recorded in call order, so a test can feed the
    same values to this project's code.
    """

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.draws: list[torch.Tensor] = []
        self._orig = torch.randn_like

    def __call__(self, x, *args, **kwargs):
        out = torch.randn(x.shape, generator=self.gen, dtype=x.dtype if x.is_floating_point() else torch.float32)
        self.draws.append(out.clone())
        return out

    def __enter__(self) -> "Recorder":
        torch.randn_like = self
        return self

    def __exit__(self, *exc) -> None:
        torch.randn_like = self._orig


class DDPLike(torch.nn.Module):
    """What their losses expect as ``model.model.module``: a wrapper with ``.module`` (DDP on a GPU)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class CallRecorder(torch.nn.Module):
    """Records every network call of a reverse chain: the float timesteps and the output."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[dict[str, torch.Tensor]] = []

    def forward(self, x, ts, **kwargs):
        out = self.net(x, ts, **kwargs)
        self.calls.append({"t": ts.detach().clone(), "out": out.detach().clone()})
        return out

    def get_embeds(self, ids):
        return self.net.get_embeds(ids)

    def get_logits(self, h):
        return self.net.get_logits(h)


class TokenizerShim:
    """Their ``myTokenizer`` methods on a tokenizer built here (their constructor would save files)."""

    def __init__(self, cls: type, tokenizer) -> None:
        self.cls, self.tokenizer = cls, tokenizer
        self.sep_token_id, self.pad_token_id = tokenizer.sep_token_id, tokenizer.pad_token_id

    def encode_token(self, sentences):
        return self.cls.encode_token(self, sentences)

    def decode_token(self, seq):
        return self.cls.decode_token(self, seq)


def bert_config_dir(tmp: Path) -> str:
    folder = tmp / "bert_config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(BERT_CONFIG))
    return str(folder)


def tiny_model(mods: SimpleNamespace, config_dir: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        net = mods.model.TransformerNetModel(input_dims=HIDDEN_DIM, output_dims=HIDDEN_DIM, hidden_t_dim=HIDDEN_DIM,
                                             dropout=0.0, config_name=config_dir, vocab_size=VOCAB)
    with torch.no_grad():  # embeddings of a trained model are small; keep the toy's comparable
        net.word_embedding.weight.mul_(0.5)
    return net


def spaced(mods: SimpleNamespace, num_steps: int, use_timesteps, schedule: str = "sqrt"):
    return mods.gd.SpacedDiffusion(use_timesteps=use_timesteps,
                                   betas=mods.gd.get_named_beta_schedule(schedule, num_steps),
                                   rescale_timesteps=True, predict_xstart=True, learn_sigmas=False,
                                   sigma_small=False, use_kl=False, rescale_learned_sigmas=False)


def toy_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and input masks of BATCH sequences: source, [SEP] (id 3), target, padding (id 0)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (BATCH, SEQ_LEN), generator=gen)
    mask = torch.zeros(BATCH, SEQ_LEN, dtype=torch.long)
    for row, src_len in enumerate((3, 4, 5, 2)):
        ids[row, src_len] = 3
        mask[row, src_len + 1:] = 1
        ids[row, SEQ_LEN - row:] = 0
    return ids, mask


# -------------------------------------------------------------------------------------------- fixtures


def schedules(bg: SimpleNamespace) -> dict:
    out = {}
    for name in ("sqrt", "linear", "cosine", "trunc_cos", "trunc_lin", "pw_lin"):
        for steps in (100, 1000, 2000):
            out[f"{name}_{steps}"] = torch.from_numpy(bg.gd.get_named_beta_schedule(name, steps))
    return out


def respacings(ds: SimpleNamespace, bg: SimpleNamespace) -> dict:
    """DiffuSeq's space_timesteps for counts and ddimN; Bridge-Gap's for adp_N and [a,b,c] lists."""
    uniform, ddim, adp, lists, x2 = {}, {}, {}, {}, {}
    for steps in (37, 100, 1000, 2000):
        for count in sorted({1, 2, 3, 4, 5, 7, 10, 20, 33, 50, 100, 125, 287, 333, 500, 1000, steps}):
            if count <= steps:
                uniform[f"{steps}:{count}"] = sorted(ds.gd.space_timesteps(steps, str(count)))
        for spec in ("10,10,10", "5,1,3", "1,2", "3,3,3,3"):
            uniform[f"{steps}:{spec}"] = sorted(ds.gd.space_timesteps(steps, spec))
        for count in (1, 2, 4, 5, 10, 20, 25, 50, 100, steps):
            if count <= steps:
                try:
                    ddim[f"{steps}:{count}"] = sorted(ds.gd.space_timesteps(steps, f"ddim{count}"))
                except ValueError:
                    ddim[f"{steps}:{count}"] = None
        top = {37: 20, 100: 60, 1000: 120, 2000: 300}[steps]
        for count in range(3, top + 1):
            adp[f"{steps}:{count}"] = sorted(quiet(bg.gd.space_timesteps, steps, f"adp_{count}"))
        for spec in ([20], [10, 10], [5, 10, 5], [1, 1, 1]):
            lists[f"{steps}:{json.dumps(spec)}"] = sorted(quiet(bg.gd.space_timesteps, steps, spec))
        for count in (1, 2, 4, 10, 20, 37):
            x2[f"{steps}:{count}"] = sorted(quiet(bg.gd.space_timesteps, steps, f"x2_{count}"))
    return {"uniform": uniform, "ddim": ddim, "adp": adp, "lists": lists, "x2": x2}


def noise_maps(bg: SimpleNamespace) -> dict:
    out = {}
    for steps, schedule, noise in ((2000, "sqrt", 0.05), (1000, "sqrt", 0.05), (100, "sqrt", 0.1),
                                   (200, "linear", 0.02), (300, "cosine", 0.05)):
        diffusion = spaced(bg, steps, range(steps), schedule)
        diffusion.fill_noise_map(noise)
        out[f"{schedule}_{steps}_{noise}"] = {"up": {str(k): v for k, v in diffusion.up_map.items()},
                                              "down": {str(k): v for k, v in diffusion.down_map.items()}}
    return out


def lossaware(ds: SimpleNamespace) -> dict:
    diffusion = spaced(ds, 20, range(20))
    sampler = ds.step_sample.LossSecondMomentResampler(diffusion)
    rng = np.random.RandomState(0)
    updates, weights = [], []
    for _ in range(60):
        ts = rng.randint(0, 20, size=8).tolist()
        losses = rng.rand(8).tolist()
        sampler.update_with_all_losses(ts, losses)
        updates.append((ts, losses))
        weights.append(torch.from_numpy(sampler.weights().copy()))
    fixstep = {str(steps): torch.from_numpy(np.asarray(ds.step_sample.FixSampler(spaced(ds, steps, range(steps)))
                                                       .weights(), dtype=np.float64)) for steps in (100, 101)}
    return {"updates": updates, "weights": weights, "fixstep": fixstep}


def denoiser_forward(ds: SimpleNamespace, config_dir: str) -> dict:
    net = tiny_model(ds, config_dir, seed=1).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, SEQ_LEN, HIDDEN_DIM, generator=gen)
    t = torch.tensor([0.0, 1.5, 499.5, 999.0])
    with torch.no_grad():
        out = net(x, t)
        logits = net.get_logits(out)
    return {"state_dict": net.state_dict(), "x": x, "t": t, "out": out, "logits": logits,
            "bert_config": BERT_CONFIG}


def chains(ds: SimpleNamespace, bg: SimpleNamespace, config_dir: str) -> dict:
    """Whole reverse chains with recorded noise and network calls.

    Each case: the initial x (noise on the target, clean source), the noise of every step,
    every network call (float timestep, output) and every sample x_{t-1}.
    """
    cases = {}
    ids, mask = toy_batch(3)
    settings = [
        # name, repository, T, spacing as their create_model_and_diffusion gets it, ddim eta or None, clamp, clamp_step, clip
        ("diffuseq_ddpm_all_T30_clamp", ds, 30, "", None, True, 0, False),
        ("diffuseq_ddpm_uniform10_T200_clamp", ds, 200, "10", None, True, 0, False),
        ("diffuseq_ddpm_uniform10_T200_noclamp", ds, 200, "10", None, False, 0, False),
        ("diffuseq_ddpm_uniform10_T200_clampstep4", ds, 200, "10", None, True, 4, False),
        ("diffuseq_ddpm_uniform10_T200_clip", ds, 200, "10", None, True, 0, True),
        ("diffuseq_ddim_uniform20_T200_clamp", ds, 200, "20", 0.0, True, 0, False),
        ("diffuseq_ddim_ddim25_T200_noclamp", ds, 200, "ddim25", 0.0, False, 0, False),
        ("bridge_gap_ddpm_adp20_T2000_clamp", bg, 2000, "adp_20", None, True, 0, False),
        ("bridge_gap_ddpm_adp4_T2000_clamp", bg, 2000, "adp_4", None, True, 0, False),
        ("bridge_gap_ddpm_adp10_T1000_clampstep3", bg, 1000, "adp_10", None, True, 3, False),
        ("bridge_gap_ddim0_adp20_T2000_clamp", bg, 2000, "adp_20", 0.0, True, 0, False),
        ("bridge_gap_ddim05_uniform10_T200_clamp", bg, 200, [10], 0.5, True, 0, False),
    ]
    for name, mods, steps, spacing, eta, clamp, clamp_step, clip in settings:
        net = tiny_model(mods, config_dir, seed=5).eval().requires_grad_(False)
        recorder_net = CallRecorder(net)
        use = quiet(mods.gd.space_timesteps, steps, spacing if spacing != "" else [steps])
        diffusion = spaced(mods, steps, use)
        x_start = net.get_embeds(ids)
        gen = torch.Generator().manual_seed(11)
        init = torch.randn(x_start.shape, generator=gen)
        broad = mask.unsqueeze(-1).expand(x_start.shape)
        x_noised = torch.where(broad == 0, x_start, init)
        model_emb = torch.nn.Embedding(VOCAB, HIDDEN_DIM, _weight=net.word_embedding.weight.clone())
        round_args = SimpleNamespace(clamp_skip=-1, top_k=0, top_p=0.0, tau=1.0, scale_end="")
        denoised_fn = (lambda x, t: mods.rounding.denoised_fn_round(round_args, model_emb, x, t)) if clamp else None
        kwargs = dict(noise=x_noised, clip_denoised=clip, denoised_fn=denoised_fn, model_kwargs={}, top_p=0.0,
                      clamp_step=clamp_step, clamp_first=True, mask=broad, x_start=x_start)
        if mods is bg:  # DiffuSeq's DDIM has no eta argument (always 0)
            kwargs.update(gap=1, eta=eta if eta is not None else -1.0, ddim_signal="")
        with torch.no_grad(), Recorder(seed=12) as rec:
            if eta is None:
                samples = quiet(diffusion.p_sample_loop, recorder_net, x_start.shape, **kwargs)
            else:
                samples = quiet(diffusion.ddim_sample_loop, recorder_net, x_start.shape, **kwargs)
            tokens = net.get_logits(samples[-1]).argmax(-1)
        cases[name] = {"num_timesteps": steps, "spacing": json.dumps(spacing), "eta": -1.0 if eta is None else eta,
                       "clamp": clamp, "clamp_step": clamp_step, "clip_denoised": clip,
                       "timestep_map": list(diffusion.timestep_map), "ids": ids, "mask": mask,
                       "x_init": x_noised, "step_noise": rec.draws, "calls": recorder_net.calls,
                       "samples": samples, "final": samples[-1], "tokens": tokens}
    return {"state_dict": tiny_model(ds, config_dir, seed=5).state_dict(), "cases": cases}


def _loss_call(mods, diffusion, net, ids, mask, t, seed, **kwargs):
    """One call of their training loss with recorded draws (and the neighbour steps it chose)."""
    chosen = {}
    originals = {}
    for fn_name in ("make_t_similar", "make_t_similar_by_noise"):
        if hasattr(diffusion, fn_name):
            original = getattr(diffusion, fn_name)
            originals[fn_name] = original

            def wrapped(*args, _original=original, **kw):
                t_nb, active = _original(*args, **kw)
                chosen["t_nb"], chosen["active"] = t_nb.clone(), active.clone()
                return t_nb, active

            setattr(diffusion, fn_name, wrapped)
    random.seed(seed)
    model = DDPLike(net)
    try:
        with Recorder(seed) as rec:
            terms = diffusion.training_losses(model, *kwargs.pop("loss_args", ()), None, t,
                                              model_kwargs={"input_ids": ids.clone(), "input_mask": mask.clone()},
                                              **kwargs)
    finally:
        for fn_name in originals:
            delattr(diffusion, fn_name)
    return terms, rec.draws, chosen


def losses(ds: SimpleNamespace, bg: SimpleNamespace, config_dir: str) -> dict:
    """Every loss term with recorded draws: DiffuSeq's base loss and Bridge-Gap's penalties."""
    ids, mask = toy_batch(4)
    t = torch.tensor([0, 1, 999, 1999])
    cases = {}
    net_ds = tiny_model(ds, config_dir, seed=7)
    state = copy.deepcopy(net_ds.state_dict())
    diffusion = spaced(ds, 2000, range(2000))
    terms, draws, _ = _loss_call(ds, diffusion, net_ds, ids, mask, t, seed=21)
    cases["diffuseq_base"] = {"terms": {k: v.detach() for k, v in terms.items()}, "draws": draws, "t": t}
    penalties = [("l2", -2.0, 10), ("l2_noise", -2.0, 10), ("l2_noise_random", -2.0, 10), ("cosine", -1.5, 10),
                 ("cosine", 0.7, 10), ("kl", 0.5, 10), ("l2", -1.0, 1500)]
    for seed, (kind, lam, step) in enumerate(penalties, start=30):
        net = tiny_model(bg, config_dir, seed=7)
        net.load_state_dict(state)
        diffusion = spaced(bg, 2000, range(2000))
        t_case = torch.tensor([5, 1000, 1995, 1999]) if kind != "kl" else torch.tensor([5, 1000, 12, 1999])
        terms, draws, chosen = _loss_call(bg, diffusion, net, ids, mask, t_case, seed=seed,
                                          loss_args=("kl" if kind == "kl" else "",), simi_penalty=kind,
                                          simi_lambda=lam, simi_step=step,
                                          **({} if kind == "kl" else {"simi_noise": 0.05}))
        cases[f"bridge_gap_{kind}_{lam}_{step}"] = {
            "kind": kind, "simi_lambda": lam, "simi_step": step, "simi_noise": 0.05, "t": t_case,
            "terms": {k: v.detach() for k, v in terms.items()}, "draws": draws, **chosen}
    return {"state_dict": state, "ids": ids, "mask": mask, "cases": cases}


def _train_steps(mods, config_dir, tmp: Path, *, steps: int, lr: float, schedule_sampler: str,
                 gradient_clipping: float, weight_decay: float, simi_penalty: str | None,
                 resume: tuple[dict, dict] | None, learning_steps: int, seed: int) -> dict:
    """A few optimizer steps of their TrainLoop on a fixed batch, with recorded randomness."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    net = tiny_model(mods, config_dir, seed=seed)
    folder = tmp / f"run_{seed}"
    folder.mkdir()
    resume_checkpoint = "none"
    if resume is not None:
        model_state, ema_state = resume
        torch.save(model_state, folder / "model000100.pt")
        torch.save(ema_state, folder / "ema_0.9_000100.pt")
        resume_checkpoint = str(folder / "model000100.pt")
        out_resume = {"resume_model": model_state, "resume_ema": ema_state}
    diffusion = spaced(mods, 100, range(100))
    sampler = mods.step_sample.create_named_schedule_sampler(schedule_sampler, diffusion)
    ids, mask = toy_batch(seed)
    ids = torch.cat([ids, ids.flip(0)])
    mask = torch.cat([mask, mask.flip(0)])
    extra = {}
    if simi_penalty is not None:
        extra = dict(simi_penalty=simi_penalty, simi_lambda=-2.0, simi_step=10, simi_noise=0.05)
    loop = quiet(mods.train_util.TrainLoop, model=net, diffusion=diffusion, data=None, batch_size=8, microbatch=4,
                 lr=lr, ema_rate="0.9", log_interval=1000, save_interval=1000, resume_checkpoint=resume_checkpoint,
                 schedule_sampler=sampler, weight_decay=weight_decay, learning_steps=learning_steps,
                 checkpoint_path=str(folder), gradient_clipping=gradient_clipping, eval_data=None,
                 eval_interval=-1, **extra)
    loop.ddp_model = DDPLike(net)  # their losses reach the network as model.module (DDP on a GPU)
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    records = []
    original_sample = sampler.sample

    def sample(batch, device):
        t_w = original_sample(batch, device)
        records[-1]["t"].append(t_w[0].clone())
        records[-1]["weights"].append(t_w[1].clone())
        return t_w

    sampler.sample = sample
    original_similar = getattr(diffusion, "make_t_similar_by_noise", None)
    if original_similar is not None:
        def similar(*args, **kwargs):
            t_nb, active = original_similar(*args, **kwargs)
            records[-1]["t_nb"].append(t_nb.clone())
            records[-1]["active"].append(active.clone())
            return t_nb, active

        diffusion.make_t_similar_by_noise = similar
    for step in range(steps):
        records.append({"t": [], "weights": [], "t_nb": [], "active": [], "lr": None})
        with Recorder(seed * 100 + step) as rec:
            quiet(loop.run_step, ids, {"input_ids": ids, "input_mask": mask})
        loop.step += 1
        records[-1]["draws"] = rec.draws
        records[-1]["lr"] = loop.opt.param_groups[0]["lr"]
    out = {"start": start, "ids": ids, "mask": mask,
           "records": records, "final": {k: v.detach().clone() for k, v in net.state_dict().items()},
           "ema": [p.detach().clone() for p in loop.ema_params[0]],
           "param_names": [name for name, _ in net.named_parameters()],
           "settings": dict(steps=steps, lr=lr, schedule_sampler=schedule_sampler,
                            gradient_clipping=gradient_clipping, weight_decay=weight_decay,
                            simi_penalty=simi_penalty or "", learning_steps=learning_steps,
                            resume_step=loop.resume_step, microbatch=4, batch_size=8, ema_rate="0.9",
                            diffusion_steps=100)}
    if resume is not None:
        out.update(out_resume)
    if hasattr(sampler, "_loss_history"):
        out["sampler"] = {"history": torch.from_numpy(sampler._loss_history.copy()),
                          "counts": torch.from_numpy(sampler._loss_counts.astype(np.int64)),
                          "weights": torch.from_numpy(np.asarray(sampler.weights(), dtype=np.float64))}
    return out


def training(ds: SimpleNamespace, bg: SimpleNamespace, config_dir: str, tmp: Path) -> dict:
    """Optimizer steps: DiffuSeq from scratch (annealed lr), Bridge-Gap resumed post-training (constant lr)."""
    quiet(ds.dist_util.setup_dist)
    ds.logger.configure(dir=str(tmp / "log"), format_strs=[])
    base = _train_steps(ds, config_dir, tmp, steps=3, lr=1e-3, schedule_sampler="lossaware", gradient_clipping=-1.0,
                        weight_decay=0.0, simi_penalty=None, resume=None, learning_steps=10, seed=41)
    clipped = _train_steps(ds, config_dir, tmp, steps=2, lr=1e-3, schedule_sampler="uniform", gradient_clipping=0.05,
                           weight_decay=0.1, simi_penalty=None, resume=None, learning_steps=4, seed=42)
    bg.logger.configure(dir=str(tmp / "log_bg"), format_strs=[])
    trained = tiny_model(bg, config_dir, seed=43).state_dict()
    ema = {k: v * 0.9 if v.is_floating_point() else v for k, v in trained.items()}
    post = _train_steps(bg, config_dir, tmp, steps=3, lr=5e-4, schedule_sampler="uniform", gradient_clipping=-1.0,
                        weight_decay=0.0, simi_penalty="l2_noise_random", resume=(trained, ema),
                        learning_steps=110, seed=44)
    return {"diffuseq_base": base, "diffuseq_clipped": clipped, "bridge_gap_post": post}


def tokenizer(ds: SimpleNamespace, tmp: Path) -> dict:
    """Their BERT tokenizer path (AutoTokenizer on a folder) and their data pipeline, on the shipped data."""
    from transformers import AutoTokenizer

    pairs = [json.loads(line) for line in (ROOT / "datasets" / "wordnet_reverse" / "test.jsonl").open()][:200]
    words: dict[str, int] = {}
    for line in (ROOT / "datasets" / "wordnet" / "train.jsonl").open():
        for word in json.loads(line)["trg"].lower().split():
            words[word] = words.get(word, 0) + 1
    chars = sorted({c for w in words for c in w})
    common = sorted(w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:1500])
    itos = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    itos += [w for w in common + ["##ing", "##ed", "##ly"] if w not in itos]
    folder = tmp / "tok"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(itos) + "\n")
    (folder / "config.json").write_text(json.dumps({**BERT_CONFIG, "vocab_size": len(itos)}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    tok = AutoTokenizer.from_pretrained(str(folder))
    wrapper = TokenizerShim(ds.basic_utils.myTokenizer, tok)
    srcs = [p["src"].strip() for p in pairs]
    trgs = [p["trg"].strip() for p in pairs]
    merged = quiet(ds.text_datasets.helper_tokenize, {"src": srcs, "trg": trgs}, wrapper, 24)["train"]
    ids = torch.tensor(merged["input_ids"])
    masks = torch.tensor(merged["input_mask"])
    gen = torch.Generator().manual_seed(5)
    predicted = torch.randint(0, len(itos), ids.shape, generator=gen)
    predicted[:, -3:] = tok.pad_token_id  # trailing padding is removed, the rest is kept
    predicted[::3, -6] = tok.pad_token_id
    records = []
    for seq, pred, input_mask in zip(ids, predicted, masks):
        len_x = 24 - int(input_mask.sum())
        records.append({"recover": wrapper.decode_token(pred[len_x:]), "reference": wrapper.decode_token(seq[len_x:]),
                        "source": wrapper.decode_token(seq[:len_x])})
    word_vocab = {"[START]": 0, "[END]": 1, "[UNK]": 2, "[PAD]": 3, "a": 4, "b@@": 5, "c": 6, "d__": 7}
    word_tok = SimpleNamespace(tokenizer=word_vocab, rev_tokenizer={v: k for k, v in word_vocab.items()},
                               pad_token_id=3)
    word_ids = [[0, 4, 5, 6, 3, 7, 6, 1, 3, 3], [0, 5, 5, 4, 1, 3], [3, 3]]
    word_text = [ds.basic_utils.myTokenizer.decode_token(word_tok, torch.tensor(seq)) for seq in word_ids]
    return {"vocab": itos, "texts": srcs + trgs,
            "encoded": tok(srcs + trgs, add_special_tokens=True)["input_ids"],
            "seq_len": 24, "input_ids": ids, "input_mask": masks, "predicted": predicted, "records": records,
            "word_vocab": word_vocab, "word_ids": word_ids, "word_text": word_text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffuseq", required=True, type=Path, help="checkout of Shark-NLP/DiffuSeq")
    parser.add_argument("--bridge-gap", required=True, type=Path, help="checkout of ZetangForward/Bridge_Gap_Diffusion")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    torch.set_num_threads(1)
    commits = {}
    for name, path in (("diffuseq", args.diffuseq), ("bridge_gap", args.bridge_gap)):
        head = path / ".git" / "HEAD"
        commits[name] = os.popen(f"git -C {path} rev-parse HEAD").read().strip() if head.exists() else "unknown"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config_dir = bert_config_dir(tmp)
        ds = load_original(args.diffuseq)
        bg = load_original(args.bridge_gap)  # ds's module objects keep working after bg's replace them
        results = {"schedules": schedules(bg)}
        ds_results = {"lossaware": lossaware(ds), "denoiser": denoiser_forward(ds, config_dir),
                      "tokenizer": tokenizer(ds, tmp)}
        respacing = respacings(ds, bg)
        noise = noise_maps(bg)
        chain = chains(ds, bg, config_dir)
        loss = losses(ds, bg, config_dir)
        train = training(ds, bg, config_dir, tmp)
    meta = {"generated_by": "tests/golden/make_fixtures.py", "commits": commits, "torch": str(torch.__version__),
            "numpy": np.__version__}
    (OUT / "respacing.json").write_text(json.dumps({"meta": meta, **respacing}, separators=(",", ":")) + "\n")
    (OUT / "noise_maps.json").write_text(json.dumps({"meta": meta, **noise}, separators=(",", ":")) + "\n")
    torch.save({"meta": meta, **results["schedules"]}, OUT / "schedules.pt")
    torch.save({"meta": meta, **ds_results["lossaware"]}, OUT / "lossaware.pt")
    torch.save({"meta": meta, **ds_results["denoiser"]}, OUT / "denoiser.pt")
    torch.save({"meta": meta, **ds_results["tokenizer"]}, OUT / "tokenizer.pt")
    torch.save({"meta": meta, **chain}, OUT / "chains.pt")
    torch.save({"meta": meta, **loss}, OUT / "losses.pt")
    torch.save({"meta": meta, **train}, OUT / "training.pt")
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
