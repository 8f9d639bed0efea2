"""part_point_node: a lifecycle node that points at object parts from language (PartPointer).

Lifecycle (rclpy.lifecycle):
  configure   loads backbone + head (a failure -> FAILURE, reason logged in one line and kept in
              ``last_error``), creates the publishers, the ``/point_part`` service, the extrinsics
              subscription and starts the inference worker
  activate    subscribes to the camera (colour, camera_info, aligned depth) and the command topic,
              enables the publishers and the /diagnostics timer
  deactivate  unsubscribes; every queued request is answered at once and the running one when its
              inference ends (success false, "part_point_node is deactivating: ..."); the service
              answers "not active"
  cleanup     stops the worker, frees the model; the service stays (answering "not active"): it
              lives from the first configure to the node's end, so that a cleanup under load loses
              no request and no answer goes out on a destroyed service (``service_name`` cannot
              change once it exists)
  shutdown    as cleanup

Inputs:   image_topic (rgb8/bgr8), camera_info_topic, depth_topic (16UC1 mm / 32FC1 m, aligned to
          colour), command_topic (std_msgs/String: a query on the latest frame), extrinsics_topic
          (latched geometry_msgs/TransformStamped, e.g. from sim_camera_node).
Outputs:  points_topic (PartPointArray, header = image stamp + optical frame), heatmap_topic
          (32FC1 or mono8, image size), overlay_topic (rgb8), /diagnostics.
Services: /point_part (part_point_ros/srv/PointPart): one query; ``points`` holds every instance found.
          /point_parts (part_point_ros/srv/PointParts): several queries on ONE frame, one PartPoint
          each, in order: the frame is prefilled once and the queries' suffixes run in one forward,
          and the pointer keeps that frame's prefix, so later requests on the same frame reuse it.
          /teach_part (part_point_ros/srv/TeachPart), method pop: add an example (name, pixel, image or
          the latest frame) to a support set; clicked_point_topic (RViz "Publish Point",
          geometry_msgs/PointStamped in any TF frame) does the same: the point is projected into the
          latest colour frame and taught under ``teach_name`` (empty: the last query asked).
Masks:    with ``masks``, SAM (``mask_model``) segments each found part from its keypoints (LENS);
          the mask of the first query goes out on ``mask_topic`` (mono8, image size) and the grasp
          uses it (depth over mask ∩ window, x along an elongated part's principal axis).

Concurrency: inference runs in ONE worker thread fed by a bounded queue (``queue_size``). The
service callback is a coroutine in a reentrant callback group: it validates the request, queues a
job and awaits an rclpy Future that the worker completes, so no executor thread waits on inference
and a full queue is answered at once with "busy: N requests queued". The service's QoS keeps the last
SERVICE_DEPTH (1000) requests and replies, so a burst is answered (busy) rather than dropped by DDS.
A query holding a special token of the backbone's prompt (``<image>``, ``</s>``, ...) is refused.

camera_info is validated on receipt (ros.camera_buffer): an invalid one is rejected with one
throttled warning and the last valid one stays in use; colour, depth and camera_info must have one
size. A grasp pose is never NaN or infinite.

"Latest frame" is the newest colour frame that has an aligned depth frame within ``stamp_tolerance``
(camera streams are best effort: the newest frame's depth may be lost), else the newest colour frame;
it is refused when older than ``max_image_age_s`` by the node's clock.

Grasp poses (service only; ros.camera_buffer): the colour stamp picks the depth frame,
geometry.GraspLifter lifts the pixel, and the optical frame goes to the target frame by static
extrinsics (``extrinsics_file``, ``extrinsics.*``), the extrinsics topic, or tf2 when tf2_ros is
importable. A part that is found without a usable depth frame (none yet, none at that stamp, no valid
depth at the pixel, no transform) is answered has_grasp_pose: false with the reason in ``message``
and ``point.message`` and the 2D point filled; success is false unless ``require_grasp_pose`` is
false (clients that only want the 2D point). Points published on points_topic
carry the same 3D fields; depth_fusion_node lifts them again for the grasp_pose and marker topics.
"""

from __future__ import annotations

import gc
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped, PoseStamped, TransformStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from part_point_ros.errors import CheckpointError, InputError
from part_point_ros.grounding.inputs import check_image_size, check_query
from part_point_ros.grounding.result import PointResult, draw_overlay
from part_point_ros.msg import PartPoint, PartPointArray
from part_point_ros.ros.camera_buffer import (
    CameraBuffer,
    grasp_lifter,
    static_extrinsics,
    tf_listener,
    warn_on_drop,
)
from part_point_ros.ros.camera_buffer import one_line as _one_line  # the first line of an error
from part_point_ros.ros.conversions import image_to_numpy, numpy_to_image, point_msg, vector_msg
from part_point_ros.ros.params import PART_POINT_PARAMS, check_changes, declare
from part_point_ros.ros.qos import QOS_OVERRIDES, latched_qos, results_qos, sensor_qos, service_qos
from part_point_ros.ros.spin import ros_context, run_main
from part_point_ros.srv import PointPart, PointParts, TeachPart

NODE_NAME = "part_point_node"
COLOUR_ENCODINGS = ("rgb8", "bgr8")

_CONFIGURE_TIME = {s.name for s in PART_POINT_PARAMS if s.configure_time}
# The service's QoS: reliable, keep last SERVICE_DEPTH requests and replies; made once (the service
# outlives cleanup), for any queue_size. With qos.service_qos(queue_size) (queue_size + 100) the stress
# tool lost 32 of a 200-request burst: requests DDS replaced before the executor took them (one per
# pass of its wait set) and replies replaced before the client acknowledged them. KEEP_ALL lost none of
# a burst, but its reply writer waits for the slowest reader: in a 600 s soak at 30 Hz it timed out
# ("failed to send response (timeout)", rmw_fastrtps) and the service stopped answering (4623 requests
# lost). A deep KEEP_LAST loses neither.
SERVICE_DEPTH = 1000
_SERVICE_QOS = service_qos(1)
_SERVICE_QOS.depth = SERVICE_DEPTH
# Publishers and subscriptions made and destroyed in lifecycle transitions get no QoS event handlers:
# with rclpy 7 (Jazzy) a MultiThreadedExecutor thread that builds its wait set while another thread
# destroys an entity's event handler dies with InvalidHandle. Little is lost: the camera subscriptions
# (best effort, volatile) and the publishers (reliable) match every peer with a default profile; only a
# best-effort publisher on the command topic goes without the "incompatible QoS" warning.
_NO_SUB_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)
_NO_PUB_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)


class _Refused(Exception):
    """A request that cannot be served; the message is the answer."""


@dataclass
class _Job:
    queries: list[str]  # one (PointPart, commands) or several (PointParts) on one frame
    image: np.ndarray  # (H, W, 3) uint8 RGB
    header: Header  # stamp + optical frame of the image
    target_frame: str
    future: Future | None  # None for commands from the topic
    epoch: int = 0  # the node's activation it was queued in: a deactivation since answers it at once

    @property
    def query(self) -> str:
        return "; ".join(self.queries)


@dataclass
class _Answer:
    """One query's answer: its best point (with 3D and grasp pose when lifted) and every instance."""

    point: PartPoint
    instances: list[PartPoint]
    grasp_pose: PoseStamped | None = None
    message: str = ""  # the answer's one line (the point's own message is empty when all went well)


@dataclass
class _Outcome:
    success: bool
    message: str
    answers: list[_Answer]

    @classmethod
    def refused(cls, message: str, queries: list[str], header: Header | None = None) -> _Outcome:
        """Every query answered not found with ``message``."""
        points = [PartPoint(query=q[:200], message=message) for q in queries]
        if header is not None:
            for point in points:
                point.header = header
        return cls(False, message, [_Answer(point, [], None, message) for point in points])


@dataclass
class _Stats:
    served: int = 0
    failed: int = 0
    busy: int = 0
    last_latency_ms: float = float("nan")
    last_message: str = ""


class PartPointNode(LifecycleNode):
    """Language -> part point (+ grasp pose) on the latest camera frame or a given image."""

    def __init__(self, *, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        declare(self, PART_POINT_PARAMS)
        self._lifter = grasp_lifter(self._p)  # rebuilt when its parameters change, not per request
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self._wake = self.create_guard_condition(lambda: None)  # resumes awaiting service calls
        self.model_lock = threading.Lock()  # held by the worker during inference
        self.last_error = ""
        self.stats = _Stats()
        self._pointer: Any = None
        self._configured = False
        self._active = False
        self._jobs: queue.Queue | None = None  # None while no worker takes jobs
        self._queue_lock = threading.Lock()  # jobs are queued, or the queue closed, one at a time
        self._worker: threading.Thread | None = None
        self._in_flight = 0
        self._epoch = 0  # +1 at every deactivation (under _queue_lock): older jobs are answered why
        self._stopped_why = ""  # the answer of those jobs
        self._finalized = False
        self.camera = CameraBuffer(depth_size=1)
        self._tf_listener = None
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._service = None
        self._parts_service = None
        self._teach_service = None
        self._masker: Any = None
        self._last_query = ""  # what a clicked point teaches when teach_name is empty
        self._extrinsics_sub = None
        self._diag_timer = None

    # ------------------------------------------------------------------ parameters
    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        reason = check_changes(PART_POINT_PARAMS, params)
        changed = [p.name for p in params if self.has_parameter(p.name) and p.value != self._p(p.name)]
        if not reason and self._configured:
            late = [name for name in changed if name in _CONFIGURE_TIME]
            if late:
                names = ", ".join(late)
                reason = (
                    f"{names} is read on configure: deactivate and clean up, set it, then configure again"
                )
        services = (
            ("service_name", self._service),
            ("parts_service_name", self._parts_service),
            ("teach_service_name", self._teach_service),
        )
        for name, service in services:
            if not reason and service is not None and name in changed:
                reason = (
                    f"{name} cannot change once {service.service_name} exists: the service lives as long as "
                    "the node (a cleanup loses no request); start a node with the name you want"
                )
        if not reason:
            new = {p.name: p.value for p in params}
            try:
                grasp_lifter(lambda name: new.get(name, self._p(name)))
            except InputError as err:
                reason = str(err)
        return SetParametersResult(successful=not reason, reason=reason)

    def _after_set_parameters(self, params: list[Parameter]) -> None:
        self._lifter = grasp_lifter(self._p)  # validated in _on_set_parameters
        if self._pointer is not None and any(p.name == "score_threshold" for p in params):
            self._pointer.threshold = self._threshold(self._pointer)

    def _threshold(self, pointer: Any) -> float:
        """score_threshold, or (-1) the pointer's method default: for a2p the head's calibrated one."""
        value = self._p("score_threshold")
        return float(pointer.pointing.default_threshold) if value < 0 else float(value)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._pointer = self._load_pointer()
            self._masker = self._load_masker()
            static = static_extrinsics(self._p)
        except Exception as err:  # noqa: BLE001 - every loading failure is a FAILURE with its reason
            self._pointer = self._masker = None
            self.last_error = f"configure failed: {_one_line(err)}"
            self.get_logger().error(self.last_error)
            return TransitionCallbackReturn.FAILURE
        tf_buffer, self._tf_listener = tf_listener(self, self._p("use_tf"))
        self.camera = CameraBuffer(
            depth_size=self._p("depth_buffer_size"),
            static=static,
            tf_buffer=tf_buffer,
            depth_topic=self._p("depth_topic"),
            camera_info_topic=self._p("camera_info_topic"),
        )

        def publisher(msg_type, topic: str, qos):
            return self.create_lifecycle_publisher(msg_type, topic, qos, event_callbacks=_NO_PUB_EVENTS)

        self._pubs = {
            "points": publisher(PartPointArray, self._p("points_topic"), results_qos()),
            "heatmap": publisher(Image, self._p("heatmap_topic"), latched_qos()),
            "overlay": publisher(Image, self._p("overlay_topic"), latched_qos()),
            "diagnostics": publisher(DiagnosticArray, "/diagnostics", results_qos()),
        }
        if self._masker is not None:
            self._pubs["mask"] = publisher(Image, self._p("mask_topic"), latched_qos())
        if self._service is None:  # kept by cleanup: see the module docstring
            self._service = self.create_service(
                PointPart,
                self._p("service_name"),
                self._on_point_part,
                qos_profile=_SERVICE_QOS,
                callback_group=ReentrantCallbackGroup(),
            )
            self._parts_service = self.create_service(
                PointParts,
                self._p("parts_service_name"),
                self._on_point_parts,
                qos_profile=_SERVICE_QOS,
                callback_group=ReentrantCallbackGroup(),
            )
            self._teach_service = self.create_service(
                TeachPart,
                self._p("teach_service_name"),
                self._on_teach_part,
                qos_profile=_SERVICE_QOS,
                callback_group=ReentrantCallbackGroup(),
            )
        if self._p("extrinsics_topic"):
            self._extrinsics_sub = self.create_subscription(
                TransformStamped,
                self._p("extrinsics_topic"),
                warn_on_drop(self.camera.add_extrinsics, self.get_logger()),
                latched_qos(),
                event_callbacks=_NO_SUB_EVENTS,
            )
        jobs = queue.Queue(maxsize=self._p("queue_size"))
        self._worker = threading.Thread(
            target=self._work, args=(jobs,), name="part_point_inference", daemon=True
        )
        self._worker.start()
        with self._queue_lock:
            self._jobs = jobs
        self._configured = True
        self.last_error = ""
        info = self._pointer.backbone.info
        self.get_logger().info(
            f"configured: {self._pointer.method} on {info.name} ({self._p('device')}, {self._p('dtype')}); "
            f"serving {self._p('service_name')} and {self._p('parts_service_name')}"
        )
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        def camera_subscription(msg_type, topic: str, callback):
            return self.create_subscription(
                msg_type,
                self._p(topic),
                callback,
                sensor_qos(),
                qos_overriding_options=QOS_OVERRIDES,
                event_callbacks=_NO_SUB_EVENTS,
            )

        self._subs = [
            camera_subscription(Image, "image_topic", self.camera.add_color),
            camera_subscription(
                CameraInfo, "camera_info_topic", warn_on_drop(self.camera.add_camera_info, self.get_logger())
            ),
            camera_subscription(Image, "depth_topic", self.camera.add_depth),
            self.create_subscription(
                String,
                self._p("command_topic"),
                self._on_command,
                results_qos(),
                event_callbacks=_NO_SUB_EVENTS,
            ),
        ]
        if self._p("clicked_point_topic") and self._pointer is not None and self._pointer.method == "pop":
            self._subs.append(
                self.create_subscription(
                    PointStamped,
                    self._p("clicked_point_topic"),
                    self._on_clicked_point,
                    results_qos(),
                    event_callbacks=_NO_SUB_EVENTS,
                    callback_group=ReentrantCallbackGroup(),
                )
            )
        self._diag_timer = self.create_timer(self._p("diagnostics_period_s"), self._publish_diagnostics)
        with self._queue_lock:
            self._active = True
        self.get_logger().info(
            f"active: listening to {self._p('image_topic')} and {self._p('command_topic')}"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs("part_point_node is deactivating: try again when it is active")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown("part_point_node is cleaning up: configure and activate it, then try again")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._finalized = True
        self._teardown("part_point_node is shutting down")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown("part_point_node hit an error: configure and activate it, then try again")
        return TransitionCallbackReturn.SUCCESS

    def configure_and_activate(self) -> bool:
        """Both transitions from here (autostart, bringup); False with ``last_error`` on failure."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.last_error = self.last_error or "activate failed"
            return False
        return True

    def destroy_node(self) -> None:
        self._teardown("part_point_node is being destroyed")
        super().destroy_node()

    def _load_pointer(self) -> Any:
        method, head = self._p("method"), self._p("head") or None
        if method == "a2p" and head is None:
            raise CheckpointError(
                "parameter 'head' is empty: method a2p needs a trained head directory "
                "(set head, or use method attention/text with a backbone)"
            )
        looks_local = head is not None and (head.startswith(("/", ".", "~")) or head.count("/") != 1)
        if method == "a2p" and looks_local and not Path(head).expanduser().is_dir():
            raise CheckpointError(
                f"head {head!r} is not a directory: give a trained head (config.json + model.safetensors)"
            )
        from part_point_ros.grounding import PartPointer

        pointer = PartPointer.from_pretrained(
            backbone=self._p("backbone") or None,
            head=head,
            method=method,
            device=self._p("device"),
            dtype=self._p("dtype"),
            quantization=self._p("quantization") or None,
            heads=self._p("heads_file") or None,
            max_query_chars=self._p("max_query_chars"),
            max_image_pixels=self._p("max_image_pixels"),
            max_aspect_ratio=self._p("max_aspect_ratio"),
            **self._pop_options(method),
        )
        pointer.threshold = self._threshold(pointer)
        return pointer

    def _pop_options(self, method: str) -> dict[str, Any]:
        if method != "pop":
            return {}
        return {
            "extractor": self._p("extractor"),
            "extractor_model": self._p("extractor_model") or None,
            "support": self._p("support") or None,
            "support_root": self._p("support_root") or None,
            "support_fusion": self._p("support_fusion"),
        }

    def _load_masker(self) -> Any:
        """SAM for ``masks`` (None without): loaded on configure, like the pointer."""
        if not self._p("masks"):
            return None
        from part_point_ros.grounding.masks import PartMasker

        model, device = self._p("mask_model"), self._p("device")
        return (
            PartMasker.from_pretrained(model, device=device)
            if model
            else PartMasker.from_pretrained(device=device)
        )

    def _stop_inputs(self, why: str) -> None:
        """Stop taking requests and answer the queued ones (``why``); the running one is answered
        ``why`` when its inference ends. Subscriptions and the timer go (the service stays)."""
        with self._queue_lock:  # no job is queued after this until the next activation
            self._active = False
            self._epoch += 1
            self._stopped_why = why
            queued = []
            while self._jobs is not None:
                try:
                    queued.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
        for job in filter(None, queued):
            self._finish(job, _Outcome.refused(why, job.queries))
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    def _teardown(self, why: str) -> None:
        """Answer every queued and running request (``why``), stop the worker, free the model.

        The service is NOT destroyed: the executor may still hold answers to send on it (their
        futures completed here or by the worker, the coroutines not yet resumed), and DDS may hold
        requests not yet taken; both would be lost, and the first raise InvalidHandle in the
        executor. It answers "not active" until the next configure."""
        self._stop_inputs(why)
        with self._queue_lock:
            jobs, self._jobs = self._jobs, None
        if jobs is not None:
            jobs.put(None)  # empty (_stop_inputs drained it, nothing is queued since): stops the worker
        if self._worker is not None:
            self._worker.join()  # its running job, if any, ends and is answered ``why``
            self._worker = None
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self._extrinsics_sub is not None:
            self.destroy_subscription(self._extrinsics_sub)
            self._extrinsics_sub = None
        self._tf_listener = None
        with self.model_lock:
            device = self._p("device")
            self._pointer = self._masker = None
        self._configured = False
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ inputs
    def _on_command(self, msg: String) -> None:
        try:
            self._enqueue(self._make_job([msg.data], None, "", with_future=False))
            self._last_query = msg.data.strip()
        except Exception as err:  # noqa: BLE001 - a bad command is dropped with a warning, never fatal
            self.stats.failed += 1
            why = str(err) if isinstance(err, (_Refused, InputError)) else f"internal error: {_one_line(err)}"
            self.get_logger().warning(f"command {msg.data[:60]!r} dropped: {why}", throttle_duration_sec=1.0)

    # ------------------------------------------------------------------ the service
    async def _on_point_part(self, request, response):
        """Every request is answered: queued and awaited, or refused at once (busy, invalid, ...)."""
        start = time.perf_counter()
        outcome = await self._outcome([request.query], request)
        answer = outcome.answers[0]
        response.success = outcome.success
        response.message = outcome.message
        response.point = answer.point
        response.points = answer.instances
        response.has_grasp_pose = answer.grasp_pose is not None
        if answer.grasp_pose is not None:
            response.grasp_pose = answer.grasp_pose
        response.latency_ms = (time.perf_counter() - start) * 1000.0
        return response

    async def _on_point_parts(self, request, response):
        """Several queries on one frame; answered like ``_on_point_part``, one PartPoint per query."""
        start = time.perf_counter()
        queries = list(request.queries)
        limit = self._p("max_queries_per_request")
        if not queries or len(queries) > limit:
            self.stats.failed += 1
            response.success = False
            response.message = (
                f"{len(queries)} queries: a PointParts request takes 1 to {limit} (parameter "
                "max_queries_per_request)"
            )
        else:
            outcome = await self._outcome(queries, request)
            response.success = outcome.success
            response.message = outcome.message
            response.points = [answer.point for answer in outcome.answers]
        response.latency_ms = (time.perf_counter() - start) * 1000.0
        return response

    async def _outcome(self, queries: list[str], request: Any) -> _Outcome:
        """Queue the request's job and await its outcome, or the refusal (one line) at once."""
        try:
            job = self._make_job(queries, request.image, request.target_frame, method=request.method)
            self._enqueue(job)
            self._last_query = job.queries[-1]
        except Exception as err:  # noqa: BLE001 - a request that cannot be queued is answered why
            if isinstance(err, (_Refused, InputError)):
                message = str(err)
            else:
                message = f"internal error: {_one_line(err)}"
                self.get_logger().error(message, throttle_duration_sec=1.0)
            self.stats.failed += 1
            self.stats.last_message = message
            return _Outcome.refused(message, queries)
        outcome = await job.future
        if self._p("require_grasp_pose") and outcome.success:
            missing = [a for a in outcome.answers if a.point.found and a.grasp_pose is None]
            outcome.success = not missing
        return outcome

    def _make_job(
        self,
        queries: list[str],
        image: Image | None,
        target_frame: str,
        *,
        method: str = "",
        with_future: bool = True,
    ) -> _Job:
        """Validate a request (cheap checks, on the executor thread) and build its job."""
        pointer = self._pointer
        if not self._active or pointer is None:
            raise self._not_active()
        texts = []
        for i, query in enumerate(queries):
            try:
                texts.append(
                    check_query(query, max_chars=pointer.max_query_chars, reserved=pointer.reserved_tokens)
                )
            except InputError as err:
                raise InputError(
                    f"query {i + 1} of {len(queries)}: {err}" if len(queries) > 1 else str(err)
                ) from None
        if method and method != pointer.method:
            raise _Refused(
                f"method {method!r} is not loaded: this node serves {pointer.method!r} (parameter method)"
            )
        if image is not None and image.width > 0 and image.height > 0:
            check_image_size(  # before a copy is made, and on this thread: never queued
                image.width,
                image.height,
                max_image_pixels=pointer.max_image_pixels,
                max_aspect_ratio=pointer.max_aspect_ratio,
                what="the request's image",
            )
            rgb, header = _rgb(image, "the request's image"), image.header
            if not header.frame_id:
                camera = self.camera.camera
                header = Header(stamp=header.stamp, frame_id=camera.frame_id if camera else "")
        else:
            rgb, header = self._latest_frame()
        return _Job(
            queries=texts,
            image=rgb,
            header=header,
            target_frame=target_frame or self._p("target_frame"),
            future=Future() if with_future else None,
        )

    def _latest_frame(self) -> tuple[np.ndarray, Header]:
        msg = self.camera.synced_color(self._p("stamp_tolerance"))
        topic = self._p("image_topic")
        if msg is None:
            raise _Refused(f"no image received on {topic} yet")
        max_age = self._p("max_image_age_s")
        age = (self.get_clock().now() - Time.from_msg(msg.header.stamp)).nanoseconds * 1e-9
        if max_age > 0 and age > max_age:
            raise _Refused(
                f"latest image on {topic} is {age:.3f} s old (max_image_age_s {max_age:g}): "
                "is the camera still publishing?"
            )
        return _rgb(msg, f"the image on {topic}"), msg.header

    def _not_active(self) -> _Refused:
        if self._finalized:
            return _Refused("part_point_node is not active (finalized): start the node again")
        state = "inactive" if self._configured else "unconfigured"
        return _Refused(f"part_point_node is not active ({state}): configure and activate it first")

    def _enqueue(self, job: _Job) -> None:
        with self._queue_lock:  # a deactivation either sees this job in the queue, or refuses it here
            jobs = self._jobs
            if jobs is None or not self._active:
                raise self._not_active()
            job.epoch = self._epoch
            try:
                jobs.put_nowait(job)
            except queue.Full:
                self.stats.busy += 1
                raise _Refused(
                    f"busy: {jobs.qsize()} requests queued (queue_size {jobs.maxsize}); try again"
                ) from None

    @property
    def queue_length(self) -> int:
        """Jobs waiting for the worker (not counting the one being run)."""
        return self._jobs.qsize() if self._jobs is not None else 0

    @property
    def in_flight(self) -> int:
        """1 while the worker holds a job (waiting for the model or running it), else 0."""
        return self._in_flight

    # ------------------------------------------------------------------ teaching (method pop)
    def _on_teach_part(self, request, response):
        """Add one example to a support set; answered at once (success false with the reason)."""
        try:
            if request.image.width > 0 and request.image.height > 0:
                pointer = self._teaching_pointer()
                check_image_size(
                    request.image.width,
                    request.image.height,
                    max_image_pixels=pointer.max_image_pixels,
                    max_aspect_ratio=pointer.max_aspect_ratio,
                    what="the request's image",
                )
                rgb = _rgb(request.image, "the request's image")
            else:
                rgb = None
            response.examples, response.message = self._teach(request.name, rgb, request.u, request.v)
            response.success = True
        except Exception as err:  # noqa: BLE001 - every request is answered, in one line
            response.success = False
            if isinstance(err, (_Refused, InputError, CheckpointError)):
                response.message = str(err)
            else:
                response.message = f"internal error: {_one_line(err)}"
                self.get_logger().error(response.message, throttle_duration_sec=1.0)
        return response

    def _teaching_pointer(self) -> Any:
        pointer = self._pointer
        if not self._active or pointer is None:
            raise self._not_active()
        if pointer.method != "pop":
            raise _Refused(
                f"teaching needs method 'pop': this node serves {pointer.method!r} (parameter method)"
            )
        return pointer

    def _teach(self, name: str, rgb: np.ndarray | None, u: float, v: float) -> tuple[int, str]:
        """Teach ``name`` the pixel (u, v) of ``rgb`` (None: the latest frame): (examples, message)."""
        pointer = self._teaching_pointer()
        if rgb is None:
            rgb, _ = self._latest_frame()
        with self.model_lock:  # the extractor runs on the model's device, one job at a time
            support_set = pointer.teach(name.strip(), rgb, (float(u), float(v)))
        message = f"taught {support_set.name!r} at ({u:.1f}, {v:.1f}): {len(support_set)} example(s)"
        self.get_logger().info(message)
        return len(support_set), message

    def _on_clicked_point(self, msg: PointStamped) -> None:
        """RViz "Publish Point": project the clicked 3D point into the latest colour frame and teach
        it under ``teach_name`` (empty: the last query asked). Problems are one warning line."""
        try:
            name = self._p("teach_name").strip() or self._last_query
            if not name:
                raise _Refused("set the parameter teach_name, or ask a query first (its text names the set)")
            frame = self.camera.synced_color(self._p("stamp_tolerance"))
            camera = self.camera.camera
            if frame is None or camera is None:
                raise _Refused(f"no colour frame and camera_info on {self._p('image_topic')} yet")
            optical = frame.header.frame_id
            to_optical = self.camera.transform(optical, msg.header.frame_id, msg.header.stamp)
            if isinstance(to_optical, str):
                raise _Refused(to_optical)
            p = to_optical.apply(np.array([msg.point.x, msg.point.y, msg.point.z], dtype=np.float64))
            u, v = camera.project(p[None])[0]  # (1, 3) -> (2,); NaN behind the camera
            if not (np.isfinite(u) and np.isfinite(v) and camera.contains(float(u), float(v))):
                raise _Refused(
                    f"the point ({msg.point.x:.3f}, {msg.point.y:.3f}, {msg.point.z:.3f}) in "
                    f"{msg.header.frame_id!r} is not in the camera's view"
                )
            self._teach(name, _rgb(frame, f"the image on {self._p('image_topic')}"), float(u), float(v))
        except Exception as err:  # noqa: BLE001 - a bad click is one warning, never fatal
            why = str(err) if isinstance(err, (_Refused, InputError, CheckpointError)) else _one_line(err)
            self.get_logger().warning(f"clicked point not taught: {why}", throttle_duration_sec=1.0)

    # ------------------------------------------------------------------ the worker
    def _work(self, jobs: queue.Queue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            self._in_flight = 1
            try:
                with self.model_lock:
                    outcome = None if job.epoch != self._epoch else self._serve(job)
            except Exception as err:  # noqa: BLE001 - the worker must answer every job and live on
                outcome = _Outcome.refused(f"internal error: {_one_line(err)}", job.queries)
                self.get_logger().error(outcome.message)
            self._in_flight = 0
            if job.epoch != self._epoch:  # deactivated while it waited or ran
                outcome = _Outcome.refused(self._stopped_why, job.queries)
            self._finish(job, outcome)

    def _finish(self, job: _Job, outcome: _Outcome) -> None:
        if outcome.success:
            self.stats.served += 1
        else:
            self.stats.failed += 1
        self.stats.last_message = outcome.message
        if job.future is not None:
            job.future.set_result(outcome)
            self._wake.trigger()
        elif not outcome.success:
            self.get_logger().warning(f"{job.query!r}: {outcome.message}", throttle_duration_sec=1.0)

    def _serve(self, job: _Job) -> _Outcome:
        pointer = self._pointer
        if pointer is None:
            return _Outcome.refused("the model is not loaded", job.queries)
        try:
            results = pointer.point_many(job.image, job.queries)
        except InputError as err:
            return _Outcome.refused(str(err), job.queries, job.header)
        self.stats.last_latency_ms = results[0].latency_ms
        masks = [self._mask(job, result, pointer.method) for result in results]
        answers = [
            self._answer(job, result, pointer.threshold, mask)
            for result, mask in zip(results, masks, strict=True)
        ]
        self._publish(job, results, answers, masks[0])
        if len(answers) == 1:
            return _Outcome(answers[0].point.found, answers[0].message, answers)
        found = sum(a.point.found for a in answers)
        missed = [f"{a.point.query!r}: {a.message}" for a in answers if not a.point.found]
        message = f"{found} of {len(answers)} parts found" + (f"; {missed[0]}" if missed else "")
        return _Outcome(found == len(answers), message, answers)

    def _mask(self, job: _Job, result: PointResult, method: str) -> np.ndarray | None:
        """The found part's SAM mask from its keypoints (``masks``), else None."""
        if self._masker is None or not result.found:
            return None
        # a2p's scores are patch probabilities: a further peak under 0.5 is a negative prompt
        negative_below = 0.5 if method == "a2p" else None
        return self._masker.mask_result(job.image, result, negative_below=negative_below).mask

    def _answer(
        self, job: _Job, result: PointResult, threshold: float, mask: np.ndarray | None = None
    ) -> _Answer:
        """The query's best point and every instance (the result's further peaks at or above the
        threshold), each lifted to 3D with a grasp pose when depth allows."""
        if not result.found:
            if math.isfinite(result.x):
                why = f"part not found: score {result.score:.3f} is below the threshold {threshold:.3f}"
            else:
                why = "part not found: the model's answer holds no point in the image"
            point = PartPoint(
                header=job.header,
                query=result.query,
                u=float(result.x),
                v=float(result.y),
                score=float(result.score),
                found=False,
                message=why,
            )
            return _Answer(point, [], None, why)
        peaks = [(x, y, score) for x, y, score in result.points if score >= threshold] or [
            (result.x, result.y, result.score)
        ]
        instances, grasps = [], []
        for x, y, score in peaks:
            point = PartPoint(
                header=job.header, query=result.query, u=float(x), v=float(y), score=float(score), found=True
            )
            lifted = self._grasp(job, x, y, mask)
            grasp = None
            if isinstance(lifted, str):
                point.message = f"no grasp pose: {lifted}"
            else:
                optical_point, normal, grasp = lifted
                point.has_3d = True
                point.point, point.normal, point.grasp_pose = (
                    point_msg(optical_point),
                    vector_msg(normal),
                    grasp,
                )
            instances.append(point)
            grasps.append(grasp)
        best = instances[0]
        where = f"found at ({best.u:.1f}, {best.v:.1f}), score {best.score:.3f}"
        if len(instances) > 1:
            where += f" ({len(instances)} instances)"
        if best.message:
            return _Answer(best, instances, grasps[0], f"{where}; {best.message}")
        return _Answer(best, instances, grasps[0], f"{where}; grasp pose in {grasps[0].header.frame_id}")

    def _grasp(
        self, job: _Job, u: float, v: float, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, PoseStamped] | str:
        """(point, normal) in the optical frame and the grasp pose in the target frame, or why not."""
        tolerance = self._p("stamp_tolerance")
        size = (job.image.shape[1], job.image.shape[0])  # (H, W, 3) -> (width, height)
        return self.camera.lift(
            job.header,
            u,
            v,
            job.target_frame,
            lifter=self._lifter,
            tolerance=tolerance,
            image_size=size,
            mask=mask,
        )

    # ------------------------------------------------------------------ outputs
    def _publish(
        self, job: _Job, results: list[PointResult], answers: list[_Answer], mask: np.ndarray | None = None
    ) -> None:
        """Every query's best point (``publish_instances``: every instance) on the points topic; the
        heatmap, overlay
        and (``masks``) mask of the first query: all zeros when it was not found."""
        if not self._active:
            return
        if "mask" in self._pubs:
            pixels = np.zeros(job.image.shape[:2], np.uint8) if mask is None else mask.astype(np.uint8) * 255
            self._pubs["mask"].publish(numpy_to_image(pixels, "mono8", header=job.header))
        if self._p("publish_instances"):
            points = [p for answer in answers for p in (answer.instances or [answer.point])]
        else:
            points = [answer.point for answer in answers]
        self._pubs["points"].publish(PartPointArray(header=job.header, points=points))
        result = results[0]
        if self._p("publish_heatmap") and result.heatmap is not None and result.grid is not None:
            heat = result.heatmap_on_image()  # (H, W) float32 on the image
            if self._p("heatmap_encoding") == "mono8":
                top = float(heat.max())
                heat = (
                    (np.clip(heat / top, 0.0, 1.0) * 255.0).astype(np.uint8)
                    if top > 0
                    else heat.astype(np.uint8)
                )
                self._pubs["heatmap"].publish(numpy_to_image(heat, "mono8", header=job.header))
            else:
                self._pubs["heatmap"].publish(
                    numpy_to_image(heat.astype(np.float32), "32FC1", header=job.header)
                )
        if self._p("publish_overlay"):
            overlay = draw_overlay(job.image, result)
            self._pubs["overlay"].publish(numpy_to_image(overlay, "rgb8", header=job.header))

    def _publish_diagnostics(self) -> None:
        pointer = self._pointer
        color = self.camera.color
        age = (
            (self.get_clock().now() - Time.from_msg(color.header.stamp)).nanoseconds * 1e-9
            if color is not None
            else float("nan")
        )
        max_age = self._p("max_image_age_s")
        status = DiagnosticStatus(name=f"{self.get_name()}: pointer", hardware_id=self._p("device"))
        if pointer is None:
            status.level, status.message = DiagnosticStatus.ERROR, "model not loaded"
        elif color is None:
            status.level, status.message = DiagnosticStatus.WARN, f"no image on {self._p('image_topic')} yet"
        elif max_age > 0 and age > max_age:
            status.level, status.message = DiagnosticStatus.WARN, f"latest image is {age:.1f} s old"
        elif self._jobs is not None and self._jobs.full():
            status.level, status.message = DiagnosticStatus.WARN, "queue full"
        else:
            status.level, status.message = DiagnosticStatus.OK, "ready"
        values = {
            "model_loaded": str(pointer is not None).lower(),
            "backbone": pointer.backbone.info.name if pointer is not None else "",
            "method": pointer.method if pointer is not None else self._p("method"),
            "queue_length": str(self.queue_length),
            "queue_size": str(self._jobs.maxsize if self._jobs is not None else 0),
            "in_flight": str(self.in_flight),
            "last_latency_ms": f"{self.stats.last_latency_ms:.1f}",
            "served": str(self.stats.served),
            "failed": str(self.stats.failed),
            "busy": str(self.stats.busy),
            "image_age_s": f"{age:.3f}",
            "last_message": self.stats.last_message,
        }
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pubs["diagnostics"].publish(array)


def _rgb(msg: Image, what: str) -> np.ndarray:
    """A colour sensor_msgs/Image -> (H, W, 3) uint8 RGB, or InputError naming the problem."""
    if msg.encoding not in COLOUR_ENCODINGS:
        raise InputError(
            f"{what} has encoding {msg.encoding!r}: part_point_node needs {' or '.join(COLOUR_ENCODINGS)}"
        )
    pixels = image_to_numpy(msg)
    return np.ascontiguousarray(pixels[..., ::-1]) if msg.encoding == "bgr8" else pixels


def main(args: list[str] | None = None) -> int:
    """``part_point_node``: spin on a MultiThreadedExecutor; ``autostart:=true`` configures + activates."""

    def body() -> int:
        with ros_context(args):
            node = PartPointNode()
            executor = MultiThreadedExecutor()
            executor.add_node(node)
            try:
                if node.get_parameter("autostart").value:
                    if not node.configure_and_activate():
                        print(f"error: {node.last_error}", file=sys.stderr)
                        return 1
                else:
                    name = node.get_fully_qualified_name()
                    node.get_logger().info(
                        f"unconfigured: waiting for configure (launch files send it; by hand: "
                        f"ros2 lifecycle set {name} configure, or start with -p autostart:=true)"
                    )
                executor.spin()
            finally:
                executor.shutdown()
                node.destroy_node()
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
