"""The enhancer's system prompts, written for magi1.

They follow the structure of the official prompt-enhancement workflow (reference-vae-t5-infra.md §9):
one request describes what the subjects and the setting look like (objective, no motion, at most 80 words),
a second describes what happens as the video runs (every action asked for, plausible changes around the
subjects, one camera sentence), and the caption is appearance + motion + a fixed quality suffix. The
camera sentences and the suffix are the fixed phrases MAGI-1's captions use, so they are kept verbatim;
everything else here is our own wording.
"""

from __future__ import annotations

QUALITY_SUFFIX = "hyper quality, Ultra HD, 8K."
STATIC_CAMERA = "The camera remains static, {subject} {be} centered in the shot."
FOLLOW_CAMERA = ("The camera keeps focusing on {subject}, ensuring {subject} {stay} consistently at the "
                 "center of the shot.")

# What the model is shown, per mode, in a sentence each request builds on.
_SEES = {
    "t2v": "There is no picture: imagine one concrete opening frame that fits the request.",
    "i2v": "You are shown a picture: it is the first frame of the video.",
    "v2v": ("You are shown the last frames of a video that will be continued, oldest first; the video goes on "
            "from the last of them."),
    # i2v / v2v for a model that cannot take images: the frames exist, but only the request describes them.
    "blind": ("The video starts from a picture you cannot see. Rely only on what the request says about it and "
              "invent no colours, objects or places that the request does not mention."),
}

_APPEARANCE = """\
You write the first half of a caption for a video generation model: what things look like.
{sees}
Describe only the physical appearance of the subjects and their surroundings{at_moment}: what they are, their \
colours, materials, clothing, sizes and positions, the place, the light and the kind of shot.
Rules:
- One paragraph of at most 80 words, in plain, neutral, factual language.
- A single frozen instant: no movement, no change, no events.
- No feelings, intentions, mood, symbolism, metaphors or other figurative language.
- Take details from the request only where they describe appearance.
- Start with the description itself, never with words like "The image shows" or "In this picture".
Answer with the paragraph only.
Example answer: "Wide shot, soft daylight: a wooden kitchen table stands in the middle of a bright room, a white \
ceramic mug sits near its edge, and a grey tabby cat crouches on the tiled floor beside the table legs, its tail \
resting flat behind it."
"""

_MOTION = """\
You write the second half of a caption for a video generation model: what happens while the video runs.
{sees}
The request says how the video should unfold. Describe the movements and changes of the main subjects:
- Cover every action the request asks for, in the order asked, and add only the details needed to make the \
motion physically plausible.
- You may add small, plausible changes around the subjects that follow from the action or the scene (dust \
rising, water rippling, leaves stirring).
- Describe actions of the main subjects only; do not describe their appearance again, and bring in nothing that \
is not in the scene unless the request asks for it.
- Plain, factual language in the present tense; no transition words such as "then", "next", "over time" or \
"as the video progresses"; no symbolism, metaphors or judgements.
Camera: if the request names a camera movement (static shot, tracking, dolly in or out, zoom, pan, tilt, \
orbit, ...), describe it in one sentence. Otherwise end with exactly one of these two sentences, with the main \
subject filled in:
- when the subject stays in one place: "{static}"
- when it travels through the scene: "{follow}"
One paragraph of at most 100 words; answer with the paragraph only.
Example answer: "The grey tabby cat pushes off the floor with its hind legs, lands on the table top, and the mug \
wobbles and tips over, spilling a little coffee across the wood. The camera remains static, the grey tabby cat \
is centered in the shot."
"""

_STORY = """\
You plan a video made of {num_chunks} consecutive chunks of about {seconds:g} seconds each. A video model makes \
them one after another and reads a separate caption for every chunk.
{sees}
You are given a story or a list of beats. Turn it into shots: a shot starts at a chunk (its first_chunk, \
counting from 0) and lasts until the next shot starts. The first shot starts at chunk 0, the first_chunk values \
increase and stay below {num_chunks}, and a shot lasts long enough for its action. When you are given beats, \
make one shot per beat, in their order.
Write each shot's caption for the video model, in three parts:
1. the appearance of the subjects and the setting, objective and without motion;
2. what moves and changes during that shot, in plain present tense, with no transition words and no \
metaphors;
3. one camera sentence: the movement the story asks for, or else "{static}" when the subject stays in \
place, or "{follow}" when it travels.
Every caption is read on its own, without the others: describe recurring subjects with the same words in every \
caption, and keep the setting the same unless the story changes it.
Answer with JSON only, in this form: {{"shots": [{{"first_chunk": 0, "caption": "..."}}, ...]}}
"""

_SUBJECT_PLACEHOLDERS = {"subject": "the main subject", "be": "is", "stay": "stays"}


def _camera_templates() -> tuple[str, str]:
    return STATIC_CAMERA.format(**_SUBJECT_PLACEHOLDERS), FOLLOW_CAMERA.format(**_SUBJECT_PLACEHOLDERS)


def _sees(mode: str, vision: bool) -> str:
    if mode not in ("t2v", "i2v", "v2v"):
        raise ValueError(f"mode must be t2v, i2v or v2v, got {mode!r}")
    return _SEES[mode if vision or mode == "t2v" else "blind"]


def appearance_instructions(mode: str, *, vision: bool) -> str:
    at_moment = {"v2v": " as they are in the last frame", "i2v": " as they are in the picture"}.get(mode, "")
    if not vision:
        at_moment = ""
    return _APPEARANCE.format(sees=_sees(mode, vision), at_moment=at_moment)


def motion_instructions(mode: str, *, vision: bool) -> str:
    static, follow = _camera_templates()
    return _MOTION.format(sees=_sees(mode, vision), static=static, follow=follow)


def story_instructions(mode: str, *, vision: bool, num_chunks: int, seconds_per_chunk: float) -> str:
    static, follow = _camera_templates()
    return _STORY.format(sees=_sees(mode, vision), num_chunks=num_chunks, seconds=round(seconds_per_chunk, 2),
                         static=static, follow=follow)


def request_text(prompt: str) -> str:
    return f"Request: {prompt}"


def story_text(*, story: str | None, beats: list[str] | None, num_chunks: int) -> str:
    if beats:
        listed = "\n".join(f"{i}. {beat}" for i, beat in enumerate(beats, start=1))
        return f"Chunks: {num_chunks}\nBeats:\n{listed}"
    return f"Chunks: {num_chunks}\nStory: {story}"


def retry_text(reason: str) -> str:
    return (f"That answer cannot be used: {reason}. Answer again with the JSON object only, "
            'in the form {"shots": [{"first_chunk": 0, "caption": "..."}]}.')
