"""Peak learning rates that `python -m training fit` and the experiments grid start from.

LoRA trains 0.3% of the weights and needs a larger step: at 5e-4 a 2,000-tweet, 2-epoch run left
LoRA r8 1.2 points behind full fine-tuning (85.6% vs 86.8%); at 1e-3 it matched it (86.9%). A lone
linear head (classifier-only training) needs a linear probe's rate too: at 5e-5 it barely moves in
two epochs.
"""
LR_FULL = 5e-5
LR_LORA = 1e-3
LR_HEAD_ONLY = 1e-3
LR_DISTILL = 1e-4
