"""The model families clipsan reads, trains and scans (plain data).

``clip``: the softmax contrastive loss with a learned temperature; ``siglip``: the sigmoid pairwise
loss with a learned logit bias as well (docs/siglip.md). Both share image towers, so scan's signals
read them alike.
"""

MODEL_FAMILIES = ("clip", "siglip")
