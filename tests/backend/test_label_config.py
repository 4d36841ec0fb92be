import pytest

import label_config
from backend.label_config import LabelConfigError, parse_keypoint_controls


@pytest.mark.parametrize("name", label_config.names())
def test_shipped_configs_parse(name: str) -> None:
    [control] = parse_keypoint_controls(label_config.read(name))
    assert control.image_field == "image"
    assert len(control.labels) >= 4


def test_shipped_config_sizes() -> None:
    sizes = {n: len(parse_keypoint_controls(label_config.read(n))[0].labels) for n in label_config.names()}
    assert sizes["human_coco_17"] == 17 and sizes["animal_17"] == 17 and sizes["face_68"] == 68
    assert parse_keypoint_controls(label_config.read("mouse_topview_4"))[0].labels == ("snout", "leftear", "rightear", "tailbase")


def test_several_controls_in_document_order() -> None:
    xml = """<View><Image name="a" value="$img"/><Image name="b" value="$other"/>
    <KeyPointLabels name="k1" toName="a"><Label value="x"/></KeyPointLabels>
    <KeyPointLabels name="k2" toName="b"><Label value="y"/><Label value="z"/></KeyPointLabels></View>"""
    c1, c2 = parse_keypoint_controls(xml)
    assert (c1.from_name, c1.to_name, c1.image_field, c1.labels) == ("k1", "a", "img", ("x",))
    assert (c2.image_field, c2.labels) == ("other", ("y", "z"))


@pytest.mark.parametrize(
    "xml, message",
    [
        ("", "empty"),
        ("<View><Image", "not valid XML"),
        (
            '<View><Image name="i" value="$image"/>'
            '<RectangleLabels name="r" toName="i"><Label value="a"/></RectangleLabels></View>',
            "no <KeyPointLabels>",
        ),
        ('<View><KeyPointLabels name="k" toName="i"><Label value="a"/></KeyPointLabels></View>', "not an <Image>"),
        ('<View><Image name="i" value="$image"/><KeyPointLabels name="k" toName="i"></KeyPointLabels></View>', "no <Label"),
        (
            '<View><Image name="i" value="image"/><KeyPointLabels name="k" toName="i"><Label value="a"/></KeyPointLabels></View>',
            "$field",
        ),
    ],
)
def test_bad_configs_say_what_is_wrong(xml: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message.replace("$", r"\$")):
        parse_keypoint_controls(xml)


def test_a_rectangle_control_on_the_same_image_makes_instances() -> None:
    [control] = parse_keypoint_controls(label_config.read("mouse_topview_4_instances"))
    assert (control.box_from_name, control.box_labels) == ("box", ("mouse",))
    assert control.labels == ("snout", "leftear", "rightear", "tailbase")
    [plain] = parse_keypoint_controls(label_config.read("mouse_topview_4"))
    assert (plain.box_from_name, plain.box_labels) == ("", ())
    xml = """<View><Image name="a" value="$img"/><Image name="b" value="$other"/>
    <RectangleLabels name="r" toName="b"><Label value="cat"/></RectangleLabels>
    <KeyPointLabels name="k" toName="a"><Label value="x"/></KeyPointLabels></View>"""
    [control] = parse_keypoint_controls(xml)
    assert control.box_from_name == ""  # a box control on another image does not group these keypoints
