"""What a GPU run relies on, checked on a CPU: real fp16 with loss scaling, random streams that validation
leaves alone, diverging runs that stop cleanly, launcher flags, TF32, --compile and device-side decoding."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import make_toy_dataset, run_script, tiny_args

from diffuseq.config import parse_decode_args, parse_train_args
from diffuseq.errors import UserError
from diffuseq.training.cross_entropy import token_cross_entropy
from diffuseq.training.setup import setup_run, train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


def _weights(path):
    return torch.load(path, weights_only=True)


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# -- the rounding loss in reduced precision --------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rounding_loss_is_finite_and_matches_cross_entropy_under_autocast(dtype):
    """fp16's largest value is 65504: the backward's 2^64 denormal guard overflowed it (every fp16 step inf)."""
    gen = torch.Generator().manual_seed(0)
    vocab, dim = 300, 16
    hidden = torch.randn(4, 12, dim, generator=gen)
    head = torch.nn.Linear(dim, vocab)
    ids = torch.randint(0, vocab, (4, 12), generator=gen)
    upstream = torch.full((4,), 2.0**16 / 4)  # what a GradScaler's initial scale sends back, per example

    def run(fused: bool):
        x = hidden.clone().requires_grad_(True)
        head.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            if fused:
                ce = token_cross_entropy(x, head, ids)
            else:  # the plain formulation autocast gives nn.Linear + F.cross_entropy
                logits = head(x)
                ce = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="none").view(4, 12).mean(-1)
        (ce * upstream).sum().backward()
        return ce.detach(), x.grad.float(), head.weight.grad.float(), head.bias.grad.float()

    fused, plain = run(True), run(False)
    for got, want in zip(fused, plain):
        assert torch.isfinite(got).all()
        assert torch.allclose(got, want, rtol=2e-2, atol=2e-2 * want.abs().max().item()), (got - want).abs().max()


# -- fp16 training: overflow skips, exact resume with the scaler's state ---------------------------


def test_fp16_training_skips_scaler_overflows_without_counting_them_and_resumes_bitwise(toy, tmp_path):
    flags = dict(precision="fp16", learning_steps=12, save_interval=6, eval_interval=0, max_bad_steps=2)
    straight = tmp_path / "straight"
    trainer = setup_run(parse_train_args(tiny_args(toy, straight, **flags)), torch.device("cpu"))
    assert trainer.autocast_dtype == torch.float16 and trainer.scaler is not None  # real fp16, not bf16
    # a loss scale far too large: the first steps overflow fp16 until the scaler has lowered it
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    trainer.run()
    assert trainer.step == 12
    assert trainer.overflow_steps >= 3 and trainer.bad_steps_total == 0  # with --max_bad_steps 2
    state = torch.load(straight / "trainstate000012.pt", weights_only=True)
    assert state["scaler"]["scale"] == trainer.scaler.get_scale() < 2.0**60

    # the same run stopped at step 6 and continued gives the same weights, bitwise
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for path in straight.iterdir():
        if "000012" not in path.name:
            shutil.copy2(path, resumed / path.name)
    again = setup_run(parse_train_args(tiny_args(toy, resumed, **flags)), torch.device("cpu"))
    assert again.step == 6 and again.scaler.get_scale() == torch.load(
        straight / "trainstate000006.pt", weights_only=True)["scaler"]["scale"]
    again.run()
    assert _same_weights(straight / "model000012.pt", resumed / "model000012.pt")


def test_a_diverging_lossaware_run_ends_with_the_max_bad_steps_error(toy, tmp_path):
    """The losses of a non-finite step went into the sampler's history; multinomial then raised."""
    result = run_script("run_train.py", tiny_args(toy, tmp_path / "ck", lr=1e12, schedule_sampler="lossaware",
                                                  diff_steps=4, learning_steps=200, save_interval=200,
                                                  eval_interval=0, max_bad_steps=5))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: 5 steps in a row had a non-finite loss")


def test_a_skipped_step_leaves_the_lossaware_history_as_it_was(toy, tmp_path):
    trainer = setup_run(parse_train_args(tiny_args(toy, tmp_path / "ck", schedule_sampler="lossaware",
                                                   eval_interval=0)), torch.device("cpu"))
    trainer.model.train()
    assert trainer.train_step(trainer.model, with_nll=False) is not None
    before = {k: v.clone() for k, v in trainer.timestep_sampler.state_dict().items()}
    real = trainer.losses
    trainer.losses = lambda *a, **k: {**real(*a, **k), "loss": real(*a, **k)["loss"] * float("inf")}
    assert trainer.train_step(trainer.model, with_nll=False) is None
    after = trainer.timestep_sampler.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- validation and the random streams -------------------------------------------------------------


def test_validation_reseeds_no_generator_and_changes_no_weight(toy, tmp_path, monkeypatch):
    """``torch.manual_seed`` reseeds every CUDA generator too: after the first validation all ranks drew alike."""
    with_valid, without = tmp_path / "valid", tmp_path / "novalid"
    train(parse_train_args(tiny_args(toy, without, eval_interval=0, schedule_sampler="lossaware")))

    trainer = setup_run(parse_train_args(tiny_args(toy, with_valid, eval_interval=3, schedule_sampler="lossaware")),
                        torch.device("cpu"))
    calls = []
    for module, name in ((torch, "manual_seed"), (torch.random, "manual_seed"), (torch.cuda, "manual_seed"),
                         (torch.cuda, "manual_seed_all"), (torch.random, "fork_rng"), (torch, "seed")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: calls.append(_n))
    cpu_state = torch.get_rng_state()
    first = trainer.validation_loss()
    assert torch.equal(cpu_state, torch.get_rng_state()) and calls == []
    assert trainer.validation_loss() == first  # its own stream, the same at every validation
    monkeypatch.undo()
    trainer.run()
    assert _same_weights(with_valid / "model000020.pt", without / "model000020.pt")


# -- launching -------------------------------------------------------------------------------------


def test_local_rank_flags_of_the_old_launcher_are_accepted(toy, tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    cfg = parse_train_args(["--local-rank=0", *tiny_args(toy, tmp_path / "ck")])
    assert cfg.data_dir == str(toy)
    parse_train_args(["--local_rank", "0", *tiny_args(toy, tmp_path / "ck")])
    decode = parse_decode_args(["--local-rank=0", "--model_path", "x/model000010.pt"])
    assert decode.model_path == "x/model000010.pt"
    with pytest.raises(UserError, match="--local-rank must be a non-negative integer"):
        parse_train_args(["--local-rank=x", *tiny_args(toy, tmp_path / "ck")])


def test_more_processes_than_gpus_is_a_one_line_error(monkeypatch):
    from diffuseq import dist_util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail("set_device before the check"))
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(UserError, match="4 processes on this node but 2 GPU"):
        dist_util.setup()


def test_launch_without_use_env_trains_in_one_default_folder(toy, tmp_path):
    """``python -m torch.distributed.launch`` without --use_env passes --local-rank to every rank; a run given
    no --checkpoint_path writes one folder under diffusion_models/."""
    import os
    import subprocess

    from helpers import ROOT

    args = tiny_args(toy, tmp_path / "unused", learning_steps=4, save_interval=4, bsz=8, microbatch=8, eval_interval=0)
    at = args.index("--checkpoint_path")
    del args[at:at + 2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2",
                             str(ROOT / "run_train.py"), *args, "--dataset", "toy"], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = list((tmp_path / "diffusion_models").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("diffuseq_toy_"), folders
    assert (folders[0] / "model000004.pt").is_file()


def test_every_rank_takes_rank_0s_default_folder(toy, tmp_path, monkeypatch):
    """The default folder's name holds the time of day: each rank naming its own could differ by a second."""
    from diffuseq import dist_util

    chosen = tmp_path / "rank0_named_this"
    real = dist_util.broadcast_object
    monkeypatch.setattr(dist_util, "broadcast_object",
                        lambda obj, src=0: str(chosen) if str(obj).startswith("diffusion_models/") else real(obj, src))
    args = tiny_args(toy, tmp_path / "unused", learning_steps=2, save_interval=2, eval_interval=0)
    at = args.index("--checkpoint_path")
    del args[at:at + 2]
    trainer = setup_run(parse_train_args(args), torch.device("cpu"))
    assert trainer.dir == chosen and (chosen / "training_args.json").is_file()


# -- TF32, --compile, decoding ---------------------------------------------------------------------


def test_tf32_setting_is_applied_on_cuda_only_and_logged(monkeypatch, caplog):
    from diffuseq import runtime

    state = {"on": False}
    monkeypatch.setattr(runtime, "cuda_tf32", lambda enabled=None: state.update(on=enabled) or state["on"])
    runtime.use_tf32_on(torch.device("cpu"), True)
    assert state["on"] is False  # nothing on a CPU
    runtime.use_tf32_on(torch.device("cuda", 0), True, "bf16")
    assert state["on"] is False  # nor in bf16
    with caplog.at_level("INFO"):
        runtime.use_tf32_on(torch.device("cuda", 0), True)
    assert state["on"] is True and "TF32" in caplog.text
    runtime.use_tf32_on(torch.device("cuda", 0), False)
    assert state["on"] is False


def test_cuda_tf32_flag_round_trip():
    from diffuseq.runtime import cuda_tf32, full_fp32_matmul

    before = cuda_tf32()
    try:
        assert cuda_tf32(True) is True
        with full_fp32_matmul():
            assert cuda_tf32() is False
        assert cuda_tf32() is True
        assert cuda_tf32(False) is False
    finally:
        cuda_tf32(before)


def test_compile_trains_and_decodes_a_tiny_model(toy, tmp_path):
    from diffuseq import Seq2SeqDiffusion

    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    flags = dict(learning_steps=4, save_interval=2, eval_interval=0, schedule_sampler="uniform")
    train(parse_train_args(tiny_args(toy, plain, **flags)))
    trainer = train(parse_train_args(tiny_args(toy, compiled, compile="true", **flags)))
    assert trainer.cfg.compile and trainer.step == 4
    # the compiled network draws its dropout masks its own way: the same training, not the same numbers
    a, b = _weights(compiled / "model000002.pt"), _weights(compiled / "model000004.pt")
    assert all(torch.isfinite(b[k]).all() for k in b) and not torch.equal(a["word_embedding.weight"],
                                                                        b["word_embedding.weight"])

    sources = ["cat the sat", "red car big"]
    eager = Seq2SeqDiffusion.from_checkpoint(plain / "model000004.pt", "cpu")
    fast = Seq2SeqDiffusion.from_checkpoint(plain / "model000004.pt", "cpu", compile=True)
    assert fast.network is not fast.model
    x_eager = eager.generate(sources, respacing="4", seeds=[1], return_x0=True).x0[0]
    x_fast = fast.generate(sources, respacing="4", seeds=[1], return_x0=True).x0[0]
    assert all(torch.allclose(p, q, atol=1e-4) for p, q in zip(x_eager, x_fast))


def test_fp16_decoding_runs_on_a_cpu_with_float32_distances(toy, tmp_path):
    from diffuseq import Seq2SeqDiffusion

    train(parse_train_args(tiny_args(toy, tmp_path / "ck", learning_steps=4, save_interval=4, eval_interval=0)))
    model = Seq2SeqDiffusion.from_checkpoint(tmp_path / "ck" / "model000004.pt", "cpu", dtype="fp16")
    assert model.clamp.embeddings.dtype == torch.float32
    texts = model.generate(["cat the sat"], respacing="4", seeds=[1, 2]).texts
    assert len(texts) == 2 and all(len(t) == 1 for t in texts)


def test_launchers_take_several_nodes_through_a_rendezvous_address(tmp_path):
    import os
    import subprocess

    from helpers import ROOT

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "torchrun").write_text('#!/bin/sh\necho "torchrun $*"\n')
    (fake / "torchrun").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "NPROC": "4", "NNODES": "2"}
    missing = subprocess.run(["bash", str(ROOT / "scripts/decode.sh"), "ck/model000010.pt"], capture_output=True,
                             text=True, env=env)
    assert missing.returncode != 0 and "MASTER_ADDR" in missing.stderr
    result = subprocess.run(["bash", str(ROOT / "scripts/decode.sh"), "ck/model000010.pt"], capture_output=True,
                            text=True, env={**env, "MASTER_ADDR": "node0.cluster", "NODE_RANK": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("torchrun --nnodes=2 --node_rank=1 --nproc_per_node=4 --master_addr=node0.cluster "
                                    "--master_port=29500 ")
    assert "--standalone" not in result.stdout and "sample_seq2seq.py --model_path ck/model000010.pt" in result.stdout
