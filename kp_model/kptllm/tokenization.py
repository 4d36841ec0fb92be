"""The LLM's special tokens, the instruction templates of the three tasks, and a tiny word-level tokenizer for
the CPU preset (built locally: no hub access needed).

Templates (``<kp_image>`` expands to the query's image tokens, ``<kp_prompt>`` is replaced by a keypoint prompt
token, the answer of a localisation task ends with ``<kp_pos>``, whose hidden state the keypoint decoder reads):
  visual:        "<kp_image> user : where is the keypoint <kp_prompt> marked on the support image ? assistant :"
  textual:       "<kp_image> user : where is the {text} ? assistant :"
  understanding: "<kp_image> user : what is at <kp_prompt> ? assistant :"
"""

from __future__ import annotations

from pathlib import Path

IMAGE_TOKEN = "<kp_image>"
PROMPT_TOKEN = "<kp_prompt>"
POS_TOKEN = "<kp_pos>"
SPECIAL_TOKENS = (IMAGE_TOKEN, PROMPT_TOKEN, POS_TOKEN)
TASKS = ("visual", "textual", "understanding")

_TEMPLATES = {
    "visual": f"{IMAGE_TOKEN} user : where is the keypoint {PROMPT_TOKEN} marked on the support image ? assistant :",
    "textual": f"{IMAGE_TOKEN} user : where is the {{text}} ? assistant :",
    "understanding": f"{IMAGE_TOKEN} user : what is at {PROMPT_TOKEN} ? assistant :",
}

# words of the templates and of common keypoint names, so the tiny tokenizer knows them without any data
BASE_WORDS = (
    "user assistant where is the keypoint marked on support image what at of a an ? : . , "
    "left right front back upper lower inner outer top bottom middle mid center base tip "
    "head nose snout eye ear mouth lip jaw chin cheek brow eyebrow forehead neck throat shoulder elbow wrist hand "
    "thumb finger forefinger ring pinky palm hip knee ankle foot toe heel tail tailbase spine body back withers "
    "paw leg foreleg hindleg wing antenna abdomen thorax collar sleeve hem waistline cuff keypoint "
    "mouse person human animal quadruped horse zebra fly locust face hand clothes dog cat cow sheep bird object "
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"
).split()


def prompt_text(task: str, text: str = "") -> str:
    """The instruction of ``task`` (one of TASKS); ``text`` is the keypoint description for "textual"."""
    if task not in _TEMPLATES:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return _TEMPLATES[task].format(text=text)


def answer_text(task: str, semantic: str) -> str:
    """The target answer: the semantic text, then the position token for the localisation tasks."""
    return semantic if task == "understanding" else f"{semantic} {POS_TOKEN}"


def build_tiny_tokenizer(texts: list[str] | tuple[str, ...] = (), save_dir: str | Path | None = None):
    """A word-level ``PreTrainedTokenizerFast`` knowing BASE_WORDS, every word of ``texts`` and the special tokens.

    Unknown words map to ``<unk>``. Saved with ``save_pretrained`` when ``save_dir`` is given, so the tiny
    preset loads through the same ``AutoTokenizer.from_pretrained`` path as a real LLM's tokenizer.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<eos>", *SPECIAL_TOKENS]
    words = list(dict.fromkeys(w for w in [*BASE_WORDS, *(w for t in texts for w in t.lower().split())] if w))
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    if save_dir is not None:
        tok.save_pretrained(str(save_dir))
    return tok
