"""Run a script of one of the original repositories (DiffuSeq, Bridge-Gap) on a CPU, as it is.

    python tests/golden/run_original.py /path/to/Bridge_Gap_Diffusion sample_seq2seq.py --model_path ... --step 2000
    python tests/golden/run_original.py /path/to/DiffuSeq-v2 sample_seq2seq_dpmSolver.py --drop-load-args ...

Their scripts assume a GPU in three places; this process patches them before running the script
unchanged from its checkout (nothing is copied or edited):
* ``Tensor.cuda()`` / ``Module.cuda()`` return the object itself (their decoder moves tensors to
  the GPU unconditionally);
* ``TrainLoop`` wraps the model in ``DistributedDataParallel`` on a CPU as well (their losses reach
  the network as ``model.module``, which only their GPU path provides);
* ``wandb`` is a stand-in that records nothing (their ``train.py`` and logger call it).
With ``--drop-load-args`` (first after the script), ``dist_util.load_state_dict`` drops the positional
arguments after the path: DiffuSeq-v2's decoders pass two that its signature does not take, a TypeError.
Run it with a Python that has their dependencies (transformers 4.x, datasets, blobfile).
"""

from __future__ import annotations

import os
import runpy
import sys
import types
from pathlib import Path

import numpy as np
import torch

if "int" not in np.__dict__:  # their step_sample.py uses np.int, removed in numpy 1.24
    np.int = int  # type: ignore[attr-defined]


def _stub_wandb() -> None:
    stub = types.ModuleType("wandb")
    stub.init = lambda *args, **kwargs: None
    stub.log = lambda *args, **kwargs: None
    stub.config = types.SimpleNamespace(update=lambda *args, **kwargs: None)
    sys.modules["wandb"] = stub


def _cpu_shims(repo: Path) -> None:
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    import train_util

    original_init = train_util.TrainLoop.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if not self.use_ddp:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model)
            self.use_ddp = True

    train_util.TrainLoop.__init__ = init


def _drop_load_args() -> None:
    from diffuseq.utils import dist_util

    original_load = dist_util.load_state_dict
    dist_util.load_state_dict = lambda path, *dropped, **kwargs: original_load(path, **kwargs)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    repo, script = Path(sys.argv[1]).resolve(), sys.argv[2]
    drop_load_args = sys.argv[3:4] == ["--drop-load-args"]
    if drop_load_args:
        del sys.argv[3]
    os.chdir(repo)  # their scripts read diffuseq/config.json relative to the repository
    sys.path.insert(0, str(repo))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _stub_wandb()
    _cpu_shims(repo)
    if drop_load_args:
        _drop_load_args()
    sys.argv = [script, *sys.argv[3:]]
    runpy.run_path(str(repo / script), run_name="__main__")


if __name__ == "__main__":
    main()
