"""The second backbone family: VideoMAE's ViT as one joint trunk for video and text (SimVTP).

Same conventions as ``modules.clip``: architectures as JSON data (``model_configs/``), one loader
with one-line errors (``load_videomae``: official VideoMAE, Hugging Face, SimVTP, our safetensors),
one factory (``build_joint_trunk``), parity with ``transformers.VideoMAEModel`` (tests).

Public API::

    build_joint_trunk(arch, checkpoint=None, bert_path=None)  # -> JointTrunk (+ .vocabulary, .source)
    trunk.embed_video(video)            # (B, T, 3, H, W) -> (B, N, W) tokens in (t, h, w) order
    trunk.embed_text(ids)               # (B, L) -> (B, L, W) through BERT's embedding layer
    trunk(tokens, valid)                # blocks over any token sequence, key-padding mask, final norm
    load_videomae(path) / save_videomae(trunk, path)
    list_architectures()                # ['ViT-B-16', 'ViT-L-16', 'ViT-S-16', 'tiny']
"""
from .config import DecoderConfig, VideoMAEConfig, get_config, is_architecture, list_architectures
from .loading import VideoMAEWeights, load_videomae, save_videomae
from .model import add_videomae_args, build_joint_trunk, trunk_from_args
from .text import TextVocabulary, bert_vocabulary, clip_vocabulary
from .transformer import Block, JointTrunk, TubeletEmbedding, sincos_table

__all__ = [
    "Block", "DecoderConfig", "JointTrunk", "TextVocabulary", "TubeletEmbedding", "VideoMAEConfig", "VideoMAEWeights",
    "add_videomae_args", "bert_vocabulary", "build_joint_trunk", "clip_vocabulary", "get_config", "is_architecture",
    "list_architectures", "load_videomae", "save_videomae", "sincos_table", "trunk_from_args",
]
