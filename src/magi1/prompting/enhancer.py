"""PromptEnhancer: a short idea becomes a MAGI-1 caption, and a story becomes the run's per-chunk captions.

With a model (settings.url), a caption is built as the official workflow builds it: one request for the
appearance, one for the motion (sent at once), joined with the quality suffix; a story is one request whose
answer follows a JSON schema. Without a model the deterministic fallback templates are used, so enhancement
never stands in the way of a run.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import instructions
from .fallback import complete_caption, fallback_caption
from .prompts import EnhancedPrompts
from .settings import EnhanceError, EnhanceSettings
from .story import MAX_BEATS, MAX_STORY_CHARS, StoryAnswerError, parse_story_answer, split_story, spread_beats, \
    story_response_format

logger = logging.getLogger(__name__)

MODES = ("t2v", "i2v", "v2v")
MAX_PROMPT_CHARS = 2000
MAX_SHOWN_ANSWER_CHARS = 300
FALLBACK = "fallback"


class PromptEnhancer:
    """enhancer = PromptEnhancer(EnhanceSettings.from_env(url, model)); enhancer.enhance("a cat jumps", mode="i2v",
    image="cat.jpg").prompt"""

    def __init__(self, settings: EnhanceSettings | None = None, *, client=None):
        self.settings = settings or EnhanceSettings()
        self._client = client
        if self._client is None and self.settings.uses_model:
            from .client import ChatClient

            self._client = ChatClient(self.settings)

    @property
    def name(self) -> str:
        return self.settings.model if self.settings.uses_model else FALLBACK

    # ------------------------------------------------------------------ one caption
    def enhance(self, prompt: str, *, mode: str = "t2v", image=None, video=None, fps: int = 24) -> EnhancedPrompts:
        """A caption for the whole run. i2v takes `image` (path / array / PIL), v2v takes `video` (path or frames)."""
        prompt = _checked_prompt(prompt)
        _check_inputs(mode, image, video)
        if self._client is None:
            return EnhancedPrompts(prompt=fallback_caption(prompt), original=prompt, enhancer=FALLBACK, mode=mode)
        caption = self._with_vision_fallback(mode, image, video, fps,
                                             lambda pictures: self._two_part_caption(prompt, mode, pictures))
        return EnhancedPrompts(prompt=caption, original=prompt, enhancer=self.name, mode=mode)

    def enhance_schedule(self, prompt: str, chunk_prompts: dict[int, str] | None = None, **inputs) -> EnhancedPrompts:
        """`prompt` and each of `chunk_prompts` ({first chunk: prompt}) enhanced on its own (see `enhance`)."""
        if not chunk_prompts:
            return self.enhance(prompt, **inputs)
        schedule = {0: prompt, **chunk_prompts}
        enhanced = {chunk: self.enhance(text, **inputs).prompt for chunk, text in schedule.items()}
        original = "\n".join(f"{chunk}:{text}" for chunk, text in sorted(schedule.items()))
        return EnhancedPrompts.from_schedule(enhanced, original=original, enhancer=self.name,
                                             mode=inputs.get("mode", "t2v"))

    def _two_part_caption(self, prompt: str, mode: str, pictures: list[dict] | None) -> str:
        vision = pictures is not None
        user = _user_content(instructions.request_text(prompt), pictures)
        requests = [
            [{"role": "system", "content": instructions.appearance_instructions(mode, vision=vision)},
             {"role": "user", "content": user}],
            [{"role": "system", "content": instructions.motion_instructions(mode, vision=vision)},
             {"role": "user", "content": user}],
        ]
        # The two halves do not depend on each other, as in the official workflow's parallel nodes.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="magi1-enhance") as pool:
            appearance, motion = pool.map(self._client.complete, requests)
        return complete_caption(f"{_unquote(appearance)} {_unquote(motion)}", subject_from=prompt)

    # ------------------------------------------------------------------ a story
    def enhance_story(self, story: str | None = None, *, beats: list[str] | None = None, num_chunks: int,
                      mode: str = "t2v", image=None, video=None, fps: int = 24,
                      seconds_per_chunk: float = 1.0) -> EnhancedPrompts:
        """Per-chunk captions ({first chunk: caption}) for a run of `num_chunks` generated chunks."""
        story, beats = _checked_story(story, beats)
        _check_inputs(mode, image, video)
        if not isinstance(num_chunks, int) or num_chunks < 1:
            raise EnhanceError(f"story mode needs the run's chunk count (at least 1), got {num_chunks!r}")
        original = story if story is not None else "\n".join(beats)
        if self._client is None:
            schedule = spread_beats(beats or split_story(story), num_chunks)
            schedule = {chunk: fallback_caption(text) for chunk, text in schedule.items()}
            return EnhancedPrompts.from_schedule(schedule, original=original, enhancer=FALLBACK, mode=mode)
        schedule = self._with_vision_fallback(
            mode, image, video, fps,
            lambda pictures: self._story_schedule(story, beats, num_chunks, mode, pictures, seconds_per_chunk))
        schedule = {chunk: complete_caption(caption) for chunk, caption in schedule.items()}
        return EnhancedPrompts.from_schedule(schedule, original=original, enhancer=self.name, mode=mode)

    def _story_schedule(self, story, beats, num_chunks, mode, pictures, seconds_per_chunk) -> dict[int, str]:
        system = instructions.story_instructions(mode, vision=pictures is not None, num_chunks=num_chunks,
                                                 seconds_per_chunk=seconds_per_chunk)
        text = instructions.story_text(story=story, beats=beats, num_chunks=num_chunks)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": _user_content(text, pictures)}]
        answer = self._client.complete(messages, response_format=story_response_format())
        try:
            return parse_story_answer(answer, num_chunks)
        except StoryAnswerError as first_reason:
            logger.warning("the story answer could not be used (%s); asking once more", first_reason)
            messages += [{"role": "assistant", "content": answer},
                         {"role": "user", "content": instructions.retry_text(str(first_reason))}]
        answer = self._client.complete(messages, response_format=story_response_format())
        try:
            return parse_story_answer(answer, num_chunks)
        except StoryAnswerError as reason:
            shown = " ".join(answer.split())
            if len(shown) > MAX_SHOWN_ANSWER_CHARS:
                shown = shown[:MAX_SHOWN_ANSWER_CHARS] + "..."
            raise EnhanceError(f"the model's story answer could not be used twice ({reason}); "
                               f"it answered: {shown!r}") from None

    # ------------------------------------------------------------------ images
    def _with_vision_fallback(self, mode, image, video, fps, ask):
        """ask(pictures) with the image parts; a model that refuses images gets the text path (vision="auto")."""
        from .client import RequestRefused

        if mode == "t2v" or self.settings.vision == "off":
            return ask(None)
        pictures = _pictures(mode, image, video, fps)
        try:
            return ask(pictures)
        except RequestRefused as err:
            if self.settings.vision == "on":
                raise EnhanceError(f"{err}; if {self.settings.model!r} cannot take images, use "
                                   f"--enhance_vision off") from None
            logger.warning("%s; using the text path (the model does not see the %s)", err,
                           "image" if mode == "i2v" else "frames")
            return ask(None)


def _pictures(mode: str, image, video, fps: int) -> list[dict]:
    from .media import image_part, last_prefix_frames

    if mode == "i2v":
        return [image_part(image)]
    return [image_part(frame) for frame in last_prefix_frames(video, fps=fps)]


def _user_content(text: str, pictures: list[dict] | None):
    """Plain text for the text path; text then image parts for a vision model."""
    if pictures is None:
        return text
    return [{"type": "text", "text": text}, *pictures]


def _unquote(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _checked_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise EnhanceError("there is no prompt to enhance")
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_PROMPT_CHARS:
        raise EnhanceError(f"the prompt is {len(prompt)} characters; the enhancer takes at most {MAX_PROMPT_CHARS}")
    return prompt


def _checked_story(story, beats) -> tuple[str | None, list[str] | None]:
    if (story is None) == (not beats):
        raise EnhanceError("story mode takes a story or a list of beats (one of the two)")
    if story is not None:
        story = " ".join(str(story).split())
        if not story.strip(" .!?;,:"):  # nothing but separators has no beat to caption
            raise EnhanceError("the story is empty")
        if len(story) > MAX_STORY_CHARS:
            raise EnhanceError(f"the story is {len(story)} characters; the enhancer takes at most {MAX_STORY_CHARS}")
        return story, None
    beats = [" ".join(str(b).split()) for b in beats]
    if any(not b for b in beats):
        raise EnhanceError("a beat is empty")
    if len(beats) > MAX_BEATS:
        raise EnhanceError(f"{len(beats)} beats; the enhancer takes at most {MAX_BEATS}")
    return None, beats


def _check_inputs(mode: str, image, video) -> None:
    if mode not in MODES:
        raise EnhanceError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "i2v" and image is None:
        raise EnhanceError("i2v enhancement needs the image")
    if mode == "v2v" and video is None:
        raise EnhanceError("v2v enhancement needs the video")
    for source in (image, video):
        if isinstance(source, (str, Path)) and not Path(source).is_file():
            raise EnhanceError(f"no such file: {source}")
