"""Decoding end to end: files written, seeds, batch- and process-invariance, DiffuSeq folders, bad input."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from helpers import assert_clean_error, make_toy_dataset, run_script, tiny_args

from diffuseq.config import parse_train_args
from diffuseq.training.setup import train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    data = make_toy_dataset(root / "toy", n_test=13)
    folder = root / "ck"
    train(parse_train_args(tiny_args(data, folder, learning_steps=30, save_interval=30, lr=3e-3)))
    return folder


def _decode(model_path, out_dir, *extra, launcher=None):
    args = ["--model_path", str(model_path), "--out_dir", str(out_dir), "--split", "test", *map(str, extra)]
    return run_script("sample_seq2seq.py", args, launcher=launcher)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _samples(out_dir, model_path):
    """DiffuSeq's layout: <out_dir>/<checkpoint folder>/<checkpoint file>.samples/."""
    return out_dir / model_path.parent.name / f"{model_path.name}.samples"


def _name(seed, spacing, split="test", step=100, eta="-1.0", extra=""):
    """Bridge-Gap's file name of a decode."""
    return (f"seed{seed}_step{step}_eta{eta}_respace_{spacing}_{split}_topp0.0_tau1.0_topl0.0_topk0_noisedl0.0_scend"
            f"_clamp_skip-1_pd_{extra}.json")


def test_decode_writes_one_file_per_seed_and_settings(trained, tmp_path):
    model = trained / "ema_0.9999_000030.pt"
    result = _decode(model, tmp_path / "out", "--step", 100, "--decode_respacing", "adp_10",
                     "--seeds", "10,11", "--batch_size", 4)
    assert result.returncode == 0, result.stderr
    out = _samples(tmp_path / "out", model)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ck"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["decode" + _name(10, "adp_10")[len("seed10"):-len(".json")] + ".meta.json",
                     _name(10, "adp_10"), _name(11, "adp_10")]
    lines = _lines(out / files[1])
    assert len(lines) == 13
    assert all(set(line) == {"recover", "reference", "source"} for line in lines)
    test_pairs = [json.loads(x) for x in (trained.parent / "toy" / "test.jsonl").read_text().splitlines()]
    # references and sources are the test pairs, in input order
    assert [line["reference"] for line in lines] == [f"[CLS] {p['trg']} [SEP]" for p in test_pairs]
    assert [line["source"] for line in lines] == [f"[CLS] {p['src']} [SEP] [SEP]" for p in test_pairs]
    assert _lines(out / files[1]) != _lines(out / files[2])  # the seeds differ
    meta = json.loads((out / files[0]).read_text())
    assert meta["denoising_steps"] == 10 and meta["settings"]["sampler"]["respacing"] == "adp_10"
    assert set(meta["seeds"]) == {"10", "11"} and meta["seeds"]["10"]["wall_seconds"] > 0


def test_output_does_not_depend_on_batch_size_or_process_count(trained, tmp_path):
    model = trained / "model000030.pt"
    common = ("--step", 100, "--decode_respacing", "20", "--seed2", 7)
    assert _decode(model, tmp_path / "b16", *common, "--batch_size", 16).returncode == 0
    assert _decode(model, tmp_path / "b3", *common, "--batch_size", 3).returncode == 0
    result = _decode(model, tmp_path / "ddp", *common, "--batch_size", 2, launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 process(es)" in result.stderr
    name = _name(7, "20")
    reference = (_samples(tmp_path / "b16", model) / name).read_text()
    assert (_samples(tmp_path / "b3", model) / name).read_text() == reference
    assert (_samples(tmp_path / "ddp", model) / name).read_text() == reference


def test_ddim_all_steps_and_diffuseq_decode_flags(trained, tmp_path):
    model = trained / "model000030.pt"
    result = _decode(model, tmp_path / "ddim", "--eta", 0, "--decode_respacing", "ddim10", "--clamp_step", 5,
                     "--max_examples", 5, "--clip_denoised", "True", "--top_p", 0.5)
    assert result.returncode == 0, result.stderr
    [name] = [p.name for p in _samples(tmp_path / "ddim", model).glob("seed*.json")]
    assert name == _name(105, "ddim10", eta="0.0", extra="_clampstep5_clip_first5").replace("topp0.0", "topp0.5")
    assert len(_lines(_samples(tmp_path / "ddim", model) / name)) == 5
    result = _decode(model, tmp_path / "full", "--max_examples", 3, "--clamp_step", 1000)
    assert result.returncode == 0, result.stderr
    assert "with 100 denoising steps" in result.stderr
    # DiffuSeq's --step S < T: DDIM with S steps (ending at t = 0 here), said in the log
    result = _decode(model, tmp_path / "stride", "--max_examples", 3, "--step", 20)
    assert result.returncode == 0, result.stderr
    assert "DDIM (eta 0) over 20 evenly spaced steps ending at t = 0" in result.stderr
    assert "with 20 denoising steps" in result.stderr
    meta = json.loads(next(_samples(tmp_path / "stride", model).glob("*.meta.json")).read_text())
    assert meta["settings"]["sampler"]["eta"] == 0.0 and meta["settings"]["sampler"]["respacing"] == "20"


def test_diffuseq_defaults_and_bridge_gap_flags(trained, tmp_path):
    model = trained / "model000030.pt"
    # DiffuSeq's defaults: --seed2 105, --split valid; Bridge-Gap's rounding flags at their defaults
    args = ["--model_path", str(model), "--out_dir", str(tmp_path / "out"), "--step", "100", "--decode_respacing",
            "adp_4", "--top_k", "0", "--tau", "1.0", "--clamp_skip", "-1", "--p_d", "", "--scale_end", ""]
    result = run_script("sample_seq2seq.py", args)
    assert result.returncode == 0, result.stderr
    assert (_samples(tmp_path / "out", model) / _name(105, "adp_4", split="valid")).is_file()
    for flag, value in (("--top_k", "3"), ("--tau", "0.5"), ("--p_d", "last_5"), ("--clamp_skip", "1")):
        result = run_script("sample_seq2seq.py", args[:-10] + [flag, value])
        assert_clean_error(result, f"{flag} ", "not supported", "Bridge-Gap")


def test_a_diffuseq_folder_decodes(trained, tmp_path):
    """Upstream DiffuSeq folders hold only EMA weights, its training_args.json and the tokenizer files."""
    folder = tmp_path / "diffuseq_qqp"
    folder.mkdir()
    shutil.copy2(trained / "ema_0.9999_000030.pt", folder)
    shutil.copy2(trained / "vocab.txt", folder)
    ours = json.loads((trained / "training_args.json").read_text())
    upstream_keys = ("lr", "batch_size", "microbatch", "learning_steps", "ema_rate", "schedule_sampler",
                     "diffusion_steps", "noise_schedule", "timestep_respacing", "vocab", "use_plm_init",
                     "vocab_size", "config_name", "seq_len", "hidden_t_dim", "hidden_dim", "dropout", "use_fp16",
                     "seed", "learn_sigma", "predict_xstart", "rescale_timesteps", "sigma_small", "emb_scale_factor",
                     "dataset", "data_dir", "checkpoint_path", "notes")
    upstream = {k: ours[k] for k in upstream_keys}
    config = {"num_hidden_layers": ours["num_layers"], "hidden_size": ours["hidden_size"],
              "num_attention_heads": ours["num_heads"], "intermediate_size": ours["intermediate_size"]}
    (folder / "config.json").write_text(json.dumps(config))
    upstream["config_name"] = str(folder / "config.json")
    (folder / "training_args.json").write_text(json.dumps(upstream))
    state = torch.load(folder / "ema_0.9999_000030.pt", weights_only=True)
    assert "position_ids" in state
    flags = ("--step", 100, "--decode_respacing", "adp_4", "--max_examples", 4)
    result = _decode(folder / "ema_0.9999_000030.pt", tmp_path / "out", *flags)
    assert result.returncode == 0, result.stderr
    # the same weights decoded from this project's folder: the same file, the same text
    assert _decode(trained / "ema_0.9999_000030.pt", tmp_path / "ours", *flags).returncode == 0
    [theirs] = _samples(tmp_path / "out", folder / "ema_0.9999_000030.pt").glob("seed*.json")
    [ours] = _samples(tmp_path / "ours", trained / "ema_0.9999_000030.pt").glob("seed*.json")
    assert theirs.name == ours.name == _name(105, "adp_4", extra="_first4")
    assert len(_lines(theirs)) == 4 and theirs.read_text() == ours.read_text()


@pytest.mark.parametrize("flags,message", [
    (("--decode_respacing", "adp_0"), "adp_N needs N >= 3"),
    (("--decode_respacing", "adp_x"), "is not a step count"),
    (("--decode_respacing", "500"), "more than the model's T = 100"),
    (("--decode_respacing", "ddim60"), "no integer stride"),
    (("--step", "50", "--decode_respacing", "adp_10"), "conflicts"),
    (("--split", "dev"), "invalid choice"),
    (("--clamp_step", "-1"), "--clamp_step must be >= 0"),
    (("--eta", "5"), "--eta must be -1"),
    (("--top_p", "-1"), "--top_p must be a finite number >= 0"),
    (("--max_examples", "0"), "--max_examples must be positive"),
    (("--decode_respacing", "[0,5]"), "positive step counts"),
    (("--eta", "-0.5"), "--eta must be -1 (DDPM) or in [0, 1]"),
    (("--eta", "nan"), "--eta must be -1 (DDPM) or in [0, 1]"),
    (("--sampler", "dpm++", "--eta", "0"), "--sampler dpm++ takes no --eta"),
    (("--sampler", "ddpm", "--eta", "0.5"), "--sampler ddpm takes no --eta"),
    (("--seeds", ","), "--seeds must be comma-separated integers"),
    (("--seeds", "1,,2"), "--seeds must be comma-separated integers"),
    (("--seeds", "1,1"), "--seeds names a seed twice"),
    (("--seeds=-1",), "decoding seeds must be in 0..4294967295"),
    (("--seed2=-3",), "decoding seeds must be in 0..4294967295"),
])
def test_bad_decode_flags(trained, tmp_path, flags, message):
    assert_clean_error(_decode(trained / "model000030.pt", tmp_path / "out", *flags), message)
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints(trained, tmp_path):
    assert_clean_error(_decode(tmp_path / "model000001.pt", tmp_path / "o"), "does not exist")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy2(trained / "model000030.pt", lonely)
    assert_clean_error(_decode(lonely / "model000030.pt", tmp_path / "o"), "training_args.json")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(trained, mismatched)
    words = (trained / "vocab.txt").read_text().splitlines()
    (mismatched / "vocab.txt").write_text("\n".join(words + ["extra1", "extra2"]) + "\n")
    args = json.loads((mismatched / "training_args.json").read_text())
    args["vocab_size"] += 2
    (mismatched / "training_args.json").write_text(json.dumps(args))
    assert_clean_error(_decode(mismatched / "model000030.pt", tmp_path / "o"), "does not match the checkpoint")
