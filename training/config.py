"""BertConfig lives in contract/bert_config.py (torch-free, read by every stage); training imports it from here."""
from contract.bert_config import BertConfig, ConfigError

__all__ = ["BertConfig", "ConfigError"]
