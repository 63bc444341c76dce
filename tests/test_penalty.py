"""Distance Penalty: the combined loss, the batched forward, post-training (neighbours: tests/test_neighbours.py)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from helpers import HalfModel, make_toy_dataset, run_script, tiny_args

from diffuseq import Seq2SeqDiffusion
from diffuseq.config import TrainConfig, parse_train_args
from diffuseq.data import load_split
from diffuseq.diffusion.penalty import PENALTIES, DistancePenalty, check_penalty_settings
from diffuseq.diffusion.process import GaussianDiffusion
from diffuseq.errors import UserError
from diffuseq.model import EncoderConfig, TransformerNetModel
from diffuseq.training.losses import distance_penalty_losses, predict_pair
from diffuseq.training.setup import train


def test_bad_penalty_settings():
    diffusion = GaussianDiffusion.from_schedule("sqrt", 50)
    with pytest.raises(UserError, match="l2_noise_random penalty needs a weight <= 0"):
        DistancePenalty.create("l2_noise_random", 2.0, diffusion)
    with pytest.raises(UserError, match="kl penalty needs a weight >= 0"):
        DistancePenalty.create("kl", -2.0, diffusion)
    with pytest.raises(UserError, match=r"`simi_step` must be in 1\.\.49 \(below the model's T = 50\), got 50"):
        DistancePenalty.create("l2", -2.0, diffusion, simi_step=50)
    with pytest.raises(UserError, match="`simi_noise` must be a finite number > 0"):
        DistancePenalty.create("l2_noise", -2.0, diffusion, simi_noise=float("inf"))
    with pytest.raises(UserError, match="`simi_lambda` must be a finite number"):
        DistancePenalty.create("cosine", float("nan"), diffusion)
    for kind in ("l3", ""):
        with pytest.raises(UserError, match="unknown `simi_penalty`"):
            DistancePenalty.create(kind, -2.0, diffusion)


def test_registry_states_each_rule_once():
    assert list(PENALTIES) == ["l2", "l2_noise", "l2_noise_random", "cosine", "kl"]
    for name, penalty in PENALTIES.items():
        assert penalty.name == name and issubclass(penalty, DistancePenalty)
    # the flag's choices are the registry's names
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "simi_penalty")
    assert tuple(field.metadata["choices"]) == ("", *PENALTIES)
    # no penalty: only the weight must be finite; either sign of the weight for cosine
    check_penalty_settings("", 5.0, 0, -1.0, 2)
    for simi_lambda in (-1.0, 1.0):
        check_penalty_settings("cosine", simi_lambda, 1, -1.0, 2)
    with pytest.raises(UserError, match="finite"):
        check_penalty_settings("", float("inf"), 10, 0.05, 50)
    # the step rules ignore simi_noise, the noise rules simi_step
    check_penalty_settings("l2", -2.0, 10, float("nan"), 50)
    check_penalty_settings("l2_noise", -2.0, 0, 0.05, 50)


@pytest.mark.parametrize("variant,simi_lambda", [("l2", -2.0), ("l2_noise", -2.0), ("l2_noise_random", -2.0),
                                                 ("cosine", -2.0), ("cosine", 0.5), ("kl", 2.0)])
def test_combined_loss_by_hand(variant, simi_lambda):
    diffusion = GaussianDiffusion.from_schedule("sqrt", 20)
    penalty = DistancePenalty.create(variant, simi_lambda, diffusion, simi_step=3, simi_noise=0.2)
    model = HalfModel()
    ids = torch.tensor([[0, 1, 2], [2, 1, 0]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    t = torch.tensor([8, 12])
    torch.manual_seed(11)
    terms = distance_penalty_losses(model, diffusion, penalty, ids, mask, t)

    torch.manual_seed(11)
    emb = model.word_embedding.weight.detach()[ids]
    x0 = emb + math.sqrt(1 - diffusion.alphas_cumprod[0]) * torch.randn(2, 3, 2)
    t_nb, active = penalty.neighbours.draw(t)
    abar = torch.tensor(diffusion.alphas_cumprod, dtype=torch.float32)

    def noised(steps):
        a = abar[steps].view(2, 1, 1)
        x = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(2, 3, 2)
        return torch.where(mask.unsqueeze(-1).bool(), x, x0)

    pred, pred_nb = noised(t) / 2, noised(t_nb) / 2
    mse = ((emb - pred) ** 2).mean((1, 2))
    mse_nb = ((emb - pred_nb) ** 2).mean((1, 2))
    cos = torch.nn.functional.cosine_similarity(pred, pred_nb, dim=-1)
    if variant == "cosine" and simi_lambda > 0:  # Bridge-Gap: a positive weight pushes the predictions apart
        pen = simi_lambda * (1 + cos).mean(-1)
    elif variant == "cosine":
        pen = -simi_lambda * (1 - cos).mean(-1)
    elif variant == "kl":  # teacher t - 3, KL averaged over positions and the vocabulary
        assert torch.equal(t_nb, t - 3)
        table = emb_table(model).t()
        log_student, log_teacher = torch.log_softmax(pred @ table, -1), torch.log_softmax(pred_nb @ table, -1)
        pen = simi_lambda * (log_teacher.exp() * (log_teacher - log_student)).mean((1, 2))
    else:
        pen = -simi_lambda * ((pred_nb - pred) ** 2).mean((1, 2))
    pen = pen * active
    t_t = ((abar[-1].sqrt() * x0) ** 2).mean((1, 2))
    rounding = -torch.log_softmax(x0 @ emb_table(model).t(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1).mean(-1)
    expected = (mse + mse_nb + 2 * rounding + 2 * t_t + pen) / 2
    torch.testing.assert_close(terms["loss"].detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["penalty"].detach(), pen.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["mse_nb"].detach(), mse_nb.detach(), rtol=1e-5, atol=1e-6)


def emb_table(model):
    return model.word_embedding.weight.detach()


def test_one_batched_forward_equals_two_forwards():
    torch.manual_seed(0)
    model = TransformerNetModel(40, 16, 16, 0.0, EncoderConfig(2, 32, 4, 64)).eval()
    diffusion = GaussianDiffusion.from_schedule("sqrt", 100)
    penalty = DistancePenalty.create("l2_noise_random", -2.0, diffusion)
    ids = torch.randint(0, 40, (4, 10))
    mask = (torch.arange(10) >= 4).long().expand(4, 10)
    t = torch.tensor([5, 40, 70, 99])
    results = []
    for batched in (True, False):
        torch.manual_seed(5)
        results.append(distance_penalty_losses(model, diffusion, penalty, ids, mask, t, batched=batched))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)
    x_a, x_b = torch.randn(2, 10, 16), torch.randn(2, 10, 16)
    ta, tb = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    one, two = predict_pair(model, x_a, ta, x_b, tb), predict_pair(model, x_a, ta, x_b, tb, batched=False)
    torch.testing.assert_close(one[0], two[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one[1], two[1], rtol=1e-5, atol=1e-6)


def test_post_training_from_a_checkpoint_lowers_the_penalty(tmp_path):
    data = make_toy_dataset(tmp_path / "toy")
    base = tmp_path / "base"
    train(parse_train_args(tiny_args(data, base, learning_steps=100, save_interval=100, lr=3e-3, dropout=0,
                                     bsz=32, microbatch=32, hidden_size=64, num_heads=4, intermediate_size=128)))
    post = tmp_path / "post"
    result = run_script("run_train.py", tiny_args(
        data, post, learning_steps=400, save_interval=300, lr=3e-3, dropout=0, bsz=32, microbatch=32, hidden_size=64,
        num_heads=4, intermediate_size=128, log_interval=50, eval_interval=0, simi_penalty="l2_noise_random",
        simi_lambda=-2, simi_noise=0.2, resume_checkpoint=base / "model000100.pt"))
    assert result.returncode == 0, result.stderr[-2000:]
    # the step count continues from 100 with a fresh optimizer: 200 and 300 Adam steps at steps 300 and 400
    for step, adam_steps in ((300, 200), (400, 300)):
        state = torch.load(post / f"opt{step:06d}.pt", weights_only=True)["state"]
        assert {int(s["step"]) for s in state.values()} == {adam_steps}, step
    before, after = (_penalty_of(path, data) for path in (base / "model000100.pt", post / "model000400.pt"))
    assert after < 0.7 * before, (before, after)
    # the log of post-training names its terms
    logged = next(line for line in result.stderr.splitlines() if "step 150/400 " in line)
    assert all(term in logged for term in ("mse ", "mse_nb ", "penalty ")), logged


def _penalty_of(checkpoint: Path, data: Path) -> float:
    """A checkpoint's mean l2_noise_random penalty (weight -2, noise 0.2) over its training pairs, each with four
    steps t: the same draws for every checkpoint."""
    api = Seq2SeqDiffusion.from_checkpoint(checkpoint, "cpu")
    diffusion = GaussianDiffusion.from_schedule(api.config.noise_schedule, api.num_timesteps)
    penalty = DistancePenalty.create("l2_noise_random", -2.0, diffusion, simi_noise=0.2)
    pairs = load_split(data, "train", api.vocab, api.config.seq_len, cache="none")
    ids, mask = pairs.input_ids.repeat(4, 1), pairs.input_mask.repeat(4, 1)
    torch.manual_seed(0)
    t = torch.randint(0, api.num_timesteps, (len(ids),))
    with torch.no_grad():
        return float(distance_penalty_losses(api.model, diffusion, penalty, ids, mask, t)["penalty"].mean())
