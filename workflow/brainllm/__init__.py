"""brainllm: brain-activity encoding and decoding models from large language models.

One module per workflow stage (demo, ingest, preprocess, features, store, align,
encoding, metrics, contrastive, report); shared helpers live in ``brainllm.io``.
"""

__version__ = "0.1.0"
