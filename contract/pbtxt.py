"""config.pbtxt <-> Triton's ModelConfig protobuf message: the one reader and printer of model configs.

tritonclient's `model_config_pb2` and protobuf's text_format are imported when a config is read or
written, not when this module is imported: the served models (which have neither) import the
contract package without them.
"""
from __future__ import annotations

from pathlib import Path

from contract.errors import UserError

CONFIG_FILE = "config.pbtxt"


class ModelConfigError(UserError, ValueError):
    """A config.pbtxt that is not a valid Triton ModelConfig; the message names the file."""


def messages():
    """tritonclient's model_config_pb2 module (ModelConfig, TYPE_*, ModelInstanceGroup, ...)."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def parse(text: str, source: str = CONFIG_FILE):
    """config.pbtxt text -> ModelConfig."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, messages().ModelConfig())
    except text_format.ParseError as e:
        raise ModelConfigError(f"{source}: not a valid Triton ModelConfig ({e})") from None


def read(model_dir_or_file: str | Path):
    """The ModelConfig of a model folder (its config.pbtxt) or of a config.pbtxt path."""
    path = Path(model_dir_or_file)
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        return parse(path.read_text(), str(path))
    except FileNotFoundError:
        raise ModelConfigError(f"{path}: no such file") from None


def to_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)
