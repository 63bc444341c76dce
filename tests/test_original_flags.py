"""Flags of DiffuSeq's and Bridge-Gap's commands: each works as there, or is refused with the reason."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import WORDS, make_toy_dataset, tiny_args

from diffuseq.config import TrainConfig, parse_train_args
from diffuseq.errors import UserError
from diffuseq.model import checkpoints as ckpt
from diffuseq.training.setup import train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


def test_diffuseq_spellings_none_and_app(toy, tmp_path):
    cfg = parse_train_args(tiny_args(toy, tmp_path / "a", resume_checkpoint="none") +
                           ["--app", "--seed 7 --notes 'two words'", "--diffusion_steps", "50", "--batch_size", "4"])
    assert (cfg.resume_checkpoint, cfg.seed, cfg.notes, cfg.diffusion_steps, cfg.batch_size) == ("", 7, "two words",
                                                                                                  50, 4)
    cfg = parse_train_args(tiny_args(toy, tmp_path / "a") + ["--learn_sigma", "False", "--predict_xstart", "True",
                                                             "--rescale_timesteps", "true", "--use_kl", "False"])
    assert cfg.predict_xstart and not cfg.learn_sigma


def test_use_fp16_reads_as_precision_fp16_in_a_frozen_config(toy, tmp_path):
    cfg = parse_train_args(tiny_args(toy, tmp_path / "a") + ["--use_fp16"])
    assert (cfg.use_fp16, cfg.precision) == (True, "fp16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.precision = "fp32"
    with pytest.raises(UserError, match="`use_fp16` .fp16. contradicts `precision` bf16"):
        parse_train_args(tiny_args(toy, tmp_path / "a", precision="bf16") + ["--use_fp16"])


@pytest.mark.parametrize("flag,value,reason", [
    ("--learn_sigma", "True", "predicts x_0 only"),
    ("--predict_xstart", "False", "predicts x_0"),
    ("--timestep_respacing", "ddim50", "respace when decoding"),
    ("--near_step", "5", "near/far penalty"),
    ("--far_lambda", "0.5", "near/far penalty"),
    ("--fp16_scale_growth", "0.01", "GradScaler"),
    ("--simi_lambda", "2", "needs a weight <= 0"),
])
def test_unsupported_original_settings_are_refused_with_the_reason(toy, tmp_path, flag, value, reason):
    args = tiny_args(toy, tmp_path / "x") + [flag, value]
    if flag == "--simi_lambda":
        args += ["--simi_penalty", "l2_noise_random"]
    with pytest.raises(UserError, match=reason):
        parse_train_args(args)


def test_lr_schedule_defaults_follow_the_original_code(toy, tmp_path):
    assert parse_train_args(tiny_args(toy, tmp_path)).resolved_lr_schedule() == "linear"  # DiffuSeq
    post = parse_train_args(tiny_args(toy, tmp_path, simi_penalty="l2_noise_random"))
    assert post.resolved_lr_schedule() == "constant"  # Bridge-Gap's post-training
    assert parse_train_args(tiny_args(toy, tmp_path, simi_penalty="l2", lr_schedule="linear")) \
        .resolved_lr_schedule() == "linear"


def test_post_training_keeps_the_learning_rate_constant_and_starts_a_fresh_optimizer(toy, tmp_path):
    base = tmp_path / "base"
    train(parse_train_args(tiny_args(toy, base, learning_steps=10, save_interval=10)))
    post = tmp_path / "post"
    train(parse_train_args(tiny_args(toy, post, learning_steps=14, save_interval=14, lr=5e-4, log_interval=1,
                                     resume_checkpoint=base / "model000010.pt", simi_penalty="l2_noise_random")))
    opt = torch.load(post / "opt000014.pt", weights_only=True)
    assert [g["lr"] for g in opt["param_groups"]] == [5e-4]
    # a fresh AdamW: its step count is the 4 steps of this run, not 14
    assert int(next(iter(opt["state"].values()))["step"]) == 4
    args = json.loads((post / "training_args.json").read_text())
    assert args["lr_schedule"] == "constant" and args["simi_penalty"] == "l2_noise_random"


def test_training_args_keep_diffuseqs_meaning(toy, tmp_path):
    folder = tmp_path / "run"
    train(parse_train_args(tiny_args(toy, folder, learning_steps=2, save_interval=2, vocab="train")))
    args = json.loads((folder / "training_args.json").read_text())
    # a WordPiece vocabulary is DiffuSeq's "bert", read from the folder config_name names
    assert args["vocab"] == "bert" and args["vocab_source"] == "train"
    assert TrainConfig.load(folder / "training_args.json").vocab == "train"  # the flag as given, read back
    assert args["config_name"] == str(folder.resolve())
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == \
        ("bert", 2, 32, args["vocab_size"])
    assert args["data_dir"] == str(toy.resolve())
    assert args["batch_size"] == 16 and args["lr_schedule"] == "linear"


def _fake_bert(folder, vocab_size: int, hidden: int = 32, layers: int = 2) -> dict:
    """A BERT checkpoint in Hugging Face's layout (BertForMaskedLM keys, old gamma/beta names in one place)."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 40, "vocab_size": vocab_size,
        "attention_probs_dropout_prob": 0.1}))
    gen = torch.Generator().manual_seed(0)
    state = {"bert.embeddings.word_embeddings.weight": torch.randn(vocab_size, hidden, generator=gen),
             "bert.embeddings.position_embeddings.weight": torch.randn(40, hidden, generator=gen),
             "bert.embeddings.token_type_embeddings.weight": torch.randn(2, hidden, generator=gen),
             "bert.embeddings.LayerNorm.gamma": torch.rand(hidden, generator=gen),
             "bert.embeddings.LayerNorm.beta": torch.rand(hidden, generator=gen),
             "bert.pooler.dense.weight": torch.randn(hidden, hidden, generator=gen),
             "cls.predictions.bias": torch.randn(vocab_size, generator=gen)}
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            state[p + name + ".weight"] = torch.randn(hidden, hidden, generator=gen) * 0.1
            state[p + name + ".bias"] = torch.randn(hidden, generator=gen) * 0.1
        state[p + "intermediate.dense.weight"] = torch.randn(64, hidden, generator=gen) * 0.1
        state[p + "intermediate.dense.bias"] = torch.randn(64, generator=gen) * 0.1
        state[p + "output.dense.weight"] = torch.randn(hidden, 64, generator=gen) * 0.1
        state[p + "output.dense.bias"] = torch.randn(hidden, generator=gen) * 0.1
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[p + name + ".weight"] = torch.rand(hidden, generator=gen)
            state[p + name + ".bias"] = torch.rand(hidden, generator=gen)
    torch.save(state, folder / "pytorch_model.bin")
    return state


def test_use_plm_init_bert_starts_from_local_bert_weights(toy, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("\n".join(WORDS) + "\n")
    vocab_size = 4 + len(WORDS)
    bert = _fake_bert(tmp_path / "bert", vocab_size)
    folder = tmp_path / "run"
    flags = tiny_args(toy, folder, vocab=words, use_plm_init="bert", config_name=tmp_path / "bert", hidden_dim=32,
                      learning_steps=1, save_interval=1, lr=0.0, dropout=0.0)
    drop = {"--num_layers", "--hidden_size", "--num_heads", "--intermediate_size"}
    flags = [item for key, value in zip(flags[::2], flags[1::2]) if key not in drop for item in (key, value)]
    train(parse_train_args(flags))
    state = ckpt.safe_load(folder / "model000001.pt")  # lr 0: the weights are still BERT's
    assert torch.equal(state["word_embedding.weight"], bert["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(state["lm_head.weight"], state["word_embedding.weight"])
    assert torch.equal(state["position_embeddings.weight"], bert["bert.embeddings.position_embeddings.weight"])
    assert torch.equal(state["LayerNorm.weight"], bert["bert.embeddings.LayerNorm.gamma"])
    for key, value in bert.items():
        if key.startswith("bert.encoder."):
            assert torch.equal(state["input_transformers." + key[len("bert.encoder."):]], value), key
    args = json.loads((folder / "training_args.json").read_text())
    assert args["config_name"] == str(tmp_path / "bert") and args["use_plm_init"] == "bert"


def test_use_plm_init_bert_without_weights_or_with_the_wrong_size_is_a_clear_error(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(UserError, match="needs BERT weights .* in a local folder"):
        train(parse_train_args(tiny_args(toy, tmp_path / "a", use_plm_init="bert",
                                         config_name="bert-base-uncased")))
    _fake_bert(tmp_path / "bert", 4 + len(WORDS))
    words = tmp_path / "words.txt"
    words.write_text("\n".join(WORDS) + "\n")
    with pytest.raises(UserError, match="needs `hidden_dim` equal to BERT's hidden size"):
        train(parse_train_args(tiny_args(toy, tmp_path / "b", vocab=words, use_plm_init="bert",
                                         config_name=tmp_path / "bert", hidden_dim=16)))
