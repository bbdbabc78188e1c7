"""Method heads. Importing this package registers every built-in head."""
from .base import HEADS, RetrievalHead, get_head, list_heads, register_head, symmetric_infonce
from . import clip4clip  # noqa: F401  (registers meanP, seqLSTM, seqTransf, tightTransf)

__all__ = ["HEADS", "RetrievalHead", "get_head", "list_heads", "register_head", "symmetric_infonce"]
