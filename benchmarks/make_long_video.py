"""Write the decoding benchmark's long test video: H.264, GOP 250 (keyint_min 250, no scene-cut keyframes),
one slice per frame (frame-threaded encoder, as real files), 30 fps, with moving content.

    python benchmarks/make_long_video.py OUT.mp4 [--seconds 600] [--width 1280] [--height 720]
"""

import argparse

import av
import numpy as np


def write_long_video(path: str, seconds: int = 600, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_type = "FRAME"  # one slice per frame
        stream.options = {"g": "250", "keyint_min": "250", "sc_threshold": "0", "preset": "ultrafast", "crf": "28"}
        yy, xx = np.mgrid[0:height, 0:width]
        base = (xx + yy).astype(np.int32)
        looks = [
            np.stack([(base + 7 * k) % 256, (2 * base + k) % 256, np.full_like(base, 4 * k % 256)], -1).astype(
                np.uint8
            )
            for k in range(64)
        ]
        for i in range(seconds * fps):
            frame = looks[i % 64].copy()
            frame[(i * 3) % height : (i * 3) % height + 40] = 255  # a moving bar
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args()
    print(write_long_video(args.out, args.seconds, args.width, args.height))
