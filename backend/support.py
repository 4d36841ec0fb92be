"""Choosing a project's support annotations and caching their features (few-shot: one support per labelled image)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from backend.convert import AnnotationFormatError, LabelledPoints, percent_to_pixels, regions_to_instances
from backend.label_config import KeypointControl
from kp_model.fewshot import FewShotConfig, FewShotPredictor
from kp_model.images import ImageLoadError
from kp_model.memory import array_bytes
from kp_model.predictor import Predictor, SupportError

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
    instance: int = 0  # which individual of the annotation (its boxes in order; 0 without boxes)
    box_label: str = ""  # the label of that individual's box, "" without boxes

    @property
    def key(self) -> str:
        """Changes whenever the annotation does: the cache key and part of the model version."""
        return f"{self.annotation_id}@{self.updated_at}" + (f"_i{self.instance}" if self.instance else "")


@dataclass(frozen=True)
class LabelledAnnotation:
    """A not-cancelled annotation with at least one keypoint of a control, and its task's image reference."""

    task: dict
    image_ref: str
    annotation: dict
    points: LabelledPoints
    stamp: str  # updated_at (else created_at) as Label Studio wrote it
    instance: int = 0  # which individual of the annotation (regions_to_instances order)

    @property
    def when(self) -> datetime:
        return parse_time(self.stamp)


def labelled_annotations(tasks: Iterable[dict], control: KeypointControl) -> Iterator[LabelledAnnotation]:
    """The individuals (``regions_to_instances``) of the annotations of ``tasks`` (Label Studio task dicts carrying
    ``annotations`` and ``data``), one item each; cancelled, empty and malformed annotations are left out, and what
    an annotation leaves out (a repeated label, a keypoint whose box is missing) is logged with its task."""
    for task in tasks:
        image_ref = (task.get("data") or {}).get(control.image_field)
        if not isinstance(image_ref, str):
            continue
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            try:
                instances, skipped = regions_to_instances(ann.get("result") or [], control)
            except AnnotationFormatError as exc:
                log.warning("annotation %s of task %s skipped: %s", ann.get("id"), task.get("id"), exc)
                continue
            for reason in skipped:
                log.warning("annotation %s of task %s: %s", ann.get("id"), task.get("id"), reason)
            stamp = str(ann.get("updated_at") or ann.get("created_at") or "")
            for i, points in enumerate(instances):
                yield LabelledAnnotation(task, image_ref, ann, points, stamp, i)


def select_supports(tasks: Iterable[dict], control: KeypointControl) -> list[SupportRef]:
    """Every individual of the most recently updated, not cancelled annotation with keypoints of ``control`` (one
    SupportRef each, in box order); [] when there is none."""
    best: tuple[datetime, int] | None = None
    refs: list[SupportRef] = []
    for found in labelled_annotations(tasks, control):
        ref = SupportRef(
            int(found.annotation["id"]),
            found.stamp,
            int(found.task.get("id", 0)),
            found.image_ref,
            tuple(found.points.names),
            tuple((float(x), float(y)) for x, y in found.points.xy_percent),
            found.instance,
            found.points.box_label,
        )
        when = (found.when, ref.annotation_id)
        if best is None or when > best:
            best, refs = when, [ref]
        elif when == best:
            refs.append(ref)
    return refs


@dataclass
class CachedSupport:
    """The supports of one (project, control): a FewShotPredictor holding one support per annotation in ``refs``."""

    refs: tuple[SupportRef, ...]
    predictor: FewShotPredictor
    engine_version: str = ""
    nbytes: int = 0  # its features' size (kp_model.memory.array_bytes)

    @property
    def ref(self) -> SupportRef:
        """The newest support."""
        return self.refs[0]


class SupportCache:
    """Per (project, control) few-shot predictors, kept in step with the project's labelled annotations
    incrementally: a new annotation adds one support (its features computed once), a deleted or edited one leaves
    (an edit comes back under its new ``updated_at``), the others are not recomputed; everything is rebuilt only
    when the served engine version changes. At most ``max_items`` predictors are kept, holding at most ``max_bytes``
    of features (numpy arrays and tensors, kp_model.memory.array_bytes), the least recently used dropped first
    (the newest is always kept)."""

    def __init__(self, max_items: int = 256, max_bytes: int = 1 << 30, fewshot: FewShotConfig | None = None) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.fewshot = fewshot or FewShotConfig()
        self.nbytes = 0  # features held now
        self._items: OrderedDict[tuple[int, str], CachedSupport] = OrderedDict()
        self._lock = threading.Lock()  # guards the dicts; building a support holds only its key's lock
        self._key_locks: dict[tuple[int, str], threading.Lock] = {}
        self.builds = 0  # how many supports' features were computed (observability, tests)

    def get(
        self,
        project: int,
        control: KeypointControl,
        refs: Sequence[SupportRef],
        load_image: Callable[[str], object],
        make_predictor: Callable[[], Predictor],
        engine_version: str = "",
    ) -> CachedSupport:
        """The project's few-shot predictor with exactly the supports ``refs`` (newest first, at least one), computing
        the features of those it does not hold yet. A support whose image or points are unusable is left out (logged).

        Raises:
            ImageLoadError / SupportError: no support of ``refs`` is usable (the last error).
        """
        if not refs:
            raise ValueError("refs must hold at least one support annotation")
        key = (project, control.from_name)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one build per key at a time; other projects are not blocked
            with self._lock:
                cached = self._items.get(key)
                if cached is not None:
                    self._items.move_to_end(key)
            wanted = {ref.key: ref for ref in refs}
            if cached is not None and cached.engine_version == engine_version:
                if tuple(cached.refs) == tuple(refs):
                    return cached
                predictor = cached.predictor.copy()  # requests in flight keep predicting with the old set
            else:
                predictor = FewShotPredictor(make_predictor, self.fewshot)
            for gone in set(predictor.support_keys) - set(wanted):
                predictor.remove_support(gone)
            error: Exception | None = None
            added = 0
            for ref in reversed(refs):  # oldest first: the predictor drops its first-added beyond its cap
                if ref.key in predictor.support_keys:
                    continue
                try:
                    image = load_image(ref.image_ref)
                    h, w = image.shape[:2]
                    predictor.add_support(ref.key, image, percent_to_pixels(ref.xy_percent, w, h), list(ref.names))
                    added += 1
                except (ImageLoadError, SupportError) as exc:
                    log.warning("project %s: annotation %s left out of the supports: %s", project, ref.annotation_id, exc)
                    error = exc
            if not predictor.is_support_set:
                raise error or SupportError("no usable support annotation")
            kept = tuple(ref for ref in refs if ref.key in predictor.support_keys)
            cached = CachedSupport(kept, predictor, engine_version, array_bytes(predictor))
            with self._lock:
                self.builds += added
                old = self._items.pop(key, None)
                self.nbytes += cached.nbytes - (old.nbytes if old else 0)
                self._items[key] = cached
                while len(self._items) > 1 and (len(self._items) > self.max_items or self.nbytes > self.max_bytes):
                    dropped, gone_item = self._items.popitem(last=False)
                    self.nbytes -= gone_item.nbytes
                    self._key_locks.pop(dropped, None)
            if added:
                log.info(
                    "project %s: %d support(s) of %s described, %d in use (newest: annotation %s of task %s)",
                    project,
                    added,
                    control.from_name,
                    len(kept),
                    kept[0].annotation_id if kept else None,
                    kept[0].task_id if kept else None,
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
