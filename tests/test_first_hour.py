"""A new user's first hour: a log that says how far along a run is, warnings where a run would mislead,
and a clean stop under torchrun."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers import ROOT, make_toy_dataset, run_script, tiny_args


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=64, n_valid=16, n_test=16)


def test_the_log_gives_progress_eta_and_warns_about_an_ema_that_cannot_move(toy, tmp_path):
    result = run_script("run_train.py", tiny_args(toy, tmp_path / "ck", learning_steps=20, save_interval=20))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if " | lr " in line]
    assert len(lines) == 4
    assert re.search(r"step 5/20 \(25\.0%\) \| .*loss \d.* \| lr \S+ \| [\d.]+ samples/s \| elapsed \d\d:\d\d, ETA \d\d:\d\d$",
                     lines[0]), lines[0]
    assert "step 20/20 (100.0%)" in lines[-1] and lines[-1].endswith("ETA 00:00")
    warning = [line for line in result.stderr.splitlines() if "--ema_rate 0.9999 averages over about 10000 steps" in line]
    assert len(warning) == 1 and "this run makes 20" in warning[0]
    # every term of the log line is explained in --help
    help_text = run_script("run_train.py", ["--help"]).stdout
    for term in ("loss", "mse", "mse_nb", "penalty", "rounding", "tT", "nll", "grad_norm", "ETA"):
        assert re.search(rf"\b{term}\b", help_text.split("The log, every")[1]), term


def test_resuming_with_another_process_count_names_both_global_batches(toy, tmp_path):
    folder = tmp_path / "ck"
    flags = tiny_args(toy, folder, learning_steps=10, save_interval=5, bsz=8, microbatch=8, ema_rate="0.5")
    assert run_script("run_train.py", flags).returncode == 0
    more = tiny_args(toy, folder, learning_steps=14, save_interval=2, bsz=8, microbatch=8, ema_rate="0.5")
    result = run_script("run_train.py", more, launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        "--nproc_per_node=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "global batch changes" in line]
    assert len(warnings) == 1 and "from 8 to 16 (--bsz 8 is per process)" in warnings[0], warnings


def test_a_repeated_ctrl_c_does_not_cut_the_save_or_the_exit(toy, tmp_path):
    """torchrun forwards the Ctrl-C every rank already got: the repeats arrive while the run saves and shuts down.
    Here they come every 20 ms until the process ends: one hint, exit 130, the checkpoint complete."""
    folder = tmp_path / "ck"
    flags = tiny_args(toy, folder, learning_steps=100000, save_interval=100000, eval_interval=0, log_interval=5)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_train.py"), *flags], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while "step 5/" not in (tmp_path / "log.txt").read_text() and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()
            time.sleep(0.2)
        while proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            time.sleep(0.02)
    output = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "interrupted" not in output, output[-3000:]
    # the newest checkpoint in the folder is whole: every file it lists loads and has the recorded size, and
    # nothing half-written is left beside it
    [step] = {int(p.name[len("trainstate"):-len(".pt")]) for p in folder.glob("trainstate*.pt")}
    state = torch.load(folder / f"trainstate{step:06d}.pt", weights_only=True)
    assert state["step"] == step and sorted(state["files"]) == [f"ema_0.9999_{step:06d}.pt", f"model{step:06d}.pt",
                                                                   f"opt{step:06d}.pt"]
    for name, size in state["files"].items():
        assert (folder / name).stat().st_size == size, name
        torch.load(folder / name, weights_only=True)
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".pt", ".tmp")) == sorted(
        [*state["files"], f"trainstate{step:06d}.pt"])
    # one hint, naming that checkpoint
    hints = [line for line in output.splitlines() if "continues it" in line]
    assert len(hints) == 1 and f"stopped at step {step} " in hints[0], output[-3000:]


FAKE_TORCHRUN = """\
    import signal, sys, time
    def stop(signum, frame):
        print("[rank 0] stopped at step 7 by signal 2 (checkpoint saved in ck); the same command continues it",
              file=sys.stderr, flush=True)
        print("W1206 torchrun: received signal, shutting down", file=sys.stderr, flush=True)
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "/venv/bin/torchrun", line 8, in <module>', file=sys.stderr)
        print("    sys.exit(main())", file=sys.stderr)
        print("torch.distributed.elastic.multiprocessing.api.SignalException: Process 4242 got signal: 2",
              file=sys.stderr, flush=True)
        sys.exit(1)
    signal.signal(signal.SIGINT, stop)
    if "--fail" in sys.argv:
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "run_train.py", line 3, in <module>', file=sys.stderr)
        print("RuntimeError: a real failure", file=sys.stderr, flush=True)
        sys.exit(1)
    print("ready " + " ".join(sys.argv[1:3]), flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("fail", [False, True])
def test_the_launcher_hides_torchruns_traceback_of_a_ctrl_c_and_keeps_every_other(tmp_path, fail):
    """scripts/launch.sh under Ctrl-C (a torchrun that behaves as the real one: its ranks' hint, then its own
    traceback of the signal): exit 130 and no traceback; a real failure keeps its traceback and exit code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_TORCHRUN))
    (bin_dir / "torchrun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "NPROC": "2"}
    command = ["bash", str(ROOT / "scripts/train.sh"), "data", "toy", *(["--fail"] if fail else [])]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
        deadline = time.time() + 60
        while not fail and "ready" not in (tmp_path / "log.txt").read_text() and time.time() < deadline:
            time.sleep(0.1)
        if not fail:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code = proc.wait(timeout=60)
    output = (tmp_path / "log.txt").read_text()
    if fail:
        assert code == 1 and "Traceback" in output and "RuntimeError: a real failure" in output, output
        return
    assert "ready --standalone --nproc_per_node=2" in output, output
    assert code == 130, output
    assert "Traceback" not in output and "SignalException" not in output, output
    assert [line for line in output.splitlines() if "continues it" in line] == [
        "[rank 0] stopped at step 7 by signal 2 (checkpoint saved in ck); the same command continues it"]
    assert "W1206 torchrun: received signal, shutting down" in output


def test_the_readme_commands_run_as_written_at_a_tiny_size(toy, tmp_path):
    """The four commands of the README's "The paper's commands", from another folder, with the dataset, the run's
    folder and the step numbers of a tiny run put in, and tiny-model flags added after them (the scripts pass
    extra flags on; the last value of a flag wins)."""
    import shlex

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The paper's commands"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert [re.search(r"scripts/(\w+)\.sh", c).group(1) for c in commands] == ["train", "post_train", "decode", "eval"]
    tiny = tiny_args(toy, tmp_path / "unused", learning_steps=4, save_interval=4, eval_interval=0)
    at = tiny.index("--checkpoint_path")
    model_flags = tiny[:at] + tiny[at + 2:]
    extra = {"train": model_flags, "post_train": ["--bsz", "8", "--microbatch", "8"],
             "decode": ["--max_examples", "4", "--batch_size", "4"], "eval": ["--no_corpus_bleu"]}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env.pop("NPROC", None)
    run_folder = ""
    for command in commands:
        words = shlex.split(command.replace("datasets/QQP", str(toy)).replace("<run>", run_folder)
                            .replace("POST_STEPS=10000", "POST_STEPS=2").replace("_050000.pt", "_000004.pt")
                            .replace("_060000.pt", "_000006.pt"))
        assignments = dict(word.split("=", 1) for word in words if re.match(r"^[A-Z_]+=", word))
        argv = [word for word in words if not re.match(r"^[A-Z_]+=", word)]
        if "SEEDS" in assignments:
            assignments["SEEDS"] = "10,11"  # two seeds are enough to score diversity and MBR
        name = re.search(r"scripts/(\w+)\.sh", command).group(1)
        argv[1] = str(ROOT / argv[1])  # scripts/X.sh, run from another folder
        result = subprocess.run(argv + extra[name], capture_output=True, text=True, cwd=tmp_path,
                                env={**env, **assignments}, timeout=300)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        if name == "train":
            runs = list((tmp_path / "diffusion_models").iterdir())
            assert len(runs) == 1
            run_folder = runs[0].name
    assert (tmp_path / "diffusion_models" / f"{run_folder}_post" / "ema_0.9999_000006.pt").is_file()
    assert "BLEU" in result.stdout and "MBR" in result.stdout + result.stderr
