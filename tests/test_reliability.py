"""Reliability: exact resume after kill -9, SIGTERM saves, auto-resume, safe loading, NaN guards, write failures."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, make_toy_dataset, run_script, tiny_args

from diffuseq.config import parse_train_args
from diffuseq.errors import UserError
from diffuseq.model import checkpoints as ckpt
from diffuseq.training.setup import train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


def _spawn(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "run_train.py"), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120.0):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_kill_9_then_resume_gives_bitwise_identical_weights(toy, tmp_path):
    flags = dict(learning_steps=60, save_interval=5, eval_interval=20, schedule_sampler="lossaware")
    straight = tmp_path / "straight"
    result = run_script("run_train.py", tiny_args(toy, straight, **flags))
    assert result.returncode == 0, result.stderr

    # the same vocabulary for both runs (tokenizers' trainer may break frequency ties differently per process)
    flags["vocab"] = straight / "vocab.txt"
    killed = tmp_path / "killed"
    proc = _spawn(tiny_args(toy, killed, **flags))
    _wait_for(killed / ckpt.trainstate_name(20), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / ckpt.model_name(60)).exists()
    # no flag: the folder already holds checkpoints, so the run picks the newest complete one
    result = run_script("run_train.py", tiny_args(toy, killed, **flags))
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr
    for name in (ckpt.model_name(60), ckpt.ema_name("0.9999", 60), ckpt.opt_name(60)):
        a = torch.load(straight / name, weights_only=True)
        b = torch.load(killed / name, weights_only=True)
        if name.startswith("opt"):
            a, b = a["state"], b["state"]
            assert all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)
        else:
            assert all(torch.equal(a[k], b[k]) for k in a), name


def test_sigterm_saves_a_checkpoint_that_resumes(toy, tmp_path):
    folder = tmp_path / "term"
    proc = _spawn(tiny_args(toy, folder, learning_steps=100000, save_interval=100000, log_interval=1,
                            eval_interval=0))
    _wait_for(folder / "training_args.json", proc)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM: a stopped run is not a finished one
    assert "stopped at step" in err and "done" not in err
    steps = ckpt.complete_steps(folder)
    assert len(steps) == 1 and 0 < steps[0] < 100000, err
    result = run_script("run_train.py", tiny_args(toy, folder, learning_steps=steps[0] + 3, save_interval=100000,
                                                  resume_checkpoint="auto"))
    assert result.returncode == 0, result.stderr
    assert (folder / ckpt.model_name(steps[0] + 3)).is_file()


def test_auto_resume_never_picks_a_truncated_checkpoint(toy, tmp_path):
    folder = tmp_path / "ck"
    train(parse_train_args(tiny_args(toy, folder)))
    assert ckpt.latest_checkpoint(folder) == folder / ckpt.model_name(20)
    data = (folder / ckpt.model_name(20)).read_bytes()
    (folder / ckpt.model_name(20)).write_bytes(data[: len(data) // 2])  # a crash mid-write by another tool
    (folder / ".model000030.pt.abc.tmp").write_bytes(data[:100])  # a leftover temporary file
    assert ckpt.latest_checkpoint(folder) == folder / ckpt.model_name(10)
    (folder / ckpt.trainstate_name(10)).write_bytes(b"garbage")
    assert ckpt.latest_checkpoint(folder) is None


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model000010.pt"
    torch.save({"word_embedding.weight": _Exploit(marker)}, evil)
    with pytest.raises(UserError, match="refusing to load"):
        ckpt.safe_load(evil)
    assert not marker.exists()


def test_nan_losses_are_skipped_counted_and_stop_the_run(toy, tmp_path):
    from diffuseq.training.setup import setup_run

    folder = tmp_path / "nan"
    cfg = parse_train_args(tiny_args(toy, folder, learning_steps=30, max_bad_steps=3, save_interval=5))
    trainer = setup_run(cfg, torch.device("cpu"))
    real = trainer.losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # the first microbatch of the third step
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    trainer.losses = poisoned
    trainer.model.train()
    for _ in range(2):
        assert trainer.train_step(trainer.model, with_nll=False) is not None
    weights_before = [p.detach().clone() for p in trainer.params]
    assert trainer.train_step(trainer.model, with_nll=False) is None  # skipped: no update
    assert all(torch.equal(a, b) for a, b in zip(weights_before, trainer.params))
    assert trainer.step == 2

    # a run whose loss is always NaN stops after --max_bad_steps in a row, keeping its last checkpoint
    trainer.losses = lambda *a, **k: {**real(*a, **k), "loss": real(*a, **k)["loss"] * float("nan")}
    trainer.save()
    with pytest.raises(UserError, match="3 steps in a row"):
        trainer.run()
    assert trainer.bad_steps_total == 3
    assert ckpt.latest_checkpoint(folder) == folder / ckpt.model_name(2)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "model000010.pt"
    ckpt.atomic_save({"a": torch.ones(2)}, target)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="No space left on device"):
        ckpt.atomic_save({"a": torch.zeros(2)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model000010.pt"]


def test_unwritable_checkpoint_folder_is_a_clear_error(toy, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create checkpoint folder"):
        train(parse_train_args(tiny_args(toy, blocker / "ck")))
