"""diffuseq-bridge: diffusion seq2seq text generation with Distance Penalty and Adaptive Decay Sampling."""

__version__ = "0.1.0"
