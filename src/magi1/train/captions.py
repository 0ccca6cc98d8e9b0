"""Varied captions for the demo's synthetic clips, and the words the demo model knows.

`synthetic.describe` writes one canonical sentence per clip ("a red ball and a blue square fall and bounce on
the floor; the red ball hits the blue square"). A newcomer types something else: "a red ball bounces", "two
balls collide", "a blue square slides to the left", "a sphere falls". So the DiT trains on many wordings of
each clip, drawn from the same facts (which objects, what each does, who hits whom):

- names: colour and shape ("a red ball"), shape only ("a ball"), synonyms ("sphere", "block", "violet"),
  "a red object"; counts for objects of one shape ("two balls", "two balls, a red one and a blue one");
- verbs: none, a short one ("bounces", "rolls left"), or the full canonical phrase;
- order: objects in any order; collisions as "the red ball hits the blue square", "two balls collide", ...;
- extras now and then: the background ("on a dark background"), a lead-in ("a video of").

Every variant names every object in the clip (by colour, shape or count), so the model never learns that
an unmentioned object may appear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPE_SYNONYMS = {"ball": ("ball", "ball", "ball", "sphere", "circle", "disc"),
                  "square": ("square", "square", "square", "box", "block", "cube")}
SHAPE_PLURALS = {"box": "boxes"}
COLOUR_SYNONYMS = {"purple": ("purple", "purple", "violet")}
COUNT_NAMES = {1: "one", 2: "two", 3: "three"}
# Short forms of the canonical verb phrases (singular); each canonical phrase may be said in these words.
SHORT_VERBS = {
    "falls": ("falls", "drops"),
    "falls to the floor": ("falls", "falls down", "drops to the floor", "falls to the ground"),
    "bounces on the floor": ("bounces", "bounces on the ground", "bounces up and down"),
    "hits the wall": ("hits the wall", "bounces off the wall", "hits a wall"),
    "rests on the floor": ("rests on the floor", "lies still", "stays on the floor"),
    "moves around": ("moves", "moves around"),
}
for _motion, _noun in (("rolls", "ball"), ("slides", "square")):
    for _side in ("left", "right"):
        SHORT_VERBS[f"{_motion} to the {_side}"] = (f"{_motion} to the {_side}", f"{_motion} {_side}",
                                                   f"moves to the {_side}", f"{_motion} along the floor")
BACKGROUND_NAMES = {(232, 232, 228): ("a white background", "a light background"),
                    (200, 204, 210): ("a grey background", "a light grey background"),
                    (48, 48, 52): ("a dark background", "a black background")}
LEAD_INS = ("a video of ", "an animation of ", "a clip of ")

# What the demo model knows, for the warning shown when a prompt uses none of it.
KNOWN_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "violet")
KNOWN_SHAPES = ("ball", "balls", "sphere", "spheres", "circle", "circles", "disc", "discs", "square", "squares",
                "box", "boxes", "block", "blocks", "cube", "cubes", "object", "objects")
KNOWN_MOTIONS = ("fall", "falls", "drop", "drops", "bounce", "bounces", "roll", "rolls", "slide", "slides",
                 "hit", "hits", "collide", "collides", "rest", "rests", "move", "moves", "left", "right", "floor",
                 "ground", "wall")


@dataclass(frozen=True)
class ObjectFacts:
    colour: str
    shape: str
    verbs: tuple[tuple[str, str], ...]    # (singular, plural) canonical verb phrases, as synthetic.describe has them


@dataclass(frozen=True)
class ClipFacts:
    objects: tuple[ObjectFacts, ...]
    hit: tuple[int, int] | None          # the first visible collision between two objects
    background: tuple[int, int, int]


def clip_facts(clip, config) -> ClipFacts:
    """The facts of a synthetic.PhysicsClip that captions are made from."""
    from .synthetic import motion_phrases, scene_background

    objects = tuple(ObjectFacts(o.colour, o.shape, tuple(motion_phrases(i, o, clip.positions, clip.velocities,
                                                                         clip.events, config)))
                    for i, o in enumerate(clip.objects))
    hits = [e for e in clip.events if e.kind == "collision"]
    return ClipFacts(objects, hits[0].objects if hits else None, scene_background(clip.seed, config))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _plural_verb(singular: str) -> str:
    from .synthetic import plural_verb_phrase

    return plural_verb_phrase(singular)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class CaptionVariants:
    """Draws wordings of one clip's facts; `draw(rng)` gives one caption."""

    def __init__(self, facts: ClipFacts) -> None:
        self.facts = facts

    def _shape_word(self, shape: str, rng, plural: bool = False) -> str:
        word = _pick(rng, SHAPE_SYNONYMS[shape])
        return SHAPE_PLURALS.get(word, word + "s") if plural else word

    def _colour_word(self, colour: str, rng) -> str:
        return _pick(rng, COLOUR_SYNONYMS.get(colour, (colour,)))

    def _name(self, obj: ObjectFacts, rng, form: str) -> str:
        """A noun phrase without article: "red ball", "ball", "red object", "ball that is red"."""
        shape, colour = self._shape_word(obj.shape, rng), self._colour_word(obj.colour, rng)
        if form == "shape":
            return shape
        if form == "colour":
            return f"{colour} {_pick(rng, ('object', 'shape', 'thing'))}"
        if form == "relative":
            return f"{shape} that is {colour}"
        return f"{colour} {shape}"

    def _verbs(self, obj: ObjectFacts, rng, detail: str) -> list[str]:
        if detail == "none":
            return []
        canonical = [singular for singular, _ in obj.verbs]
        if detail == "full":
            return canonical
        chosen = _pick(rng, canonical)  # "a red ball bounces" as well as "a red ball falls"
        return [_pick(rng, SHORT_VERBS.get(chosen, (chosen,)))]

    def draw(self, rng: np.random.Generator) -> str:
        facts = self.facts
        count = len(facts.objects)
        detail = _pick(rng, ("none", "short", "short", "full", "full", "full"))
        # One naming style per caption mostly; now and then a mix.
        style = _pick(rng, ("full",) * 7 + ("shape", "shape", "colour", "relative"))
        forms = [style if float(rng.random()) < 0.85 else "full" for _ in range(count)]
        order = list(rng.permutation(count))
        if facts.hit is not None and count == 2 and float(rng.random()) < 0.3:
            return self._collision_only(rng)
        same_shape = count >= 2 and len({o.shape for o in facts.objects}) == 1
        if same_shape and float(rng.random()) < 0.5:
            text = self._counted(order, rng, detail)
        else:
            text = self._clauses(order, forms, rng, detail)
        if facts.hit is not None and float(rng.random()) < 0.7:
            text += self._collision(order, forms, rng)
        if float(rng.random()) < 0.12:
            text += " on " + _pick(rng, BACKGROUND_NAMES.get(facts.background, ("a plain background",)))
        if detail == "none" and float(rng.random()) < 0.3:
            text = _pick(rng, LEAD_INS) + text
        return text

    def _clauses(self, order, forms, rng, detail) -> str:
        """Objects that do the same thing share a clause: "a red ball and a blue square fall"."""
        groups: dict[tuple, list[int]] = {}
        verbs = {}
        for i in order:
            verbs[i] = self._verbs(self.facts.objects[i], rng, detail)
            groups.setdefault(tuple(verbs[i]), []).append(i)
        clauses = []
        for phrase, members in groups.items():
            subject = _join([_article(self._name(self.facts.objects[i], rng, forms[i])) for i in members])
            words = list(phrase) if len(members) == 1 else [_plural_verb(v) for v in phrase]
            clauses.append(f"{subject} {_join(words)}" if words else subject)
        if len(clauses) == 1:
            return clauses[0]
        joiner = _pick(rng, (", and ", ", and ", "; ", ", while "))
        return ", ".join(clauses[:-1]) + joiner + clauses[-1]

    def _counted(self, order, rng, detail) -> str:
        """Objects of one shape counted: "two balls", "two balls, a red one and a blue one, bounce"."""
        objects = [self.facts.objects[i] for i in order]
        head = f"{COUNT_NAMES[len(objects)]} {self._shape_word(objects[0].shape, rng, plural=True)}"
        if float(rng.random()) < 0.6:
            head += ", " + _join([f"a {self._colour_word(o.colour, rng)} one" for o in objects]) + ","
        shared = [v for v, _ in objects[0].verbs if all(v in [w for w, _ in o.verbs] for o in objects)]
        if detail == "none" or not shared:
            return head.rstrip(",")
        verb = shared[0] if detail == "full" else _pick(rng, SHORT_VERBS.get(shared[0], (shared[0],)))
        return f"{head} {_plural_verb(verb)}"

    def _collision_only(self, rng) -> str:
        """A two-object clip said as its collision alone: "two balls collide", "a red ball hits a blue square"."""
        first, second = (self.facts.objects[i] for i in self.facts.hit)
        if first.shape == second.shape and float(rng.random()) < 0.5:
            return f"two {self._shape_word(first.shape, rng, plural=True)} {_pick(rng, ('collide', 'bump', 'hit'))}"
        a, b = _article(self._name(first, rng, "full")), _article(self._name(second, rng, "full"))
        if float(rng.random()) < 0.5:
            return f"{a} and {b} collide"
        return f"{a} {_pick(rng, ('hits', 'bumps into', 'knocks into'))} {b}"

    def _collision(self, order, forms, rng) -> str:
        first, second = (self.facts.objects[i] for i in self.facts.hit)
        kind = _pick(rng, ("hits", "hits", "collide", "bump"))
        if kind == "hits":
            return (f"{_pick(rng, ('; ', ', and ', '; then '))}the {self._name(first, rng, 'full')} "
                    f"{_pick(rng, ('hits', 'bumps into', 'knocks into'))} the {self._name(second, rng, 'full')}")
        if kind == "collide" and first.shape == second.shape:
            return f"; two {self._shape_word(first.shape, rng, plural=True)} collide"
        return f"{_pick(rng, ('; ', ', and '))}the {self._name(first, rng, 'full')} and the " \
               f"{self._name(second, rng, 'full')} collide"


def caption_variants(clip, config, count: int, *, seed: int, canonical_share: float = 0.25) -> list[str]:
    """`count` captions of one clip: the canonical one first, then distinct random wordings.

    Each training sample picks one of them at random; about `canonical_share` of the list is the canonical
    sentence itself, so the held-out captions (canonical) stay well covered.
    """
    rng = np.random.default_rng([seed, clip.seed, 7])
    drawer = CaptionVariants(clip_facts(clip, config))
    captions = [clip.caption] * max(1, round(canonical_share * count))
    seen = set(captions)
    for _attempt in range(count * 6):
        if len(captions) >= count:
            break
        text = drawer.draw(rng)
        if text not in seen:
            seen.add(text)
            captions.append(text)
    while len(captions) < count:  # a one-object clip has few wordings: repeat them
        captions.append(captions[len(captions) % max(1, len(seen))])
    return captions


DEMO_SUMMARY = ("only balls and squares (red, green, blue, yellow, purple, orange) that fall, bounce, roll, "
                "slide and collide on a plain background")
DEMO_EXAMPLES = ("a red ball bounces", "two balls collide", "a blue square slides to the left")


def known_words() -> set[str]:
    return set(KNOWN_COLOURS) | set(KNOWN_SHAPES) | set(KNOWN_MOTIONS)


def write_demo_vocabulary(text_encoder_folder) -> None:
    """The file the pipeline reads to warn about prompts the demo cannot draw (models.prompt_vocabulary)."""
    from ..models.prompt_vocabulary import write_vocabulary

    write_vocabulary(text_encoder_folder, known_words(), DEMO_SUMMARY, DEMO_EXAMPLES)
