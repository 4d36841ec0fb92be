"""Choosing the support annotation of a project and caching its features."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from backend.convert import AnnotationFormatError, LabelledPoints, percent_to_pixels, regions_to_points
from backend.label_config import KeypointControl
from kp_model.memory import array_bytes
from kp_model.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupportRef:
    """The annotation chosen as support for one control. xy_percent: (K, 2) percent of the image."""

    annotation_id: int
    updated_at: str
    task_id: int
    image_ref: str
    names: tuple[str, ...]
    xy_percent: tuple[tuple[float, float], ...]

    @property
    def key(self) -> str:
        """Changes whenever the annotation does: the cache key and part of the model version."""
        return f"{self.annotation_id}@{self.updated_at}"


@dataclass(frozen=True)
class LabelledAnnotation:
    """A not-cancelled annotation with at least one keypoint of a control, and its task's image reference."""

    task: dict
    image_ref: str
    annotation: dict
    points: LabelledPoints
    stamp: str  # updated_at (else created_at) as Label Studio wrote it

    @property
    def when(self) -> datetime:
        return parse_time(self.stamp)


def labelled_annotations(tasks: Iterable[dict], control: KeypointControl) -> Iterator[LabelledAnnotation]:
    """The annotations of ``tasks`` (Label Studio task dicts carrying ``annotations`` and ``data``) that hold
    keypoints of ``control``; cancelled, empty and malformed ones (logged) are left out."""
    for task in tasks:
        image_ref = (task.get("data") or {}).get(control.image_field)
        if not isinstance(image_ref, str):
            continue
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            try:
                points = regions_to_points(ann.get("result") or [], control)
            except AnnotationFormatError as exc:
                log.warning("annotation %s of task %s skipped: %s", ann.get("id"), task.get("id"), exc)
                continue
            if len(points):
                yield LabelledAnnotation(task, image_ref, ann, points, str(ann.get("updated_at") or ann.get("created_at") or ""))


def select_support(tasks: Iterable[dict], control: KeypointControl) -> SupportRef | None:
    """The most recently updated, not cancelled annotation with at least one keypoint of ``control``."""
    best: tuple[datetime, SupportRef] | None = None
    for found in labelled_annotations(tasks, control):
        ref = SupportRef(
            int(found.annotation["id"]),
            found.stamp,
            int(found.task.get("id", 0)),
            found.image_ref,
            tuple(found.points.names),
            tuple((float(x), float(y)) for x, y in found.points.xy_percent),
        )
        when = found.when
        if best is None or (when, ref.annotation_id) > (best[0], best[1].annotation_id):
            best = (when, ref)
    return None if best is None else best[1]


@dataclass
class CachedSupport:
    ref: SupportRef
    predictor: Predictor
    engine_version: str = ""
    nbytes: int = 0  # its features' size (kp_model.memory.array_bytes)


class SupportCache:
    """Per (project, control) support predictors; rebuilt only when the support annotation or the served
    engine version changes. At most ``max_items`` are kept, holding at most ``max_bytes`` of features (numpy arrays
    and tensors, kp_model.memory.array_bytes), the least recently used dropped first (the newest is always kept)."""

    def __init__(self, max_items: int = 256, max_bytes: int = 1 << 30) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.nbytes = 0  # features held now
        self._items: OrderedDict[tuple[int, str], CachedSupport] = OrderedDict()
        self._lock = threading.Lock()  # guards the dicts; building a support holds only its key's lock
        self._key_locks: dict[tuple[int, str], threading.Lock] = {}
        self.builds = 0  # how many times support features were computed (observability, tests)

    def get(
        self,
        project: int,
        control: KeypointControl,
        ref: SupportRef,
        load_image: Callable[[str], object],
        make_predictor: Callable[[], Predictor],
        engine_version: str = "",
    ) -> CachedSupport:
        """Cached predictor for ``ref``, computing the support features if ``ref`` or ``engine_version`` is new.

        Raises:
            ImageLoadError / SupportError: the support image or its points are unusable.
        """
        key = (project, control.from_name)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one build per key at a time; other projects are not blocked
            with self._lock:
                cached = self._items.get(key)
                if cached is not None:
                    self._items.move_to_end(key)
            if cached is not None and cached.ref.key == ref.key and cached.engine_version == engine_version:
                return cached
            image = load_image(ref.image_ref)
            h, w = image.shape[:2]
            predictor = make_predictor()
            predictor.set_support(image, percent_to_pixels(ref.xy_percent, w, h), list(ref.names))
            cached = CachedSupport(ref, predictor, engine_version, array_bytes(predictor))
            with self._lock:
                self.builds += 1
                old = self._items.pop(key, None)
                self.nbytes += cached.nbytes - (old.nbytes if old else 0)
                self._items[key] = cached
                while len(self._items) > 1 and (len(self._items) > self.max_items or self.nbytes > self.max_bytes):
                    dropped, gone = self._items.popitem(last=False)
                    self.nbytes -= gone.nbytes
                    self._key_locks.pop(dropped, None)
            log.info(
                "project %s: support set from annotation %s (task %s, %d keypoints)",
                project,
                ref.annotation_id,
                ref.task_id,
                len(ref.names),
            )
            return cached

    def __len__(self) -> int:
        return len(self._items)


def parse_time(stamp: str) -> datetime:
    """UTC-aware time of an LS timestamp; unparseable or missing stamps sort first."""
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)
