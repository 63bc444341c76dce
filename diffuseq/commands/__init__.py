"""The command-line tools (``run_train.py``, ``sample_seq2seq.py``, ``scripts/eval_seq2seq.py`` and their
installed names ``diffuseq-train``, ``diffuseq-decode``, ``diffuseq-eval``): thin layers over the package."""
