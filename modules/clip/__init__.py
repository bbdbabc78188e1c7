"""The shared CLIP backbone: architectures as data, one transformer with hooks, every checkpoint format.

Public API::

    build_clip(config)                 # architecture name or dict -> randomly initialised CLIP
    load_clip(name_or_path, device)    # pretrained CLIP from OpenAI .pt, HF folder, or our safetensors
    tokenize(texts, max_words=32)      # -> (ids, mask), LongTensors (N, max_words)
    list_architectures()
"""
from .config import CLIPConfig, TextConfig, VisionConfig, get_config, list_architectures
from .loading import CheckpointError, load_clip, resolve_checkpoint, save_clip
from .model import CLIP, TextTransformer, VisionTransformer, build_clip
from .tokenizer import CLIPTokenizer, get_tokenizer, tokenize
from .transformer import Attention, BlockHook, JointFrames, LayerNorm, ResidualBlock, TokenTap, Transformer

__all__ = [
    "CLIP", "CLIPConfig", "CLIPTokenizer", "CheckpointError", "TextConfig", "VisionConfig", "TextTransformer",
    "VisionTransformer", "Attention", "BlockHook", "JointFrames", "LayerNorm", "ResidualBlock", "TokenTap",
    "Transformer", "build_clip", "get_config", "get_tokenizer", "list_architectures", "load_clip",
    "resolve_checkpoint", "save_clip", "tokenize",
]
