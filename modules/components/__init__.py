"""Pieces several heads share (HMMC now; T2VLP and SimVTP next): a momentum twin, feature queues and
the queue InfoNCE loss, a BERT-style masker, a Hugging Face text tower. None of them imports a head or
the engine."""
from .losses import queue_infonce
from .masking import BertMasker, MaskedText
from .momentum import MomentumTwin
from .queue import FeatureQueue

__all__ = ["BertMasker", "FeatureQueue", "MaskedText", "MomentumTwin", "queue_infonce"]
