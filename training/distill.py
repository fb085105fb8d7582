"""Knowledge distillation: a smaller student learns the teacher's softened probabilities.

    loss = mix * KL(softmax(t/T) || softmax(s/T)) * T^2 + (1 - mix) * hard-label loss

(multi-label: BCE of sigmoid(s/T) against sigmoid(t/T), times T^2, in the same mix). The T^2 keeps
the soft term's gradients on the hard term's scale as T grows (Hinton et al., 2015).

Students: `student_from_layers` copies some of the teacher's encoder layers (plus its embeddings,
pooler and head) into a shallower BERT; `student_from_config` builds any smaller BERT from a config
(random init); `student_from_checkpoint` loads another pretrained BERT. All of them must share the
teacher's tokenizer, because the teacher's logits are computed once on the teacher's token ids.

The training loop is the trainer's: `DistillLoss` is its loss hook.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from contract.errors import UserError
from training.config import BertConfig
from training.data import load_tokenizer
from training.model import BertForSequenceClassification


class DistillError(UserError, ValueError):
    """A student/teacher pair that cannot work together; the message says why."""


class DistillLoss:
    """Trainer loss hook. `setup` (called by the trainer) computes the teacher's logits on the training
    split once; each step looks them up by the batch's dataset positions."""

    def __init__(self, teacher: BertForSequenceClassification, temperature: float = 2.0, mix: float = 0.5):
        if temperature <= 0:
            raise DistillError(f"--temperature must be > 0, got {temperature}")
        if not 0.0 <= mix <= 1.0:
            raise DistillError(f"--mix must be within [0, 1], got {mix}")
        self.teacher, self.T, self.mix = teacher, temperature, mix
        self.teacher_logits: torch.Tensor | None = None

    def setup(self, trainer) -> None:
        teacher = self.teacher.to(trainer.device)
        self.teacher_logits = torch.from_numpy(trainer.predict(teacher, trainer.encoded["train"])).to(trainer.device)
        trainer.run_info["teacher_test"] = trainer.evaluate("test", model=teacher)
        self.teacher.cpu()

    def soft_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
        T = self.T
        if multi_label:
            return F.binary_cross_entropy_with_logits(student_logits / T, torch.sigmoid(teacher_logits / T)) * T * T
        return F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.log_softmax(teacher_logits / T, dim=-1),
                        log_target=True, reduction="batchmean") * T * T

    def __call__(self, logits: torch.Tensor, batch: dict, model) -> torch.Tensor:
        if self.teacher_logits is None:
            raise RuntimeError("DistillLoss.setup(trainer) was not called")
        t = self.teacher_logits[batch["index"]]
        soft = self.soft_loss(logits, t, model.config.multi_label)
        if self.mix == 1.0:
            return soft
        return self.mix * soft + (1.0 - self.mix) * model.loss(logits, batch["labels"])


# ---- students --------------------------------------------------------------------------------
def student_from_layers(teacher: BertForSequenceClassification, layers: list[int]) -> BertForSequenceClassification:
    """A BERT with `layers` of the teacher (in that order), and the teacher's embeddings, pooler and head."""
    n = teacher.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < n]
    if not layers or bad:
        raise DistillError(f"--student-layers {layers}: the teacher has layers 0..{n - 1}")
    student = BertForSequenceClassification(dataclasses.replace(teacher.config, num_hidden_layers=len(layers)))
    state = {}
    for k, v in teacher.state_dict().items():
        m = re.match(r"bert\.encoder\.layer\.(\d+)\.(.+)", k)
        if m is None:
            state[k] = v.clone()
        elif int(m.group(1)) in layers:
            state[f"bert.encoder.layer.{layers.index(int(m.group(1)))}.{m.group(2)}"] = v.clone()
    student.load_state_dict(state, strict=True)
    student.source_folder = getattr(teacher, "source_folder", None)
    return student


def _with_teacher_head(config: BertConfig, teacher: BertForSequenceClassification) -> BertConfig:
    t = teacher.config
    return dataclasses.replace(config, id2label=dict(t.id2label), problem_type=t.problem_type,
                               num_tabular_features=t.num_tabular_features, tabular_mean=t.tabular_mean,
                               tabular_std=t.tabular_std, tabular_feature_names=t.tabular_feature_names)


def student_from_config(teacher: BertForSequenceClassification, config_path) -> BertForSequenceClassification:
    """Any (smaller) BERT shape from a config.json, randomly initialised, with the teacher's vocabulary."""
    config = _with_teacher_head(BertConfig.from_json_file(config_path), teacher)
    if config.vocab_size != teacher.config.vocab_size:
        raise DistillError(f"{config_path}: vocab_size {config.vocab_size} differs from the teacher's "
                           f"{teacher.config.vocab_size}; the student must use the teacher's tokenizer")
    student = BertForSequenceClassification(config)
    student.source_folder = getattr(teacher, "source_folder", None)
    return student


def student_from_checkpoint(teacher: BertForSequenceClassification, folder) -> BertForSequenceClassification:
    """Another pretrained BERT checkpoint as the student; its tokenizer must equal the teacher's."""
    t_vocab = load_tokenizer(teacher.source_folder).get_vocab()
    if load_tokenizer(folder).get_vocab() != t_vocab:
        raise DistillError(f"{folder}: its tokenizer's vocabulary differs from the teacher's "
                           f"({teacher.source_folder}); distillation here needs the same token ids")
    t = teacher.config
    overrides = {}
    if t.num_tabular_features:
        overrides = dict(num_tabular_features=t.num_tabular_features, tabular_mean=t.tabular_mean,
                         tabular_std=t.tabular_std, tabular_feature_names=t.tabular_feature_names)
    return BertForSequenceClassification.from_pretrained(folder, labels=t.labels, problem_type=t.problem_type,
                                                         **overrides)


def load_teacher(folder) -> BertForSequenceClassification:
    """A fine-tuned checkpoint (its head must be trained: a fresh head would teach noise)."""
    folder = Path(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        teacher = BertForSequenceClassification.from_pretrained(folder)
    fresh = [str(w.message) for w in caught if "freshly initialised" in str(w.message)]
    if any("classifier." in m for m in fresh):
        raise DistillError(f"{folder}: has no trained classifier head; the teacher must be a fine-tuned "
                           f"checkpoint (e.g. the checkpoint/ of a `python -m training fit` run)")
    for w in caught:  # anything else (a fresh pooler, say) is still worth seeing
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for p in teacher.parameters():
        p.requires_grad = False
    return teacher.eval()
