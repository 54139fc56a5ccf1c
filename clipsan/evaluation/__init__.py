"""Zero-shot evaluation: templates, the eval loop, and the metrics it reports.

templates.py  the prompt template sets (and template files)
loader.py     a labelled set as batches of model pixels
zeroshot.py   class-text embeddings and the CA@k / ASR@k loop (towers under Runtime.encode)
metrics.py    CA@k / ASR@k from logits
"""
