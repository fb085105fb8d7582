"""The names and defaults that the config writer, the served models, the build and the clients share.

A served model reads its tensors by these names and the config builder declares them by the same
constants, so a rename is one edit here instead of a string to find in five places.
"""

# ---- the ensemble contract: what a client sends and gets back -----------------------------------
TEXT = "text"                                   # TYPE_STRING, dims [1] per text
FEATURES = "features"                           # TYPE_FP32, [k] raw tabular features per text
LOGITS = "logits"                               # TYPE_FP32, [num_labels]
PROBABILITIES = "probabilities"                 # TYPE_FP32, [num_labels]
LABEL = "label"                                 # TYPE_STRING, [1]: the name(s) the post-process picks
ENSEMBLE_OUTPUTS = (LOGITS, PROBABILITIES, LABEL)

# ---- between the steps of an ensemble ----------------------------------------------------------
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")   # int64 (B, T), the ONNX graph's order
RAW_LOGITS = "raw_logits"                       # a classifier's logits (FP32 or FP16) into the post-process

# ---- models and files of a repository ----------------------------------------------------------
TOKENIZER_MODEL = "tokenizer"
POSTPROCESS_MODEL = "postprocess"
COMPOSING_SUFFIX = "_model"                     # ensemble bert_<backend>_<precision> runs <ensemble>_model
LABEL_FILE = "labels.txt"                       # beside config.pbtxt: label names, one a line, in index order
TOKENIZER_FILE = "tokenizer.json"               # the checkpoint's fast tokenizer, run by `tokenizers`
TOKENIZER_FILES = (TOKENIZER_FILE, "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
CONTRACT_PACKAGE = "contract"                   # this package, copied beside every served model.py

# ---- defaults ----------------------------------------------------------------------------------
DEFAULT_MAX_LENGTH = 128        # tokens per text, [CLS] and [SEP] included (tweets' p95 is 44)
MAX_POSITIONS = 512             # BERT's position embeddings: no max length beyond this
PAD_MULTIPLE = 8                # one call's texts pad to their longest, rounded up to this
CHARS_PER_TOKEN = 64            # characters kept per text = this x max_length (see encoder.py)
DEFAULT_CHUNK_ROWS = 8          # rows per length-sorted chunk in the served classifiers (batching.py)


def composing_model(ensemble: str) -> str:
    """bert_onnx_fp32 -> bert_onnx_fp32_model: the classifier an ensemble runs between its steps."""
    return ensemble + COMPOSING_SUFFIX
