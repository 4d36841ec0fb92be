"""Left/right pairing of keypoint names, for mirrored supports (horizontal flip + label swap)."""

from __future__ import annotations

import re

import numpy as np

_SWAPS = [(re.compile(r"left", re.I), "right"), (re.compile(r"right", re.I), "left")]
# short markers: "l_eye", "L-Eye", "eye_l", "eyeL", "forelegL1", "L_F_Paw"
_SHORT = re.compile(r"(?:(?<=^)|(?<=[_\-\s]))([lLrR])(?=[_\-\s]|$)|(?<=[a-z])([LR])(?=\d|$|[_\-\s])")


def _swap_case(word: str, template: str) -> str:
    if template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word.capitalize()
    return word


def mirrored_name(name: str) -> str:
    """The name of the keypoint on the other side (``left_eye`` -> ``right_eye``, ``eyeL`` -> ``eyeR``),
    or ``name`` itself for keypoints without a side."""
    for pattern, dst in _SWAPS:
        m = pattern.search(name)
        if m:
            return name[: m.start()] + _swap_case(dst, m.group(0)) + name[m.end() :]

    def flip(m: re.Match) -> str:
        c = m.group(0)
        return {"l": "r", "r": "l", "L": "R", "R": "L"}[c]

    return _SHORT.sub(flip, name, count=1)


def mirror_permutation(names: list[str]) -> np.ndarray | None:
    """perm with names[perm[i]] == mirrored_name(names[i]) (i itself when its pair is absent), or None when no
    name has a partner: then a mirrored support would carry wrong labels and is not used."""
    index = {n: i for i, n in enumerate(names)}
    perm = np.array([index.get(mirrored_name(n), i) for i, n in enumerate(names)])
    return perm if (perm != np.arange(len(names))).any() else None
