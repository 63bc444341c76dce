"""Runs that cannot damage each other: validation before any write, settings that match their checkpoint,
decode outputs that say which model made them, and one-line errors for bad input."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, assert_clean_error, make_toy_dataset, run_script, tiny_args, write_pairs

from diffuseq.commands import command_line_wording
from diffuseq.config import parse_train_args
from diffuseq.errors import UserError
from diffuseq.model import checkpoints as ckpt
from diffuseq.training.setup import train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_test=6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy):
    folder = tmp_path_factory.mktemp("runs") / "run"
    train(parse_train_args(tiny_args(toy, folder, learning_steps=10, save_interval=10, diff_steps=50)))
    return folder


def _snapshot(folder):
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _flags_without(flags, *names):
    return [item for key, value in zip(flags[::2], flags[1::2]) if key not in names for item in (key, value)]


@pytest.mark.parametrize("overrides,message", [
    ({"diff_steps": 2000, "noise_schedule": "linear", "lr": -1}, "--lr must be a finite non-negative number"),
    ({"lr": float("inf")}, "--lr must be a finite non-negative number"),
    ({"diff_steps": 2000}, "--diffusion_steps gives 2000 but .*training_args.json says 50"),
    ({"noise_schedule": "linear"}, "--noise_schedule gives 'linear' but .* says 'sqrt'"),
    ({"seq_len": 20}, "--seq_len gives 20 but .* says 16"),
    ({"num_layers": 3}, "the encoder size flags give 3 layers"),
    ({"vocab": "bert"}, "--vocab gives 'bert' but .* says 'train'"),
    ({"vocab_size": 50}, "--vocab_size 50 but .* has a vocabulary of"),
    ({"lr": 0.5}, "--lr gives 0.5 but .* says 0.001"),
    ({"learning_steps": 5}, "not below --learning_steps 5: nothing to train"),
    ({"simi_step": 5000, "simi_penalty": "l2"}, "--simi_step must be in 1..49"),
])
def test_a_failing_command_leaves_a_copied_run_byte_identical(trained, toy, tmp_path, overrides, message):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy, copy_function=shutil.copy2)
    before = _snapshot(copy)
    flags = {"learning_steps": 20, "save_interval": 10, "diff_steps": 50, **overrides}
    with pytest.raises(UserError) as err:
        train(parse_train_args(tiny_args(toy, copy, **flags)))
    assert re.search(message, command_line_wording(str(err.value))), err.value  # as the command line says it
    assert _snapshot(copy) == before


def test_continuing_in_the_folder_takes_its_settings(trained, toy, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    # only the folder and a longer schedule: every other setting comes from training_args.json
    trainer = train(parse_train_args(["--checkpoint_path", str(copy), "--learning_steps", "12"]))
    assert trainer.step == 12 and trainer.diffusion.num_timesteps == 50
    args = json.loads((copy / "training_args.json").read_text())
    assert args["learning_steps"] == 12 and args["diffusion_steps"] == 50 and args["data_dir"] == str(toy.resolve())
    # the intervals are the run's (10 / 5 / 10), not the defaults (50000 / 20 / 1000)
    assert (args["save_interval"], args["log_interval"], args["eval_interval"]) == (10, 5, 10)
    trainer = train(parse_train_args(["--checkpoint_path", str(copy), "--learning_steps", "14", "--save_interval",
                                      "1"]))
    assert json.loads((copy / "training_args.json").read_text())["save_interval"] == 1
    assert ckpt.complete_steps(copy)[:2] == [14, 13]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def test_a_truncated_checkpoint_never_restarts_a_run_from_scratch(trained, toy, tmp_path):
    """A crash mid-save or a damaged file: ``auto`` and the plain restart refuse a folder with no complete
    checkpoint (nothing written), and skip an incomplete newest one with a warning."""
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    _truncate(copy / "model000010.pt")
    before = _snapshot(copy)
    for flags in (["--resume_checkpoint", "auto", "--learning_steps", "20"], ["--learning_steps", "20"],
                  tiny_args(toy, copy, learning_steps=20, save_interval=10, diff_steps=50)):
        with pytest.raises(UserError, match="holds checkpoint files \\(newest: step 10\\) but no complete checkpoint"):
            train(parse_train_args(["--checkpoint_path", str(copy), *flags]))
        assert _snapshot(copy) == before
    two = tmp_path / "two"
    constant = {"save_interval": 2, "diff_steps": 50, "lr_schedule": "constant"}  # the same lr whatever the length
    train(parse_train_args(tiny_args(toy, two, learning_steps=4, **constant)))
    _truncate(two / "ema_0.9999_000004.pt")
    trainer = train(parse_train_args(["--checkpoint_path", str(two), "--resume_checkpoint", "auto",
                                      "--learning_steps", "5"]))
    assert trainer.step == 5 and ckpt.complete_steps(two) == [5, 4, 2]
    reference = tmp_path / "reference"  # the same run never interrupted: step 5 is bitwise the same
    train(parse_train_args(tiny_args(toy, reference, learning_steps=5, **constant)))
    assert (two / "model000005.pt").read_bytes() == (reference / "model000005.pt").read_bytes()


@pytest.mark.parametrize("overrides,message", [
    ({"gradient_clipping": "nan"}, "--gradient_clipping must be a finite number"),
    ({"ema_rate": "0.9,,0.99"}, "--ema_rate must be comma-separated numbers in [0, 1)"),
    ({"ema_rate": "0.9,0.9"}, "--ema_rate names a rate twice"),
    ({"seq_len": 2}, "--seq_len must be in 7..512"),
    ({"seq_len": 1000}, "--seq_len must be in 7..512"),
    ({"simi_penalty": "l2_noise", "simi_noise": -1}, "--simi_noise must be a finite number > 0"),
    ({"weight_decay": "inf"}, "--weight_decay must be a finite number >= 0"),
    ({"simi_penalty": "cosine", "simi_lambda": "nan"}, "--simi_lambda must be a finite number"),
])
def test_bad_training_values_are_refused_when_parsed(toy, tmp_path, overrides, message):
    with pytest.raises(UserError) as err:
        parse_train_args(tiny_args(toy, tmp_path / "run", **overrides))
    assert message in command_line_wording(str(err.value)), err.value  # as the command line says it


def test_bad_training_data_and_vocabularies_are_one_line_errors(toy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_pairs(empty / "train.jsonl", [("", "")] * 4)
    write_pairs(empty / "valid.jsonl", [("a", "b")])
    assert_clean_error(run_script("run_train.py", tiny_args(empty, tmp_path / "o1")),
                       'train.jsonl: every "src" and "trg" is empty')
    (tmp_path / "words.txt").write_text("\n\n")
    assert_clean_error(run_script("run_train.py", tiny_args(toy, tmp_path / "o2", vocab=tmp_path / "words.txt")),
                       "holds no words")
    no_weights = tmp_path / "bert_config_only"  # a BERT config.json without the weights
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "hidden_size": 32,
                                                        "num_attention_heads": 2, "intermediate_size": 64}))
    result = run_script("run_train.py", tiny_args(toy, tmp_path / "o3", use_plm_init="bert", config_name=no_weights))
    assert_clean_error(result, "--use_plm_init bert needs BERT weights")
    assert len(result.stderr.strip().splitlines()) == 1  # checked before the vocabulary is learned
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert_config_only", "empty", "words.txt"]


def test_post_training_takes_the_architecture_from_its_checkpoint(trained, toy, tmp_path):
    post = tmp_path / "post"
    flags = ["--data_dir", str(toy), "--checkpoint_path", str(post), "--resume_checkpoint",
             str(trained / "ema_0.9999_000010.pt"), "--learning_steps", "13", "--simi_penalty", "l2_noise_random",
             "--bsz", "8"]
    trainer = train(parse_train_args(flags))
    args = json.loads((post / "training_args.json").read_text())
    assert (args["diffusion_steps"], args["seq_len"], args["num_layers"], args["hidden_size"]) == (50, 16, 2, 32)
    assert trainer.step == 13 and args["lr_schedule"] == "constant"
    assert (post / "vocab.txt").read_bytes() == (trained / "vocab.txt").read_bytes()
    with pytest.raises(UserError, match="`diffusion_steps` gives 2000 but .* says 50 .*post-training starts from"):
        train(parse_train_args(flags[:3] + [str(tmp_path / "other")] + flags[4:] + ["--diff_steps", "2000"]))
    assert not (tmp_path / "other").exists()


def test_post_training_from_a_folder_that_moved(trained, toy, tmp_path):
    moved = tmp_path / "moved_again"
    shutil.copytree(trained, moved)
    args = json.loads((moved / "training_args.json").read_text())
    args["config_name"] = str(tmp_path / "where_it_was")  # it names the folder before the move
    (moved / "training_args.json").write_text(json.dumps(args))
    post = tmp_path / "post"
    trainer = train(parse_train_args(["--data_dir", str(toy), "--checkpoint_path", str(post), "--bsz", "8",
                                      "--resume_checkpoint", str(tmp_path / "moved_again" / "model000010.pt"),
                                      "--learning_steps", "11"]))
    assert trainer.step == 11 and json.loads((post / "training_args.json").read_text())["num_layers"] == 2


def test_the_same_post_training_command_continues_where_it_stopped(trained, toy, tmp_path):
    post = tmp_path / "post"
    flags = ["--data_dir", str(toy), "--checkpoint_path", str(post), "--resume_checkpoint",
             str(trained / "model000010.pt"), "--save_interval", "2", "--simi_penalty", "l2", "--bsz", "8"]
    train(parse_train_args(flags + ["--learning_steps", "12"]))
    before = (post / "model000012.pt").read_bytes()
    trainer = train(parse_train_args(flags + ["--learning_steps", "14"]))  # the command again, a longer schedule
    assert trainer.step == 14 and (post / "model000012.pt").read_bytes() == before
    opt = torch.load(post / "opt000014.pt", weights_only=True)
    assert int(next(iter(opt["state"].values()))["step"]) == 4  # one optimizer across both starts


def test_post_train_script_keeps_the_checkpoints_t(trained, toy, tmp_path):
    """scripts/post_train.sh names no T or schedule: a T = 50 model post-trains as T = 50; POST_STEPS counts the
    post-training steps; with no GPU it runs one process (as train.sh); STEPS (ambiguous) is refused."""
    env = {**os.environ, "POST_STEPS": "3", "BSZ": "8", "OUT": str(tmp_path / "post"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("NPROC", None)
    command = ["bash", str(ROOT / "scripts" / "post_train.sh"), os.path.relpath(toy, tmp_path),
               os.path.relpath(trained / "ema_0.9999_000010.pt", tmp_path), "--microbatch", "8"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.distributed" not in result.stderr  # one process: plain python
    assert "post-training from step 10 to step 13" in result.stderr
    assert (tmp_path / "post" / "model000013.pt").is_file()
    args = json.loads((tmp_path / "post" / "training_args.json").read_text())
    assert args["diffusion_steps"] == 50 and args["simi_penalty"] == "l2_noise_random"
    refused = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**env, "STEPS": "11"})
    assert refused.returncode == 2 and "POST_STEPS" in refused.stderr


def test_training_errors_are_one_line_before_any_write(toy, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    write_pairs(bad / "valid.jsonl", [("a b", "b a")])
    (bad / "train.jsonl").write_bytes(b'{"src": "a b", "trg": "b a"}\n{"src": "caf\xe9", "trg": "x"}\n')
    cases = [
        ([], "give --data_dir"),
        (tiny_args(bad, tmp_path / "o1"), "train.jsonl:2: not UTF-8 text (byte 0xe9"),
        (tiny_args(toy, tmp_path / "o2", lr=-1), "--lr must be a finite non-negative number"),
        (tiny_args(toy, tmp_path / "o2b", lr="inf"), "--lr must be a finite non-negative number"),
        (tiny_args(toy, tmp_path / "o3", microbatch=0), "--microbatch must be positive"),
        (tiny_args(toy, tmp_path / "o4", simi_penalty="l2", simi_step=500), "--simi_step must be in 1..99"),
        (tiny_args(toy, tmp_path / "o5", simi_penalty="kl", simi_lambda=-1), "kl penalty needs a weight >= 0"),
        (tiny_args(toy, tmp_path / "o6", resume_checkpoint=tmp_path / "model000001.pt"), "does not exist"),
    ]
    for flags, message in cases:
        assert_clean_error(run_script("run_train.py", flags), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # nothing created
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_clean_error(run_script("run_train.py", tiny_args(toy, blocker)), "is a file, not a folder")


def test_ctrl_c_saves_and_exits_130(toy, tmp_path):
    folder = tmp_path / "int"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_train.py"),
                             *tiny_args(toy, folder, learning_steps=100000, save_interval=100000, eval_interval=0)],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not (folder / "training_args.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert len(ckpt.complete_steps(folder)) == 1


def test_files_get_the_mode_of_the_umask(trained):
    for name in ("model000010.pt", "training_args.json", "vocab.txt", "config.json"):
        assert stat.S_IMODE((trained / name).stat().st_mode) == 0o666 & ~_umask(), name


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------- decoding


def _decode(model, out, *flags):
    return run_script("sample_seq2seq.py", ["--model_path", str(model), "--out_dir", str(out), "--split", "test",
                                            "--step", "50", *map(str, flags)])


def test_decodes_of_two_models_never_mix(trained, toy, tmp_path):
    other_root = tmp_path / "elsewhere"
    other = other_root / trained.name  # another model in a folder of the same name
    train(parse_train_args(tiny_args(toy, other, learning_steps=10, save_interval=10, diff_steps=50, seed=9)))
    out = tmp_path / "out"
    assert _decode(trained / "model000010.pt", out, "--decode_respacing", "adp_4").returncode == 0
    samples = out / trained.name / "model000010.pt.samples"
    before = _snapshot(samples)
    assert_clean_error(_decode(other / "model000010.pt", out, "--decode_respacing", "adp_4"),
                       "describes decodes of another checkpoint")
    assert _snapshot(samples) == before
    meta = json.loads(next(samples.glob("*.meta.json")).read_text())
    assert meta["checkpoint"]["path"] == str((trained / "model000010.pt").resolve())
    assert meta["checkpoint"]["sha256"] == ckpt.file_identity(trained / "model000010.pt")["sha256"]
    assert meta["complete"] is True and meta["settings"]["split"] == "test"


def test_a_running_decode_of_the_same_settings_blocks_a_second(trained, tmp_path):
    out = tmp_path / "out"
    samples = out / trained.name / "model000010.pt.samples"
    samples.mkdir(parents=True)
    name = ("step50_eta-1.0_respace_adp_4_test_topp0.0_tau1.0_topl0.0_topk0_noisedl0.0_scend_clamp_skip-1_pd_")
    with open(samples / f".decode_{name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert_clean_error(_decode(trained / "model000010.pt", out, "--decode_respacing", "adp_4"),
                           "another decode with the same settings")
    assert not list(samples.glob("seed*.json"))


def test_eval_refuses_mixed_or_changed_outputs(trained, tmp_path):
    out = tmp_path / "out"
    for spacing in ("adp_4", "10"):
        assert _decode(trained / "model000010.pt", out, "--decode_respacing", spacing, "--seeds", "1,2").returncode == 0
    samples = out / trained.name / "model000010.pt.samples"
    evaluate = ["--folder", str(samples), "--no_corpus_bleu", "--no_progress"]
    assert_clean_error(run_script("scripts/eval_seq2seq.py", evaluate), "come from 2 different decodes")
    assert run_script("scripts/eval_seq2seq.py", evaluate + ["--pattern", "*adp_4*"]).returncode == 0
    assert run_script("scripts/eval_seq2seq.py", evaluate + ["--allow_mixed"]).returncode == 0
    # a file of an interrupted or foreign run beside them: refused
    stray = samples / "seed3_step50_eta-1.0_respace_adp_4_extra.json"
    shutil.copy(next(samples.glob("seed1_*adp_4*.json")), stray)
    assert_clean_error(run_script("scripts/eval_seq2seq.py", evaluate + ["--pattern", "*adp_4*"]),
                       "files no decode describes")
    stray.unlink()
    # --json / --mbr_out naming one of the decode's own files: refused, the file kept
    for target in (next(samples.glob("seed1_*adp_4*.json")), next(samples.glob("*.meta.json"))):
        before = target.read_bytes()
        for flag in (["--json", str(target)], ["--mbr", "--mbr_out", str(target)]):
            result = run_script("scripts/eval_seq2seq.py", evaluate + ["--pattern", "*adp_4*", *flag])
            assert_clean_error(result, "is one of the decode's own files")
        assert target.read_bytes() == before
    changed = next(samples.glob("seed2_*adp_4*.json"))
    changed.write_text(changed.read_text().replace("[CLS]", "[CLS] x", 1))
    assert_clean_error(run_script("scripts/eval_seq2seq.py", evaluate + ["--pattern", "*adp_4*"]),
                       "is not the file its decode wrote")


def test_eval_refuses_a_damaged_meta_and_bad_flags_in_one_line(trained, tmp_path):
    out = tmp_path / "out"
    assert _decode(trained / "model000010.pt", out, "--decode_respacing", "adp_4", "--seeds", "1,2").returncode == 0
    samples = out / trained.name / "model000010.pt.samples"
    evaluate = ["--folder", str(samples), "--no_corpus_bleu", "--no_progress"]
    for flags, message in ((["--workers", "0"], "--workers must be at least 1"),
                           (["--bogus"], "unrecognized arguments: --bogus")):
        assert_clean_error(run_script("scripts/eval_seq2seq.py", evaluate + flags), message)
    meta = next(samples.glob("*.meta.json"))
    text = meta.read_text()
    meta.write_text(text[:40])
    assert_clean_error(run_script("scripts/eval_seq2seq.py", evaluate), "is not a readable decode meta file")
    meta.unlink()  # no meta at all (DiffuSeq's outputs): scored, with a note that nothing was checked
    result = run_script("scripts/eval_seq2seq.py", evaluate)
    assert result.returncode == 0 and "note: no decode meta file describes these files" in result.stdout


def test_ddim_without_eta_is_named_as_ddim_eta_0_not_as_ddpm(trained, tmp_path):
    out = tmp_path / "out"
    assert _decode(trained / "model000010.pt", out, "--decode_respacing", "adp_4", "--sampler", "ddim",
                   "--seed2", "1").returncode == 0
    assert _decode(trained / "model000010.pt", out, "--decode_respacing", "adp_4", "--seed2", "1").returncode == 0
    assert _decode(trained / "model000010.pt", out, "--decode_respacing", "adp_4", "--eta", "0",
                   "--seed2", "1").returncode == 0
    names = sorted(p.name for p in (out / trained.name / "model000010.pt.samples").glob("seed*.json"))
    assert [name.split("_respace")[0] for name in names] == ["seed1_step50_eta-1.0", "seed1_step50_eta0.0"]


def test_decode_a_second_time_keeps_earlier_seeds_of_the_same_decode(trained, tmp_path):
    out = tmp_path / "out"
    assert _decode(trained / "model000010.pt", out, "--decode_respacing", "adp_4", "--seed2", 1).returncode == 0
    assert _decode(trained / "model000010.pt", out, "--decode_respacing", "adp_4", "--seed2", 2).returncode == 0
    meta = json.loads(next((out / trained.name / "model000010.pt.samples").glob("*.meta.json")).read_text())
    assert sorted(meta["seeds"]) == ["1", "2"]


@pytest.mark.parametrize("case", ["folder", "text_file", "out_is_file", "eval_json_folder", "relative_data"])
def test_decode_and_eval_bad_paths_are_one_line(trained, toy, tmp_path, case):
    if case == "folder":
        assert_clean_error(_decode(trained, tmp_path / "o"), "is a folder: give a checkpoint file in it, e.g.")
    elif case == "text_file":
        fake = tmp_path / "run" / "ema_0.9999_000010.pt"
        shutil.copytree(trained, fake.parent)
        fake.write_text("hello, this is not a checkpoint at all " * 20)
        result = _decode(fake, tmp_path / "o")
        assert_clean_error(result, "is not a PyTorch checkpoint file")
    elif case == "out_is_file":
        (tmp_path / "o").write_text("x")
        assert_clean_error(_decode(trained / "model000010.pt", tmp_path / "o"), "is a file, not a folder")
    elif case == "eval_json_folder":
        result = run_script("scripts/eval_seq2seq.py", ["--folder", str(tmp_path), "--json", str(tmp_path)])
        assert_clean_error(result, "--json", "is a folder")
        assert not list(tmp_path.glob("*.tmp"))
    else:
        copy = tmp_path / "rel"
        shutil.copytree(trained, copy)
        args = json.loads((copy / "training_args.json").read_text())
        args["data_dir"] = "datasets/toy"  # what an older run wrote, relative to where it ran
        (copy / "training_args.json").write_text(json.dumps(args))
        assert_clean_error(_decode(copy / "model000010.pt", tmp_path / "o"), "relative path", "--data_dir")


# ------------------------------------------------------------------------------------------- scripts


def _load_reproduce():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_script"] = module
    spec.loader.exec_module(module)
    return module


def test_reproduce_cells_are_keyed_on_the_checkpoint_and_settings(trained, tmp_path):
    import argparse

    reproduce = _load_reproduce()
    cell = reproduce.Cell("base", "adp", 4)
    args = argparse.Namespace(seed_list=[1], split="test", max_examples=3, dtype="fp32")
    identity = ckpt.file_identity(trained / "model000010.pt")
    key = reproduce.cell_key(cell, identity, args, str(trained))
    assert reproduce.cell_key(cell, identity, argparse.Namespace(seed_list=[1], split="test", max_examples=4, dtype="fp32"),
                              str(trained)) != key
    other = reproduce.cell_key(cell, ckpt.file_identity(trained / "ema_0.9999_000010.pt"), args, str(trained))
    assert other != key


def test_reproduce_wrapper_keeps_out_of_docs_and_parses_flags(trained, tmp_path):
    env = {**os.environ, "STEPS": "4", "SEEDS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    model = trained / "model000010.pt"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce.sh"), str(model), str(model),
                             "--max_examples", "2", "--batch_size", "2"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "reproduce_outputs" / "results.md").is_file()
    assert not (ROOT / "docs" / "reproduce" / "decode").exists()
