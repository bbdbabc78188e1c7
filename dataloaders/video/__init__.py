"""Video reading for UniVTR: index-first frame sampling over decord / cv2 / PyAV / torchcodec / frame LMDB.

    from dataloaders.video import VideoClipLoader
    loader = VideoClipLoader(max_frames=12, mode="clip4clip")
    video, mask = loader("videos/video7010.mp4")   # (12, 3, 224, 224) float32, (12,) int64

See docs/video.md for the sampling modes, backends, preprocessing tools and benchmark.
"""
from .backends import AUTO_ORDER, VideoBytes, VideoInfo, available_backends, open_reader
from .errors import (
    EmptyVideoError, EmptyWindowError, UnsupportedCodecError, VideoDecodeError, VideoNotFoundError)
from .loader import VideoClipLoader, add_video_args, probe
from .sampling import MODES, sample_indices
from .transforms import CLIP_MEAN, CLIP_STD, AugmentConfig

__all__ = [
    "AUTO_ORDER", "AugmentConfig", "CLIP_MEAN", "CLIP_STD", "EmptyVideoError", "EmptyWindowError", "MODES",
    "UnsupportedCodecError", "VideoBytes", "VideoClipLoader", "VideoDecodeError", "VideoInfo", "VideoNotFoundError",
    "add_video_args", "available_backends", "open_reader", "probe", "sample_indices",
]
