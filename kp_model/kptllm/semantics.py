"""Keypoint names -> the short semantic text the LLM decodes ("leftear" -> "left ear of a mouse"), and the
side (left/right) a text names, for the left/right label check."""

from __future__ import annotations

import re

_ABBREV = {"l": "left", "r": "right", "f": "front", "b": "back", "kpt": "keypoint", "lt": "left", "rt": "right"}
_GLUED = ("left", "right", "front", "back", "upper", "lower", "inner", "outer", "top", "bottom", "middle", "mid")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def humanize(name: str) -> str:
    """Readable words of a keypoint name: ``L_F_Paw`` -> ``left front paw``, ``leftear`` -> ``left ear``,
    ``eyeL`` -> ``left eye``, ``forelegR1`` -> ``right foreleg 1``, ``kpt-3`` -> ``keypoint 3``."""
    words: list[str] = []
    for raw in _WORD.findall(name):
        w = raw.lower()
        for glued in _GLUED:  # "leftear" -> "left", "ear"
            if w.startswith(glued) and len(w) > len(glued) + 1:
                words.append(glued)
                w = w[len(glued) :]
                break
        words.append(_ABBREV.get(w, w))
    sides = [w for w in words if w in ("left", "right")]
    rest = [w for w in words if w not in ("left", "right")]
    return " ".join(sides[:1] + rest) if words else name.lower()


def semantic_text(name: str, category: str) -> str:
    """What the model says about a keypoint: ``"<humanized name> of a <category>"``."""
    cat = humanize(category.split("_")[0] if category else "object") or "object"
    article = "an" if cat[:1] in "aeiou" else "a"
    return f"{humanize(name)} of {article} {cat}"


def side_of(text: str) -> str | None:
    """'left', 'right' or None: the side a semantic text names."""
    words = text.lower().split()
    if "left" in words:
        return "left"
    if "right" in words:
        return "right"
    return None
