"""Method heads. Importing this package registers every built-in head."""
from .base import HEADS, RetrievalHead, add_head_args, get_head, list_heads, register_head, symmetric_infonce
from . import clip4clip  # noqa: F401  (registers meanP, seqLSTM, seqTransf, tightTransf)
from . import dgl, ump  # noqa: F401  (registers the prompt-tuning heads dgl and ump)
from .hmmc import HMMC  # registers hmmc (HMMC pre-training and fine-tuning)
from .t2vlp import T2VLP  # registers t2vlp (tube tokens, fusion encoder, re-ranking)
from .simvtp import SimVTP  # registers simvtp (joint VideoMAE trunk, masked video-text autoencoding)

__all__ = ["HEADS", "HMMC", "RetrievalHead", "T2VLP", "add_head_args", "get_head", "list_heads", "register_head", "symmetric_infonce"]
