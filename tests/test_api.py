"""The Python API, the plain-text command line, the decode configuration saved beside the outputs, and the
README's example run as written."""

from __future__ import annotations

import json
import re

import pytest

from diffuseq import DecodeConfig, Generation, Seq2SeqDiffusion
from diffuseq.api import clean_text
from diffuseq.data.vocab import WORD_SPECIALS, WordVocab
from diffuseq.config import parse_train_args
from diffuseq.data import encode_sources
from diffuseq.decode_files import run_decode
from diffuseq.errors import UserError
from diffuseq.samplers import SamplerConfig, sampler_from_config
from diffuseq.training.setup import train
from helpers import ROOT, assert_clean_error, make_toy_dataset, run_script, tiny_args


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    data = make_toy_dataset(root / "toy", n_test=5)
    train(parse_train_args(tiny_args(data, root / "run", learning_steps=20, save_interval=20, lr=3e-3)))
    return root / "run" / "ema_0.9999_000020.pt"


def test_generate_one_text_per_source_and_per_seed(checkpoint):
    model = Seq2SeqDiffusion.from_checkpoint(checkpoint, device="cpu")
    sources = ["the cat sat on", "red house", "a big dog ran to the sea"]
    one = model.generate(sources, respacing="adp_10", seeds=[3])
    assert isinstance(one, Generation) and one.seeds == [3] and one.x0 == [[]]
    texts = one.first
    assert isinstance(texts, list) and len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert model.generate(sources, respacing="adp_10", seeds=[3], batch_size=1).first == texts  # batching: no change
    per_seed = model.generate(sources, respacing="adp_10", seeds=[3, 4])
    assert per_seed.seeds == [3, 4] and len(per_seed.texts) == 2 and per_seed.texts[0] == texts
    # the settings as one object, or as its keywords over the model's schedule: the same decode
    sampling = model.sampling(respacing="adp_10")
    assert sampling == SamplerConfig(model.num_timesteps, model.config.noise_schedule, "adp_10")
    assert model.generate(sources, sampling, seeds=[3]).first == texts
    # the defaults are sample_seq2seq.py's: all T steps, seed 105
    default = model.generate(sources[:1], return_x0=True)
    assert default.seeds == [105] and len(default.x0[0]) == model.num_timesteps
    with pytest.raises(TypeError, match="not both"):
        model.generate(sources, sampling, respacing="10")
    with pytest.raises(TypeError, match="seed"):
        model.generate(sources, respacing="10", seed=3)
    with pytest.raises(UserError, match="T = 2000"):
        model.generate(sources, SamplerConfig(respacing="10"))
    result = model.generate(sources[:2], respacing="10", seeds=[3], return_x0=True)
    assert isinstance(result, Generation) and len(result.x0[0]) == 10
    assert result.x0[0][0].shape == (2, 16, 16)
    # clamped at every step: each target position of each x_0 is a word embedding
    embeddings = model.model.word_embedding.weight.detach()
    target = encode_sources(sources[:2], model.vocab, 16).input_mask.bool()
    last = result.x0[0][-1][target]
    assert (last[:, None, :] - embeddings[None]).abs().amax(-1).min(-1).values.max() == 0


def test_generate_and_output_give_clean_text_and_raw_tokens_on_request(checkpoint, tmp_path):
    model = Seq2SeqDiffusion.from_checkpoint(checkpoint, device="cpu")
    sources = ["the cat sat on", "red house"]
    raw = model.generate(sources, respacing="adp_10", seeds=[3], raw=True).first
    clean = model.generate(sources, respacing="adp_10", seeds=[3]).first
    assert clean == [clean_text(text, model.vocab) for text in raw]
    assert clean_text(" [CLS] a townand in [SEP] [PAD] [PAD]", model.vocab) == "a townand in"
    words = WordVocab({t: i for i, t in enumerate([*WORD_SPECIALS, "a", "b"])})
    assert clean_text("[START] a [UNK] b [END] [PAD]", words) == "a [UNK] b"
    (tmp_path / "sources.txt").write_text("\n".join(sources) + "\n")
    args = ["--model_path", str(checkpoint), "--decode_respacing", "adp_10", "--input", str(tmp_path / "sources.txt"),
            "--seed2", "3"]
    printed = run_script("sample_seq2seq.py", args)
    assert printed.returncode == 0 and printed.stdout.splitlines() == clean
    printed = run_script("sample_seq2seq.py", args + ["--raw_tokens"])
    assert printed.returncode == 0 and printed.stdout.splitlines() == raw


def test_a_decode_saves_its_config_and_sampler_beside_the_outputs(checkpoint, tmp_path):
    config = DecodeConfig(model_path=str(checkpoint), decode_respacing="adp_10", split="test", seeds="1,2",
                          out_dir=str(tmp_path), evaluate=True, clamp_step=2)
    config.validate()
    run = run_decode(config)
    meta = json.loads(run.meta.read_text())
    assert DecodeConfig.load(run.meta) == config
    sampler = sampler_from_config(meta["settings"]["sampler"])
    assert (sampler.name, sampler.num_steps, sampler.config.clamp_step) == ("ddpm", 10, 2)
    scores = json.loads((run.out_dir / f"decode_{run.name}.eval.json").read_text())
    assert scores == run.scores and len(scores["files"]) == 2 and scores["diversity"] is not None


def test_plain_text_in_and_out(checkpoint, tmp_path):
    (tmp_path / "sources.txt").write_text("the cat sat on\nred house\n")
    out = tmp_path / "out.txt"
    args = ["--model_path", str(checkpoint), "--decode_respacing", "adp_10", "--input", str(tmp_path / "sources.txt")]
    result = run_script("sample_seq2seq.py", args + ["--output", str(out), "--seeds", "3,4"])
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in tmp_path.glob("out.seed*.txt"))
    assert files == ["out.seed3.txt", "out.seed4.txt"]
    lines = (tmp_path / "out.seed3.txt").read_text().splitlines()
    model = Seq2SeqDiffusion.from_checkpoint(checkpoint, device="cpu")
    assert lines == model.generate(["the cat sat on", "red house"], respacing="adp_10", seeds=[3]).first
    printed = run_script("sample_seq2seq.py", args + ["--seed2", "3"])
    assert printed.returncode == 0 and printed.stdout.splitlines() == lines
    # an --output that would overwrite the input, or a folder (two seeds would write beside it): refused
    sources = (tmp_path / "sources.txt").read_bytes()
    for extra, message in ((["--output", str(tmp_path / "sources.txt")], "is the --input file"),
                           (["--output", str(tmp_path), "--seeds", "3,4"], "is a folder")):
        result = run_script("sample_seq2seq.py", args + extra)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "sources.txt").read_bytes() == sources
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.seed*"))


def test_the_readme_api_example_runs_as_written(checkpoint):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "from diffuseq import Seq2SeqDiffusion" in code
    path = re.search(r'from_checkpoint\("([^"]+)"', code).group(1)
    namespace: dict = {}
    exec(compile(code.replace(path, str(checkpoint)), "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["texts"] and all(isinstance(t, str) for t in namespace["texts"])
    assert len(namespace["steps"]) == 4
    assert len(namespace["per_seed"]) == 2


def test_library_errors_name_settings_and_the_command_line_names_flags(tmp_path):
    """A library user reads the setting's Python name; the command line shows the flag a user types."""
    from diffuseq.commands import command_line_wording

    with pytest.raises(UserError) as err:
        SamplerConfig(eta=2.0).resolve()
    assert str(err.value) == "`eta` must be -1 (DDPM) or in [0, 1] (DDIM), got 2.0"
    assert command_line_wording(str(err.value)) == "--eta must be -1 (DDPM) or in [0, 1] (DDIM), got 2.0"
    result = run_script("sample_seq2seq.py", ["--model_path", str(tmp_path / "model000010.pt"), "--eta", "2"])
    assert_clean_error(result, "--eta must be -1 (DDPM) or in [0, 1] (DDIM), got 2.0")
