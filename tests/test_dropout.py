"""The cheap CPU dropout (training/dropout.py) and the attention path that uses it in training."""
import pytest
import torch

from training.config import BertConfig
from training.dropout import Dropout, dropout, keep_mask
from training.model import BertForSequenceClassification


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_keeps_one_minus_p(p):
    torch.manual_seed(0)
    keep = keep_mask((1000, 1000), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.003      # 1e6 draws: SE 0.0005
    rows = keep.float().mean(dim=1)                                 # no row or column pattern
    assert rows.std().item() < 0.03 and keep.float().mean(dim=0).std().item() < 0.03


def test_seeded_runs_repeat_and_seeds_differ():
    torch.manual_seed(1)
    a = keep_mask((64, 97), 0.1)                 # odd size: the last int64 word is partly used
    torch.manual_seed(1)
    b = keep_mask((64, 97), 0.1)
    torch.manual_seed(2)
    c = keep_mask((64, 97), 0.1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dropout_scales_kept_values_and_its_gradient():
    torch.manual_seed(0)
    x = (torch.rand(256, 128) + 0.5).requires_grad_()
    y = dropout(x, 0.25)
    kept = y != 0
    assert 0.7 < kept.float().mean().item() < 0.8
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)


def test_eval_zero_and_one():
    x = torch.randn(8, 8)
    m = Dropout(0.3).eval()
    assert m(x) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_training_attention_without_dropping_equals_eval():
    """The spelled-out training attention (mask, softmax, dropout, @v) computes what SDPA does."""
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, hidden_dropout_prob=1e-9, attention_probs_dropout_prob=1e-9)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0                              # right padding
    mask[2, :4] = 0                              # left padding
    with torch.no_grad():
        want = model.eval()(ids, attention_mask=mask).logits
        got = model.train()(ids, attention_mask=mask).logits     # p rounds to 0: nothing dropped
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_training_drops_attention():
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).train()
    ids = torch.randint(5, 100, (2, 10))
    a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b)              # two masks, two answers
