"""LoRA: exact merge/unmerge, base names untouched, adapters that travel alone."""
import pytest
import torch

from training.config import BertConfig
from training.lora import (LoRAConfig, LoRALinear, apply_lora, load_adapter, merge_and_unload, merge_lora,
                           parse_layers, save_adapter, unmerge_lora)
from training.model import BertForSequenceClassification

TINY = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=32)


def _model(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(TINY).eval()


def _lora_model(cfg=LoRAConfig(r=4, dropout=0.0), seed=0):
    model = _model(seed)
    apply_lora(model, cfg)
    with torch.no_grad():  # a trained-looking adapter: B is zero at init, which would hide bugs
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.5)
    return model


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 100, (2, 9), generator=g)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def test_base_checkpoint_names_are_kept_and_only_adapters_train():
    base = _model()
    model = _lora_model()
    assert set(base.state_dict()) <= set(model.state_dict())
    model.load_state_dict(base.state_dict(), strict=False)  # a base checkpoint loads untouched
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or n.startswith("classifier.") for n in trainable)
    assert {n.split(".")[-2] for n in trainable if "lora_" in n} == {"query", "value"}


def test_fresh_adapter_changes_nothing():
    base, model = _model(), _model()
    apply_lora(model, LoRAConfig(r=4, dropout=0.0))
    with torch.no_grad():
        torch.testing.assert_close(model(*_batch()).logits, base(*_batch()).logits, atol=0, rtol=0)


def test_merge_equals_unmerged_and_unmerge_restores_exactly():
    model = _lora_model()
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        unmerged = model(*_batch()).logits
        merge_lora(model)
        merged = model(*_batch()).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert not torch.equal(model.state_dict()["bert.encoder.layer.0.attention.self.query.weight"],
                           weights_before["bert.encoder.layer.0.attention.self.query.weight"])
    unmerge_lora(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights_before[k]), k


def test_merge_and_unload_gives_a_plain_bert():
    model = _lora_model()
    with torch.no_grad():
        expected = model(*_batch()).logits
    merge_and_unload(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    plain = _model(seed=9)
    plain.load_state_dict(model.state_dict())  # strict: exactly the base names
    with torch.no_grad():
        torch.testing.assert_close(plain(*_batch()).logits, expected, atol=1e-5, rtol=0)


def test_saved_adapter_reloads_into_fresh_base(tmp_path):
    cfg = LoRAConfig(r=2, alpha=4, dropout=0.0, layers=(1, 2))
    model = _lora_model(cfg)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    base_size = sum(v.numel() for v in _model().state_dict().values())
    from safetensors.torch import load_file
    assert sum(v.numel() for v in load_file(path).values()) < base_size / 10
    fresh = _model()  # same base weights (same seed), no LoRA yet
    loaded_cfg = load_adapter(fresh, path)
    assert loaded_cfg.layers == (1, 2) and loaded_cfg.r == 2
    with torch.no_grad():
        torch.testing.assert_close(fresh(*_batch()).logits, model(*_batch()).logits, atol=1e-6, rtol=0)


def test_layer_selection():
    assert parse_layers("last4", 12) == (8, 9, 10, 11)
    assert parse_layers("first2", 12) == (0, 1)
    assert parse_layers("all", 12) is None
    with pytest.raises(ValueError, match="do not exist"):
        parse_layers("0,12", 12)
    model = _model()
    wrapped = apply_lora(model, LoRAConfig(r=1, layers=(2,)))
    assert wrapped == ["bert.encoder.layer.2.attention.self.query", "bert.encoder.layer.2.attention.self.value"]
