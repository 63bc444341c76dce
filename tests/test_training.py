"""Training: overfitting a tiny model, checkpoints, resume, DDP under torchrun, and bad input."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from helpers import assert_clean_error, make_toy_dataset, run_script, tiny_args, write_pairs

from diffuseq.config import parse_train_args
from diffuseq.data.vocab import load_vocab_from
from diffuseq.errors import UserError
from diffuseq.model import checkpoints as ckpt
from diffuseq.training.setup import train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


def _trainer(cfg, folder):
    """A Trainer built the way ``train`` builds it (vocabulary saved in the folder)."""
    from diffuseq.training.setup import setup_run

    return setup_run(cfg, torch.device("cpu"))


def test_tiny_model_overfits_64_pairs_and_recovers_targets(toy, tmp_path):
    cfg = parse_train_args(tiny_args(toy, tmp_path / "ck", bsz=64, microbatch=64, learning_steps=400, lr=3e-3,
                                     dropout=0, schedule_sampler="uniform", hidden_size=64, num_heads=4,
                                     intermediate_size=128, eval_interval=0, ema_rate=0.99))
    trainer = _trainer(cfg, tmp_path / "ck")
    trainer.model.train()
    losses = []
    while trainer.step < cfg.learning_steps:
        terms = trainer.train_step(trainer.model, with_nll=False)
        losses.append(float(terms["loss"]))
    first, last = losses[0], sum(losses[-20:]) / 20
    assert last < first / 10, (first, last)

    model, diffusion, data = trainer.model.eval(), trainer.diffusion, trainer.stream.data
    with torch.no_grad():
        t = torch.full((len(data),), 5)
        x0 = model.get_embeds(data.input_ids)
        x_t = diffusion.q_sample(x0, t, torch.randn_like(x0), data.input_mask)
        tokens = model.get_logits(model(x_t, diffusion.scale_timesteps(t))).argmax(-1)
    target = data.input_mask.bool() & (data.input_ids != trainer.vocab.pad_id)
    accuracy = (tokens[target] == data.input_ids[target]).float().mean().item()
    assert accuracy > 0.95, accuracy


def test_training_writes_diffuseq_checkpoints_and_resumes(toy, tmp_path):
    folder = tmp_path / "ck"
    train(parse_train_args(tiny_args(toy, folder)))
    names = sorted(p.name for p in folder.iterdir())
    for step in (10, 20):
        for name in (ckpt.model_name(step), ckpt.ema_name("0.9999", step), ckpt.opt_name(step)):
            assert name in names
            state = torch.load(folder / name, weights_only=True)
            assert isinstance(state, dict)
    model = torch.load(folder / "model000020.pt", weights_only=True)
    assert torch.equal(model["word_embedding.weight"], model["lm_head.weight"])
    args = json.loads((folder / "training_args.json").read_text())
    for key in ("diffusion_steps", "batch_size", "vocab_size", "seq_len", "hidden_dim", "hidden_t_dim",
                "noise_schedule", "config_name", "dropout", "ema_rate", "predict_xstart"):
        assert key in args
    assert args["vocab_size"] == load_vocab_from(folder).size == model["word_embedding.weight"].shape[0]

    # Exact resume: continuing from step 10 reproduces the straight run's step-20 weights bitwise.
    other = tmp_path / "resumed"
    other.mkdir()
    for name in names:
        if "000020" not in name:
            shutil.copy2(folder / name, other / name)
    train(parse_train_args(tiny_args(toy, other)))
    resumed = torch.load(other / "model000020.pt", weights_only=True)
    assert all(torch.equal(resumed[k], model[k]) for k in model)

    # A DiffuSeq-style folder (EMA weights only, no optimizer) is a valid starting point.
    diffuseq_dir = tmp_path / "diffuseq"
    diffuseq_dir.mkdir()
    for name in ("ema_0.9999_000020.pt", "training_args.json", "vocab.txt"):
        shutil.copy2(folder / name, diffuseq_dir / name)
    post = tmp_path / "post"
    train(parse_train_args(tiny_args(toy, post, learning_steps=24, save_interval=4,
                                     resume_checkpoint=diffuseq_dir / "ema_0.9999_000020.pt")))
    assert (post / "model000024.pt").is_file() and (post / "vocab.txt").is_file()


def test_torchrun_two_processes_train_and_checkpoint(toy, tmp_path):
    folder = tmp_path / "ddp"
    result = run_script("run_train.py", tiny_args(toy, folder, schedule_sampler="lossaware", bsz=8, microbatch=8),
                        launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  "--nproc_per_node=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es), batch 8 per process" in result.stderr  # --bsz is per process, as in DiffuSeq
    assert (folder / "model000020.pt").is_file() and (folder / "trainstate000020.pt").is_file()
    state = torch.load(folder / "trainstate000020.pt", weights_only=True)
    assert len(state["rng"]) == 2
    # the loss-aware history was gathered from both ranks: 20 steps x 2 ranks x 8 examples recorded
    assert int(state["sampler"]["loss_counts"].sum()) == 20 * 16


def _bad(tmp_path, toy, **overrides):
    return parse_train_args(tiny_args(toy, tmp_path / "ck", **overrides))


def test_bad_data_inputs(toy, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        train(_bad(tmp_path, tmp_path / "nowhere"))
    no_valid = tmp_path / "novalid"
    no_valid.mkdir()
    shutil.copy2(toy / "train.jsonl", no_valid / "train.jsonl")
    with pytest.raises(UserError, match="has no valid.jsonl"):
        train(_bad(tmp_path, no_valid))
    for name, content, message in (
            ("malformed", '{"src": "a", "trg": "b"}\n{"src": "a", \n', r"train.jsonl:2: not valid JSON"),
            ("nosrc", '{"src": "a", "trg": "b"}\n{"trg": "b"}\n', r"train.jsonl:2: .*\"src\" and \"trg\""),
            ("empty", "\n", r"holds no examples")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train.jsonl").write_text(content)
        shutil.copy2(toy / "valid.jsonl", folder / "valid.jsonl")
        with pytest.raises(UserError, match=message):
            train(_bad(tmp_path / name, folder))


def test_bad_flags(toy, tmp_path):
    with pytest.raises(UserError, match="`seq_len` must be in 7..512"):
        _bad(tmp_path, toy, seq_len=5)
    with pytest.raises(UserError, match="invalid choice"):
        _bad(tmp_path, toy, noise_schedule="quadratic")
    with pytest.raises(UserError, match="invalid choice"):
        _bad(tmp_path, toy, schedule_sampler="fancy")
    with pytest.raises(UserError, match="not divisible"):
        parse_train_args(tiny_args(toy, tmp_path, hidden_size=30, num_heads=4))


def test_bad_resume_checkpoints(toy, tmp_path):
    base = tmp_path / "base"
    train(parse_train_args(tiny_args(toy, base, learning_steps=10)))
    with pytest.raises(UserError, match="does not exist"):
        train(_bad(tmp_path / "a", toy, resume_checkpoint=tmp_path / "model000001.pt", learning_steps=30))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("training_args.json", "vocab.txt"):
        shutil.copy2(base / name, broken / name)
    (broken / "model000010.pt").write_bytes((base / "model000010.pt").read_bytes()[:500])
    with pytest.raises(UserError, match="cannot read checkpoint"):
        train(_bad(tmp_path / "b", toy, resume_checkpoint=broken / "model000010.pt", learning_steps=30))
    with pytest.raises(UserError, match="`hidden_dim` gives 8 but .* says 16"):
        train(_bad(tmp_path / "c", toy, resume_checkpoint=base / "model000010.pt", learning_steps=30, hidden_dim=8))
    with pytest.raises(UserError, match="`seq_len` gives 20 but .* says 16"):
        train(_bad(tmp_path / "d", toy, resume_checkpoint=base / "model000010.pt", learning_steps=30, seq_len=20))
    other_vocab = tmp_path / "othervocab"
    other_vocab.mkdir()
    for name in ("training_args.json", "model000010.pt"):
        shutil.copy2(base / name, other_vocab / name)
    (other_vocab / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    with pytest.raises(UserError, match="vocabulary size"):
        train(_bad(tmp_path / "e", toy, resume_checkpoint=other_vocab / "model000010.pt", learning_steps=30))
    with pytest.raises(UserError, match="nothing to train"):
        train(_bad(tmp_path / "f", toy, resume_checkpoint=base / "model000010.pt", learning_steps=10))


def test_command_line_errors_are_one_line_without_traceback(toy, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    write_pairs(bad / "valid.jsonl", [("a", "b")])
    (bad / "train.jsonl").write_text('{"src": "a", "trg": "b"}\nnot json\n')
    assert_clean_error(run_script("run_train.py", tiny_args(bad, tmp_path / "ck")), "train.jsonl:2")
    assert_clean_error(run_script("run_train.py", tiny_args(toy, tmp_path / "ck", noise_schedule="nope")),
                       "noise_schedule")
    assert_clean_error(run_script("run_train.py", ["--no_such_flag", "1"]), "unrecognized arguments")
