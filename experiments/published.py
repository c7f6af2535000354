"""The published numbers each reproduction is shown beside, and what a report says about them.

The paper: MIMIC-Learn's MNIST table (a CNN, five training-set sizes). The blog: ResNet-18 on CIFAR-10 with an
LLM choosing the learning rate. Data only: ``report.py`` prints it, ``arms.py`` runs each experiment's protocol.
"""

from __future__ import annotations

# The MIMIC-Learn paper's published table: (final val acc, max val acc, train acc). Its "validation" was the
# test set, and its 10% baseline row repeats the full-data row (likely a copy error).
PAPER_TABLE = {
    "full": {"baseline": (0.9822, 0.9822, 0.9988), "llm": (0.9805, 0.9810, 0.9984)},
    "6000": {"baseline": (0.9822, 0.9822, 0.9988), "llm": (0.9371, 0.9371, 0.9943)},
    "600": {"baseline": (0.9399, 0.9399, 0.9983), "llm": (0.9371, 0.9371, 0.9933)},
    "100": {"baseline": (0.6654, 0.6713, 0.9200), "llm": (0.6654, 0.6654, 0.9200)},
    "10": {"baseline": (0.2813, 0.2813, 0.9000), "llm": (0.2755, 0.2755, 1.0000)},
}
# The blog's final test accuracy (%) per arm (ResNet-18, CIFAR-10, 20 epochs).
BLOG_TABLE = {
    "steplr": 88.57,
    "every3_losses": 88.57,
    "every5_losses": 88.57,
    "losses": 71.90,
    "losses+lr_history": 72.56,
    "losses+grad_norms": 66.66,
    "losses+per_class": 79.95,
}
# What a report says about the published numbers (checked against PAPER_TABLE / BLOG_TABLE above).
PAPER_NOTES = [
    "Notes on the published numbers: the paper *claimed* a low-data benefit, but its own table shows the LLM arm",
    "at or below its baseline in every regime (final validation accuracy: full 0.9805 vs 0.9822, 6000 0.9371 vs",
    '0.9822, 600 0.9371 vs 0.9399, 100 0.6654 vs 0.6654, 10 0.2755 vs 0.2813). That its "validation" accuracy',
    "was measured on the MNIST **test** set is an inference, not a statement of the paper: its full regime trains",
    "on all 60,000 training images, so no held-out validation split was left. Its table has duplicated rows:",
    "the 10% (6000) baseline row repeats the full-data baseline row exactly (likely a copy error); the 10% LLM",
    "row repeats the 1% (600) LLM row's final and max accuracy (0.9371 / 0.9371); at 100 samples the baseline",
    "and LLM arms have the same final and train accuracy (0.6654, 0.9200). Its low-data baselines sit 18–20",
    "points below a plain PyTorch loop of the same CNN (66.5 vs 84.7 % at 100 samples, 28.1 vs 48.3 % at 10;",
    "the loop: the paper's CNN, Adam 1e-3, batch 64, a 5,000-image validation split, 3 seeds, one fixed subset",
    "per regime; figures from issue 23, not re-measured in this report). Here validation is 5,000 images held",
    "out from the train split; test accuracy (10,000 test images) is reported only.",
    "",
]
BLOG_NOTES = [
    "The blog reported final *test* accuracy (%); its every-3/every-5 arms equal the baseline because every",
    "LLM reply failed its regex parse. Per-class accuracy here comes from the validation split, not test.",
    "",
]
# Epochs per cell in the paper's protocol, by regime.
PAPER_EPOCHS = {"full": 5, "6000": 5, "600": 30, "100": 30, "10": 30}
