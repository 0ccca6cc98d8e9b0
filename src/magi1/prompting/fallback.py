"""The enhancer without a model: deterministic templates that add what a short prompt lacks.

A MAGI-1 caption ends with a camera sentence and the quality suffix (instructions.py); a user's idea usually
has neither. The fallback keeps the user's words, adds the camera sentence when the prompt names no camera
move (static when the subject stays in place, following when it travels) and the suffix, so `--enhance`
works, and gives the same caption every time, when no endpoint is configured. It never invents appearance.
"""

from __future__ import annotations

import re

from .instructions import FOLLOW_CAMERA, QUALITY_SUFFIX, STATIC_CAMERA

MAX_SUBJECT_WORDS = 8

# A prompt that already says what the camera does keeps its own camera.
_CAMERA_WORDS = re.compile(
    r"\b(camera|pans|panning|pan (?:left|right|across|up|down)|tilts?(?: up| down)|tilting|zooms? (?:in|out)|"
    r"zooming|dolly|tracking shot|orbits?|orbiting|crane shot|handheld|static shot|fixed shot|aerial shot)\b",
    re.IGNORECASE)

_SINGULAR_DETERMINERS = {"a", "an", "one", "this", "that"}
_PLURAL_DETERMINERS = {"two", "three", "four", "five", "six", "some", "several", "many", "these", "those"}
_OTHER_DETERMINERS = {"the", "his", "her", "their", "its", "my", "our", "your"}
_DETERMINERS = _SINGULAR_DETERMINERS | _PLURAL_DETERMINERS | _OTHER_DETERMINERS

# Words that end a leading noun phrase.
_FUNCTION_WORDS = {
    "on", "in", "at", "across", "through", "into", "onto", "from", "with", "under", "over", "down", "up", "along",
    "toward", "towards", "near", "behind", "beside", "by", "off", "of", "around", "past", "against", "while",
    "is", "are", "was", "were", "has", "have", "gets", "get", "begins", "starts", "keeps", "slowly", "quickly",
    "gently", "suddenly",
}
# Movements where the subject goes somewhere: the camera follows it.
_TRAVEL_VERBS = ("walk", "run", "drive", "fly", "swim", "ride", "race", "chase", "travel", "march", "skate", "ski",
                 "cycle", "surf", "sail", "gallop", "crawl", "wander", "stroll", "jog", "sprint", "hike", "dash",
                 "hurry", "cruise", "speed", "skid", "soar", "flee", "enter", "approach", "pass")
# Movements that usually stay within a fixed frame.
_PLACE_VERBS = ("fall", "bounce", "roll", "slide", "spin", "turn", "jump", "sit", "stand", "look", "open", "close",
                "pour", "rise", "drop", "flow", "sway", "play", "eat", "drink", "smile", "talk", "sing", "wave",
                "crash", "collide", "hit", "push", "pull", "grow", "melt", "burn", "float", "sink", "spread",
                "break", "lean", "hold", "lift", "throw", "catch", "climb", "swing", "shake", "glide", "land",
                "tumble", "topple", "slip", "splash", "move", "dance", "cook", "read", "write", "type", "paint",
                "laugh", "cry", "nod", "blink", "breathe", "burst", "explode", "shatter", "swirl", "drift",
                "flicker", "glow", "shine", "rotate", "wobble", "tip", "fill", "empty", "hang", "lie", "rest", "sleep",
                "wait", "watch", "stare", "kneel", "bend", "stretch", "reach", "touch", "kick", "bite", "chew", "hug",
                "kiss", "fight", "argue", "hover", "twist", "ripple", "crack", "collapse", "scatter")


def _forms(base: str) -> set[str]:
    """Inflections of a regular English verb (over-generating is harmless here)."""
    forms = {base, base + "s", base + "es", base + "ed", base + "ing", base + base[-1] + "ing"}
    if base.endswith("e"):
        forms |= {base[:-1] + "ing", base + "d"}
    if base.endswith("y") and base[-2:-1] not in "aeiou":
        forms |= {base[:-1] + "ies", base[:-1] + "ied"}
    return forms


_TRAVEL = set().union(*(_forms(v) for v in _TRAVEL_VERBS)) | {"ran", "flew", "swam", "rode", "drove", "sped", "fled"}
_PLACE = set().union(*(_forms(v) for v in _PLACE_VERBS)) | {"fell", "spun", "sat", "stood", "rose", "grew", "broke",
                                                            "held", "threw", "caught", "shook", "hung", "lay"}
_VERBS = _TRAVEL | _PLACE


def fallback_caption(prompt: str) -> str:
    """The caption the fallback makes of `prompt`; applying it twice changes nothing."""
    text = _tidy(prompt)
    if not text:
        raise ValueError("the prompt is empty")
    return complete_caption(text, subject_from=text)


def complete_caption(text: str, *, subject_from: str | None = None) -> str:
    """`text` with the structure's fixed parts added where missing: a camera sentence, then the quality suffix.

    subject_from: the text whose leading noun phrase names the main subject (default: `text`).
    """
    body = _tidy(_strip_suffix(text))
    if not _CAMERA_WORDS.search(body):
        body = f"{body} {camera_sentence(subject_from or body)}"
    return f"{body} {QUALITY_SUFFIX}"


def camera_sentence(prompt: str) -> str:
    """The fixed camera sentence for `prompt`: static when its subject stays put, following when it travels."""
    subject, plural = main_subject(prompt)
    words = {w.lower() for w in re.findall(r"[A-Za-z']+", prompt)}
    if words & _TRAVEL:
        return FOLLOW_CAMERA.format(subject=subject, stay="stay" if plural else "stays")
    return STATIC_CAMERA.format(subject=subject, be="are" if plural else "is")


def main_subject(prompt: str) -> tuple[str, bool]:
    """(the main subject as a noun phrase, plural?) from the prompt's leading noun phrase.

    "a red ball and a blue square fall" -> ("the red ball and the blue square", True); a prompt that does not
    start with a determiner, or whose noun phrase cannot be told apart, gives ("the main subject", False).
    """
    unknown = ("the main subject", False)
    clause = re.split(r"[,.;:!?]", prompt, maxsplit=1)[0]
    words = clause.split()
    if len(words) < 2 or words[0].lower() not in _DETERMINERS:
        return unknown
    singular = words[0].lower() in _SINGULAR_DETERMINERS
    phrase = [words[0]]
    for word in words[1:]:
        lower, previous = word.lower(), phrase[-1].lower()
        if previous not in _DETERMINERS and previous != "and":  # a word after a noun or adjective
            if lower in _FUNCTION_WORDS or lower in _VERBS or lower.endswith("ing"):
                break
            # "a cat meows": after a singular noun, an -s word is a verb ("glass", "bus" are not).
            if singular and "and" not in phrase and lower.endswith("s") and not lower.endswith(("ss", "us", "is")):
                break
        phrase.append(word)
        if len(phrase) > MAX_SUBJECT_WORDS:
            return unknown
    lowered = [w.lower() for w in phrase]
    if lowered[-1] in _DETERMINERS or lowered[-1] == "and":
        return unknown
    plural_noun = lowered[-1].endswith("s") and not lowered[-1].endswith(("ss", "us", "is"))
    plural = lowered[0] in _PLURAL_DETERMINERS or "and" in lowered or (plural_noun and not singular)
    # Articles become "the" ("a red ball and a blue square" -> "the red ball and the blue square"); a count keeps
    # its number ("the two cats"); "some cats" -> "the cats".
    out = ["the" if w in ("a", "an", "one") else (w if w in _DETERMINERS or w == "and" else orig)
           for w, orig in zip(lowered, phrase)]
    if out[0] in _PLURAL_DETERMINERS - {"these", "those"}:
        out = ["the", *out] if out[0] not in ("some", "several", "many") else ["the", *out[1:]]
    return " ".join(out), plural


def _strip_suffix(text: str) -> str:
    text = text.strip()
    while text.lower().endswith(QUALITY_SUFFIX.lower()):
        text = text[: -len(QUALITY_SUFFIX)].rstrip(" ,")
    return text


def _tidy(text: str) -> str:
    """One line, capitalised, ending in a full stop."""
    text = " ".join(str(text).split()).strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?\"'":
        text += "."
    return text
