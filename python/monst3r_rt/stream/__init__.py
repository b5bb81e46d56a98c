"""Real-time streaming mode: frames in one at a time, pose, depth, intrinsics, confidence and
dynamic mask out per frame (:class:`Stream`, :func:`stream_video`)."""

from .config import FrameResult, StreamConfig
from .session import Stream
from .source import FrameSource, VideoStream, stream_video

__all__ = ["Stream", "StreamConfig", "FrameResult", "stream_video", "VideoStream", "FrameSource"]
