"""What ``part-point-ros-stress`` (ros.stress) sends to a live graph, and how it judges the answers.

Fuzzed PointPart requests (``fuzz_query``, ``fuzz_image``), camera-data faults (``faults``: broken
camera_info, colour / depth of wrong sizes, encodings, values, data lengths; part points the depth
fusion must refuse), and the checks of an answer and of a grasp pose (``bad_answer``, ``bad_pose``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image

from part_point_ros.msg import PartPoint, PartPointArray
from part_point_ros.srv import PointPart

QUERIES = ("the handle of the mug", "the blade of the knife", "the lid of the pot", "the cap of the bottle")
SPECIAL = ("<image>", "</s>", "<s>", "<unk>", "<|im_start|>", "<|image_pad|>", "<pad>")
ENCODINGS = (*"rgb8 bgr8 mono8 mono16 16UC1 32FC1 rgba8 bgra8 64FC1 yuv422".split(), "", "??")
BYTES = {"mono8": 1, "mono16": 2, "16UC1": 2, "32FC1": 4, "rgba8": 4, "bgra8": 4, "64FC1": 8}
FRAMES = ("base_link", "camera_color_optical_frame", "nowhere", "ü/../\t", "f" * 300)
METHODS = ("a2p", "attention", "text", "sam", "A2P", "🙂")
MAX_POSITION_M = 1000.0


def bad_answer(r: PointPart.Response, size: tuple[int, int] | None) -> str:
    """'' for a sane answer, else what is wrong with it (``size``: the image's width, height)."""
    if "\n" in r.message or "internal error" in r.message:
        return f"message {r.message[:160]!r}"
    if not r.success:
        return ""
    p = r.point
    if not all(math.isfinite(x) for x in (p.u, p.v, p.score)):
        return f"success with u, v, score = {p.u}, {p.v}, {p.score}"
    if size and not (-0.5 <= p.u <= size[0] - 0.5 and -0.5 <= p.v <= size[1] - 0.5):
        return f"success off the {size[0]}x{size[1]} image at ({p.u:.1f}, {p.v:.1f})"
    return bad_pose(r.grasp_pose) if r.has_grasp_pose else ""


def bad_pose(pose: PoseStamped) -> str:
    p, q = pose.pose.position, pose.pose.orientation
    xyz, quat = np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])
    if not (np.all(np.isfinite(xyz)) and np.all(np.isfinite(quat))):
        return f"non-finite pose {xyz} {quat}"
    if np.abs(xyz).max() > MAX_POSITION_M or abs(np.linalg.norm(quat) - 1.0) > 1e-3:
        return f"absurd pose {xyz} {quat}"
    return ""


# ---------------------------------------------------------------------- fuzzed requests
def fuzz_query(rng: np.random.Generator, queries: Sequence[str] = QUERIES) -> str:
    kind, base = int(rng.integers(12)), str(rng.choice(queries))  # kinds 3 and 5 .. 11 are valid
    if kind == 0:
        return ""
    if kind == 1:
        return "".join(rng.choice([" ", "\t", "\n", "\u200b", "\u3000"], size=int(rng.integers(1, 20))))
    if kind == 2:
        return base * int(rng.integers(30, 4000))  # ~600 .. 100k characters
    if kind == 3:  # any code point but surrogates (not encodable)
        points = rng.integers(1, 0x2FFFF, size=int(rng.integers(1, 200)))
        return "".join(chr(int(c)) for c in points if not 0xD800 <= c <= 0xDFFF)
    if kind == 4:
        cut = int(rng.integers(len(base) + 1))
        return base[:cut] + str(rng.choice(SPECIAL)) + base[cut:]
    if kind == 5:
        return base + "".join(chr(int(c)) for c in rng.integers(0, 32, size=5)) + "\r\n" + base
    if kind == 6:
        return "\u202e" + base + " 🙂\u0301\u0301 ش 漢字"
    return base


def fuzz_image(rng: np.random.Generator, stamp: TimeMsg) -> tuple[Image, tuple[int, int] | None]:
    """A random sensor_msgs/Image and its size when the node would use it (None: the latest frame)."""
    msg = Image()
    if rng.random() < 0.3:
        return msg, None
    sizes = [0, 1, 2, 3, int(rng.integers(4, 64)), int(rng.integers(64, 640)), int(rng.integers(64, 640))]
    w, h = int(rng.choice(sizes + [1920] * (rng.random() < 0.05))), int(rng.choice(sizes))
    if rng.random() < 0.02:  # huge, without the data to match
        w, h = int(rng.integers(10_000, 100_000)), int(rng.integers(10_000, 100_000))
    enc = str(rng.choice(("rgb8", "bgr8"))) if rng.random() < 0.6 else str(rng.choice(ENCODINGS))
    step = int(np.clip(w * BYTES.get(enc, 3) + rng.choice([0, 0, 0, 1, 7, -1]), 0, 2**32 - 1))
    n = h * step if h * step < 50_000_000 else 0
    n = int(rng.choice([n, n, n, n // 2, n + 13, 0]))
    msg.width, msg.height, msg.encoding, msg.step = w, h, enc, step
    msg.is_bigendian = int(rng.random() < 0.1)
    msg.data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    msg.header.frame_id = str(rng.choice(("", "camera_color_optical_frame", "nowhere")))
    msg.header.stamp = stamp if rng.random() < 0.7 else TimeMsg(sec=int(rng.integers(0, 2**31 - 1)))
    return msg, ((w, h) if w > 0 and h > 0 else None)


# ---------------------------------------------------------------------- camera faults
Fault = Callable[[TimeMsg], list[tuple[str, object]]]  # stamp -> (topic key, message) pairs


def faults(info: CameraInfo, rgb: np.ndarray) -> dict[str, Fault]:
    """The camera faults, from a valid camera_info and a colour frame (H, W, 3) of its size."""
    w, h, frame = info.width, info.height, info.header.frame_id

    def image(pixels: np.ndarray, encoding: str, cut: int = 0) -> Image:
        data = np.ascontiguousarray(pixels).tobytes()
        step = pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1) * pixels.itemsize
        msg = Image(width=pixels.shape[1], height=pixels.shape[0], encoding=encoding, step=step)
        msg.data, msg.header.frame_id = data[: len(data) - cut], frame
        return msg

    def broken(name: str, index: int, value: float, size: tuple[int, int] = (w, h)) -> Fault:
        def make(stamp):
            bad = CameraInfo(width=size[0], height=size[1], distortion_model=info.distortion_model)
            bad.d, bad.k, bad.r, bad.p = list(info.d) or [0.0] * 5, info.k, info.r, info.p
            values = list(getattr(bad, name))
            values[index] = value
            setattr(bad, name, values)
            bad.header.stamp, bad.header.frame_id = stamp, frame
            return [("info", bad)]

        return make

    def pair(color: Image, depth: Image | None = None) -> Fault:
        def make(stamp):
            msgs = [("color", color)] + ([("depth", depth)] if depth is not None else [])
            for _, msg in msgs:
                msg.header.stamp = stamp
            return msgs

        return make

    def points(stamp):  # found parts at pixels no depth frame has, for depth_fusion_node
        array = PartPointArray()
        array.header.stamp, array.header.frame_id = stamp, frame
        pixels = ((math.nan, 10.0), (math.inf, 5.0), (-math.inf, 0.0), (3e38, 1.0), (-5.0, 3.0), (w, h))
        for u, v in ((float(u), float(v)) for u, v in pixels):
            array.points.append(PartPoint(header=array.header, query="fuzz", u=u, v=v, score=1.0, found=True))
        array.points.append(PartPoint(query="no header", u=w / 2, v=h / 2, score=1.0, found=True))
        return [("color", colour), ("depth", depth[math.nan]), ("points", array)]

    colour = image(rgb, "rgb8")
    depth = {v: image(np.full((h, w), v, np.float32), "32FC1") for v in (math.nan, -1.0, math.inf, 0.0)}
    big = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)  # (H, W, 3) -> (2H, 2W, 3)
    return {
        "camera_info K[2][2]=0": broken("k", 8, 0.0),
        "camera_info NaN in K": broken("k", 2, math.nan),
        "camera_info NaN in D": broken("d", 0, math.nan),
        "camera_info fx=inf": broken("k", 0, math.inf),
        "camera_info fx=1e-300": broken("k", 0, 1e-300),
        "camera_info zero size": broken("k", 4, 1e6, (0, 0)),
        "colour 2x camera_info size": pair(image(big, "rgb8")),
        "depth 2x colour size": pair(colour, image(np.full((2 * h, 2 * w), 0.8, np.float32), "32FC1")),
        "NaN depth": pair(colour, depth[math.nan]),
        "negative depth": pair(colour, depth[-1.0]),
        "infinite depth": pair(colour, depth[math.inf]),
        "zero depth": pair(colour, depth[0.0]),
        "colour mono16": pair(image(rgb[..., 0].astype(np.uint16), "mono16")),
        "colour bgra8": pair(image(np.dstack([rgb, rgb[..., :1]]), "bgra8")),
        "depth rgb8": pair(colour, image(rgb, "rgb8")),
        "depth 64FC1": pair(colour, image(np.ones((h, w)), "64FC1")),
        "truncated colour and depth": pair(
            image(rgb, "rgb8", cut=100), image(np.full((h, w), 800, np.uint16), "16UC1", cut=100)
        ),
        "part points off the image or NaN": points,
    }
