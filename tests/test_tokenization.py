"""One set of texts through every path that tokenizes: the same ids, masks and padding everywhere.

Paths: training's evaluation batches (EncodedDataset), the build's verification encoder
(build.artifacts.Encoder), the served tokenizer model through the real embedded Triton (gRPC),
the client (Classifier.tokenize over HTTP), and the benchmark's in-process baseline (its encoder
read from the repository). Each takes the texts as the others do: str, or bytes with invalid UTF-8.
"""
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from build.artifacts import Encoder
from clients.baseline import InProcessOnnx, find_in_repository
from clients.client import Classifier
from contract.data import TextDataset
from contract.names import TEXT, TEXT_INPUTS, TOKENIZER_MODEL
from training.data import EncodedDataset, load_tokenizer

pytestmark = pytest.mark.server

MAX_LENGTH = 64        # the tiny model's positions: what its repository serves
TEXTS = [
    "good morning",                                               # short
    "worst airline ever, my flight got cancelled again " * 12,    # far past max_length: truncated
    "",                                                           # empty: [CLS] [SEP]
    "Café naïve ÉTÉ \U0001F600 日本語 ß",                           # non-ASCII: accents, emoji, CJK
    b"the flight was \xff\xfe bad \xc3",                          # invalid UTF-8: U+FFFD
]


def test_every_tokenizing_path_gives_the_same_ids_and_masks(tiny_served):
    ckpt, repo = tiny_served.checkpoint, tiny_served.repository
    paths = {}

    ds = TextDataset(list(TEXTS), np.zeros(len(TEXTS), dtype=np.int64), ["a", "b"], "single_label_classification",
                     np.arange(len(TEXTS)))
    batch = EncodedDataset(ds, load_tokenizer(ckpt), MAX_LENGTH).collate(list(range(len(TEXTS))))
    paths["training batches"] = {n: batch[n].numpy() for n in TEXT_INPUTS}
    paths["build verification"] = Encoder(ckpt, MAX_LENGTH)(TEXTS)

    client = grpcclient.InferenceServerClient(tiny_served.grpc_url)
    text = grpcclient.InferInput(TEXT, [len(TEXTS), 1], "BYTES")
    text.set_data_from_numpy(np.array([t if isinstance(t, bytes) else t.encode() for t in TEXTS],
                                      dtype=np.object_).reshape(-1, 1))
    result = client.infer(TOKENIZER_MODEL, [text])
    paths["served tokenizer"] = {n: result.as_numpy(n) for n in TEXT_INPUTS}
    with Classifier(tiny_served.http_url, "http") as clf:
        paths["client"] = clf.tokenize(TEXTS)
    baseline = InProcessOnnx(find_in_repository(repo))
    paths["benchmark baseline"] = baseline.encoder(TEXTS)

    reference = paths["served tokenizer"]
    ids, mask = reference["input_ids"], reference["attention_mask"]
    lengths = mask.sum(1)
    assert ids.shape == (len(TEXTS), MAX_LENGTH) and lengths[1] == MAX_LENGTH      # capped, truncated
    assert ids[1, 0] == ids[2, 0] and ids[1, MAX_LENGTH - 1] == ids[2, 1]         # [CLS] ... [SEP] kept
    assert lengths[2] == 2 and lengths[0] == 4                                    # "" and "good morning"
    unk = load_tokenizer(ckpt).tokenizer.token_to_id("[UNK]")
    assert (ids[3, 1:lengths[3] - 1] != unk).any()          # accents stripped, letters kept: not all [UNK]
    assert (ids[4, 1:lengths[4] - 1] != unk).sum() >= 4     # the readable words around the bad bytes
    assert baseline.encoder.lengths(TEXTS) == lengths.tolist()                    # the benchmark's token count
    for name, got in paths.items():
        for tensor in TEXT_INPUTS:
            np.testing.assert_array_equal(got[tensor], reference[tensor], err_msg=f"{name}: {tensor}")


def test_one_execution_pads_to_a_multiple_of_8_below_max_length(tiny_served):
    """Short texts alone: padded to their longest rounded up to 8, by every path alike."""
    texts = TEXTS[0::2] + TEXTS[3:]          # no long text
    with Classifier(tiny_served.http_url, "http") as clf:
        served = clf.tokenize(texts)
    longest = int(served["attention_mask"].sum(1).max())
    assert served["input_ids"].shape[1] == -(-longest // 8) * 8 < MAX_LENGTH
    local = Encoder(tiny_served.checkpoint, MAX_LENGTH)(texts)
    for tensor in TEXT_INPUTS:
        np.testing.assert_array_equal(local[tensor], served[tensor])
