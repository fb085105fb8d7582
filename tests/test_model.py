"""The scratch BERT against transformers': same weights in, same logits out, both directions."""
import json
import warnings

import pytest
import torch
import transformers

from training.config import BertConfig, ConfigError
from training.model import BertForSequenceClassification, CheckpointError

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)


def _batch(vocab=120, B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


def _hf_logits(model, ids, mask, types):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits


@pytest.mark.parametrize("num_labels", [2, 5])
def test_hf_state_dict_loads_into_scratch_with_equal_logits(num_labels):
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY, num_labels=num_labels)).eval()
    ours = BertForSequenceClassification(BertConfig.from_dict(hf.config.to_dict())).eval()
    assert set(ours.state_dict()) == set(hf.state_dict())  # identical names, nothing to rename
    ours.load_hf_state_dict(hf.state_dict())
    batch = _batch()
    with torch.no_grad():
        ours_logits = ours(*batch).logits
    torch.testing.assert_close(ours_logits, _hf_logits(hf, *batch), atol=1e-5, rtol=0)


def test_packed_forward_equals_padded_and_transformers():
    """Dense layers on real tokens only (Packing) change no logit, whatever the padding looks like."""
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY, num_labels=3)).eval()
    ours = BertForSequenceClassification(BertConfig.from_dict(hf.config.to_dict())).eval()
    ours.load_hf_state_dict(hf.state_dict())
    ids, mask, types = _batch(B=5, T=16)
    mask[3] = 0
    mask[3, 4:9] = 1          # padded on the left and right: position 0 is padding
    mask[4, 1:] = 0           # one real token
    with torch.no_grad():
        padded = ours(ids, mask, types).logits
        ours.bert.packed = True
        packed = ours(ids, mask, types).logits
        seq, _ = ours.bert(ids, mask, types)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed, _hf_logits(hf, ids, mask, types), atol=1e-5, rtol=0)
    assert seq.shape == (5, 16, 32) and seq[2, 3:].abs().sum() == 0   # zeros where rows were padded


def test_scratch_checkpoint_loads_in_transformers(tmp_path, minilm_path):
    ours = BertForSequenceClassification.from_pretrained(minilm_path, labels=["negative", "positive"]).eval()
    ours.save_pretrained(tmp_path / "ck")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "ck").eval()
    assert hf.config.id2label == {0: "negative", 1: "positive"}
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ck")
    enc = tok(["what a lovely day", "the train was late again and nobody said why"], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        ours_logits = ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).logits
    hf_logits = _hf_logits(hf, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    torch.testing.assert_close(ours_logits, hf_logits, atol=1e-5, rtol=0)


def test_transformers_checkpoint_loads_in_scratch(tmp_path, minilm_path):
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    batch = _batch(vocab=30522, T=20)
    with torch.no_grad():
        torch.testing.assert_close(ours(*batch).logits, _hf_logits(hf, *batch), atol=1e-5, rtol=0)


def test_missing_head_is_initialised_and_named_once(minilm_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        BertForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    messages = [str(w.message) for w in caught if "freshly initialised" in str(w.message)]
    assert len(messages) == 1 and "classifier.weight" in messages[0] and "bert.encoder" not in messages[0]


def test_old_gamma_beta_names_and_bert_prefix(tmp_path):
    torch.manual_seed(1)
    ref = BertForSequenceClassification(BertConfig(**TINY)).eval()
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in ref.state_dict().items()}
    other = BertForSequenceClassification(BertConfig(**TINY)).eval()
    other.load_hf_state_dict(renamed)
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(other(*batch).logits, ref(*batch).logits, atol=0, rtol=0)
    # a BertModel-style checkpoint: no `bert.` prefix, no classifier
    bare = {k[len("bert."):]: v for k, v in ref.state_dict().items() if k.startswith("bert.")}
    with pytest.warns(UserWarning, match="classifier"):
        BertForSequenceClassification(BertConfig(**TINY)).load_hf_state_dict(bare)


def test_unexpected_and_misshaped_keys_are_errors():
    model = BertForSequenceClassification(BertConfig(**TINY))
    state = dict(model.state_dict())
    with pytest.raises(CheckpointError, match="bert.encoder.layer.0.attention.self.rotary"):
        model.load_hf_state_dict({**state, "bert.encoder.layer.0.attention.self.rotary": torch.zeros(1)})
    state["bert.embeddings.word_embeddings.weight"] = torch.zeros(7, 32)
    with pytest.raises(CheckpointError, match=r"word_embeddings.weight: checkpoint \(7, 32\)"):
        model.load_hf_state_dict(state)


def test_other_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "hidden_size": 32}))
    with pytest.raises(ConfigError, match="roberta"):
        BertForSequenceClassification.from_pretrained(tmp_path)


def test_config_round_trip_keeps_unknown_keys(tmp_path):
    d = {**TINY, "model_type": "bert", "transformers_version": "4.8.2", "id2label": {"0": "a", "1": "b", "2": "c"}}
    cfg = BertConfig.from_dict(d)
    cfg.to_json_file(tmp_path / "config.json")
    back = json.loads((tmp_path / "config.json").read_text())
    assert back["transformers_version"] == "4.8.2" and back["label2id"] == {"a": 0, "b": 1, "c": 2}
    assert BertConfig.from_json_file(tmp_path / "config.json").labels == ["a", "b", "c"]


def test_tabular_model_uses_standardised_features():
    cfg = BertConfig(**TINY, num_tabular_features=2, tabular_mean=[10.0, 0.0], tabular_std=[2.0, 1.0])
    model = BertForSequenceClassification(cfg).eval()
    ids, mask, types = _batch()
    feats = torch.tensor([[10.0, 0.0]] * 3)
    with torch.no_grad():
        base = model(ids, mask, types, features=feats).logits
        moved = model(ids, mask, types, features=feats + torch.tensor([2.0, 0.0])).logits
        w = model.classifier.weight[:, -2]  # feature 0 standardised moves by exactly 1.0
    torch.testing.assert_close(moved - base, w.expand_as(base), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="features"):
        model(ids, mask, types)


PARAM_COUNTS_BERT_BASE = {
    # the reference study's tables (BERT-base-uncased, 2 labels); tabular = one classifier over 768 + 5
    "full": 109_483_778,
    "tabular5": 109_483_788,
    "lora_r8": 296_450,
    "lora_r1": 38_402,
    "lora_r8_last4": 99_842,
    "classifier": 1_538,
    "classifier+1": 7_089_410,
}


@pytest.mark.parametrize("variant", sorted(PARAM_COUNTS_BERT_BASE))
def test_trainable_parameter_counts_match_reference_study(variant):
    from training.lora import LoRAConfig, apply_lora, freeze_for_strategy

    cfg = BertConfig(num_tabular_features=5 if variant == "tabular5" else 0)
    with torch.device("meta"):  # shapes only: nothing to allocate or initialise
        model = BertForSequenceClassification(cfg)
    if variant.startswith("lora"):
        r = 1 if variant == "lora_r1" else 8
        apply_lora(model, LoRAConfig(r=r, layers=(8, 9, 10, 11) if variant.endswith("last4") else None))
    elif variant.startswith("classifier"):
        freeze_for_strategy(model, variant)
    assert model.num_parameters(trainable_only=True) == PARAM_COUNTS_BERT_BASE[variant]


def test_save_pretrained_without_tokenizer_files_warns_and_saves_the_model(tmp_path):
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bare")     # no tokenizer anywhere
    model = BertForSequenceClassification.from_pretrained(tmp_path / "bare")
    with pytest.warns(UserWarning, match="saved without tokenizer files"):
        model.save_pretrained(tmp_path / "copy")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["config.json", "labels.txt", "model.safetensors"]
    again = BertForSequenceClassification.from_pretrained(tmp_path / "copy")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(CheckpointError, match="no tokenizer.json or vocab.txt"):   # asked for, not there
        model.save_pretrained(tmp_path / "asked", tokenizer_from=tmp_path / "bare")
    assert not (tmp_path / "asked").exists()
