"""Reading Label Studio labelling configs: the KeyPointLabels controls and their Image targets."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


class LabelConfigError(ValueError):
    """The labelling config is not XML, or has no usable KeyPointLabels control."""


@dataclass(frozen=True)
class KeypointControl:
    """One ``<KeyPointLabels name=from_name toName=to_name>`` bound to ``<Image name=to_name value=$field>``."""

    from_name: str
    to_name: str
    image_field: str  # task data key holding the image URL (the Image tag's value without "$")
    labels: tuple[str, ...]
    box_from_name: str = ""  # a <RectangleLabels> on the same image: one box per individual, keypoints linked by parentID
    box_labels: tuple[str, ...] = ()  # that control's labels


def parse_keypoint_controls(xml: str) -> list[KeypointControl]:
    """All KeyPointLabels controls of a labelling config, in document order, each with the first RectangleLabels
    control on its image (instances: one box per individual, its keypoints linked to it by ``parentID``).

    Raises:
        LabelConfigError: not XML, no KeyPointLabels, a control without labels, or a control whose
            toName is not an Image tag with a ``$field`` value.
    """
    if not xml or not xml.strip():
        raise LabelConfigError("the labelling config is empty: set a config with a <KeyPointLabels> control")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the labelling config is not valid XML: {exc}") from exc
    images = {}
    boxes: dict[str, tuple[str, tuple[str, ...]]] = {}  # image name -> its first RectangleLabels (name, labels)
    for el in root.iter():
        if el.tag == "Image" and el.get("name"):
            images[el.get("name")] = el.get("value", "")
        if el.tag == "RectangleLabels" and el.get("name") and el.get("toName"):
            labels = tuple(lab.get("value") for lab in el.iter("Label") if lab.get("value"))
            boxes.setdefault(el.get("toName"), (el.get("name"), labels))
    controls = []
    for el in root.iter("KeyPointLabels"):
        name, to_name = el.get("name"), el.get("toName")
        if not name or not to_name:
            raise LabelConfigError("a <KeyPointLabels> control needs both name= and toName= attributes")
        value = images.get(to_name)
        if value is None:
            raise LabelConfigError(f'<KeyPointLabels name="{name}"> points at toName="{to_name}", which is not an <Image> tag')
        if not value.startswith("$") or len(value) < 2:
            raise LabelConfigError(f'<Image name="{to_name}"> needs value="$field" naming the task field with the image URL')
        labels = tuple(lab.get("value") for lab in el.iter("Label") if lab.get("value"))
        if not labels:
            raise LabelConfigError(f'<KeyPointLabels name="{name}"> has no <Label value=...> children')
        if len(set(labels)) != len(labels):
            raise LabelConfigError(f'<KeyPointLabels name="{name}"> repeats a label value: {sorted(labels)}')
        box_name, box_labels = boxes.get(to_name, ("", ()))
        controls.append(KeypointControl(name, to_name, value[1:], labels, box_name, box_labels))
    if not controls:
        raise LabelConfigError(
            "the labelling config has no <KeyPointLabels> control: kpassist predicts keypoints only "
            "(see label_config/ for ready configs)"
        )
    return controls
