"""Configurations: training (``training_args.json``) and decoding, each one dataclass with its command line."""

from .decoding import DecodeConfig, parse_decode_args
from .train import BERT_BASE_NAMES, FIXED_SETTINGS, TrainConfig, parse_train_args

__all__ = ["BERT_BASE_NAMES", "FIXED_SETTINGS", "DecodeConfig", "TrainConfig", "parse_decode_args", "parse_train_args"]
