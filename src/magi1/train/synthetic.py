"""Synthetic physics clips: a few coloured balls and squares falling, bouncing and rolling in a box.

Everything follows from a seed: the scene (objects, colours, sizes, start state), a small rigid-body
simulation (gravity, walls and floor with restitution, object-object impulses, floor friction), an
anti-aliased numpy renderer and a caption read off the simulated motion. Clips train the demo
model; a held-out set written in the Physics-IQ layout evaluates it with `magi1.eval`.

Takes: as in Physics-IQ, where every scenario is filmed twice, take k > 1 replays take 1 exactly up
to the split (the end of the conditioning frames) and then jitters every velocity by ~0.5%. The
two takes' disagreement is the "physical variance" that normalises the Physics-IQ score.

Coordinates: pixels of the centre view, x to the right, y down; the world is the box [0, W] x [0, H].
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magi1.eval.benchmark import (
    PERSPECTIVES,
    benchmark_file_name,
    conditioning_videos_dir,
    description_key,
    descriptions_path,
    switch_frames_dir,
    testing_videos_dir,
    write_lossless_video,
)

# Saturated, well-separated colours, so captions can name them and masks can see them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (40, 90, 230),
    "yellow": (240, 205, 30),
    "purple": (145, 60, 205),
    "orange": (245, 130, 30),
}
SHAPES = ("ball", "square")
BACKGROUNDS = ((232, 232, 228), (200, 204, 210), (48, 48, 52))  # plain neutral greys
EVAL_FIRST_SEED = 1_000_000  # held-out evaluation scenarios use seeds from here; train below it


@dataclass(frozen=True)
class SceneConfig:
    height: int = 64
    width: int = 64
    num_frames: int = 96
    fps: float = 24.0
    conditioning_frames: int = 24   # frames every take shares; the take perturbation starts after them
    min_objects: int = 1
    max_objects: int = 3
    gravity: float = 4.0            # frame heights per s² (256 px/s² at 64 px: a full drop takes ~0.7 s)
    restitution: float = 0.8        # fraction of the normal speed kept in a bounce
    rolling_friction: float = 0.3   # 1/s: how fast a ball's speed decays while it touches the floor
    sliding_friction: float = 2.0   # 1/s: the same for a square
    take_jitter: float = 0.005      # relative velocity perturbation applied at the split for take > 1
    substeps: int = 4               # physics steps per frame


@dataclass(frozen=True)
class SceneObject:
    shape: str                      # "ball" or "square"
    colour: str                     # a key of COLOURS
    size: float                     # radius (ball) or half side (square), pixels

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    @property
    def mass(self) -> float:
        return math.pi * self.size**2 if self.shape == "ball" else 4.0 * self.size**2

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class PhysicsEvent:
    frame: int                      # the frame the event happens before (state `frame` is after it)
    kind: str                       # "floor", "wall", "ceiling" or "collision"
    objects: tuple[int, ...]        # indices into the clip's objects
    speed: float                    # normal speed of the impact, px/s


@dataclass
class PhysicsClip:
    frames: np.ndarray              # uint8 (T, H, W, 3)
    caption: str
    objects: tuple[SceneObject, ...]
    positions: np.ndarray           # float64 (T, n, 2): object centres (x, y) per frame, world pixels
    velocities: np.ndarray          # float64 (T, n, 2): px/s
    events: tuple[PhysicsEvent, ...]
    seed: int
    take: int
    split_frame: int                # first frame where takes may differ
    fps: float
    perspective: str


# ------------------------------------------------------------------------------------------- the scene


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    positions: tuple[tuple[float, float], ...]
    velocities: tuple[tuple[float, float], ...]
    background: tuple[int, int, int]


def sample_scene(seed: int, config: SceneConfig = SceneConfig()) -> Scene:
    """Objects with distinct colours, placed without overlap in the upper part of the box, moving."""
    rng = np.random.default_rng(seed)
    height, width = config.height, config.width
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    objects, positions, velocities = [], [], []
    for colour in colours:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size = float(rng.uniform(0.07, 0.12) * min(height, width))
        # Rejection sampling keeps objects apart at the start; should every try fail, the last spot
        # is kept and the collision solver pushes the overlap apart in the first step.
        for _attempt in range(100):
            x = float(rng.uniform(size, width - size))
            y = float(rng.uniform(size, 0.6 * height))
            if all(math.hypot(x - px, y - py) > 1.5 * (size + o.size) for o, (px, py) in zip(objects, positions)):
                break
        objects.append(SceneObject(shape, str(colour), size))
        positions.append((x, y))
        velocities.append((float(rng.uniform(-0.8, 0.8) * width), float(rng.uniform(-0.6, 0.2) * height)))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(tuple(objects), tuple(positions), tuple(velocities), background)


# -------------------------------------------------------------------------------------------- physics


def _contact(a: SceneObject, pa, b: SceneObject, pb):
    """(normal from a to b, penetration depth) when a and b overlap, else None."""
    dx, dy = pb[0] - pa[0], pb[1] - pa[1]
    if a.shape == "ball" and b.shape == "ball":
        distance = math.hypot(dx, dy)
        depth = a.size + b.size - distance
        if depth <= 0:
            return None
        return ((dx / distance, dy / distance) if distance > 1e-9 else (0.0, 1.0)), depth
    if a.shape == "square" and b.shape == "square":
        overlap_x = a.size + b.size - abs(dx)
        overlap_y = a.size + b.size - abs(dy)
        if overlap_x <= 0 or overlap_y <= 0:
            return None
        if overlap_x < overlap_y:  # separate along the axis of least overlap
            return (math.copysign(1.0, dx), 0.0), overlap_x
        return (0.0, math.copysign(1.0, dy)), overlap_y
    # ball against square: nearest point of the square to the ball's centre
    flipped = a.shape == "square"
    ball, square = (b, a) if flipped else (a, b)
    centre, box = (pb, pa) if flipped else (pa, pb)
    near_x = min(max(centre[0], box[0] - square.size), box[0] + square.size)
    near_y = min(max(centre[1], box[1] - square.size), box[1] + square.size)
    off_x, off_y = centre[0] - near_x, centre[1] - near_y
    distance = math.hypot(off_x, off_y)
    if distance >= ball.size:
        return None
    if distance > 1e-9:
        normal, depth = (off_x / distance, off_y / distance), ball.size - distance  # square → ball
    else:  # centre inside the square: push out along the shallower axis
        gap_x, gap_y = centre[0] - box[0], centre[1] - box[1]
        if square.size - abs(gap_x) < square.size - abs(gap_y):
            normal, depth = (math.copysign(1.0, gap_x), 0.0), square.size + ball.size - abs(gap_x)
        else:
            normal, depth = (0.0, math.copysign(1.0, gap_y)), square.size + ball.size - abs(gap_y)
    if not flipped:  # a is the ball: the normal must point from a (ball) to b (square)
        normal = (-normal[0], -normal[1])
    return normal, depth


class _World:
    """Mutable simulation state in plain Python floats (a handful of objects: faster than numpy)."""

    def __init__(self, scene: Scene, config: SceneConfig) -> None:
        self.objects = scene.objects
        self.pos = [list(p) for p in scene.positions]
        self.vel = [list(v) for v in scene.velocities]
        self.config = config
        self.gravity = config.gravity * config.height
        self.dt = 1.0 / (config.fps * config.substeps)
        # Below these speeds a contact stops bouncing (no endless micro-bounces) / is not an "event".
        self.rest_speed = 3.0 * self.gravity * self.dt
        self.visible_speed = 0.2 * config.height
        # Per object: (axis, lowest centre, highest centre, event names) for x and y; floor friction decay.
        self.bounds = [((0, o.size, config.width - o.size, ("wall", "wall")),
                        (1, o.size, config.height - o.size, ("ceiling", "floor"))) for o in self.objects]
        self.floor_decay = [math.exp(-(config.rolling_friction if o.shape == "ball" else config.sliding_friction)
                                     * self.dt) for o in self.objects]

    def step(self, frame: int, events: list[PhysicsEvent]) -> None:
        for v in self.vel:
            v[1] += self.gravity * self.dt
        for p, v in zip(self.pos, self.vel):
            p[0] += v[0] * self.dt
            p[1] += v[1] * self.dt
        self._walls(frame, events)
        if self._collisions(frame, events):
            self._walls(frame, events)  # pushing apart may have moved an object through a wall

    def _bounce(self, speed: float) -> float:
        return speed * self.config.restitution if speed > self.rest_speed else 0.0

    def _walls(self, frame: int, events: list[PhysicsEvent]) -> None:
        for i, (p, v) in enumerate(zip(self.pos, self.vel)):
            for axis, low, high, kinds in self.bounds[i]:
                if p[axis] < low:
                    p[axis] = low
                    if v[axis] < 0:
                        self._record(events, frame, kinds[0], (i,), -v[axis])
                        v[axis] = self._bounce(-v[axis])
                elif p[axis] > high:
                    p[axis] = high
                    if v[axis] > 0:
                        self._record(events, frame, kinds[1], (i,), v[axis])
                        v[axis] = -self._bounce(v[axis])
            if p[1] >= self.bounds[i][1][2] - 1e-6:  # touching the floor: rolling or sliding friction
                v[0] *= self.floor_decay[i]

    def _collisions(self, frame: int, events: list[PhysicsEvent]) -> bool:
        """Resolve overlapping pairs; True when any object was moved."""
        n, moved = len(self.objects), False
        for i in range(n):
            for j in range(i + 1, n):
                hit = _contact(self.objects[i], self.pos[i], self.objects[j], self.pos[j])
                if hit is None:
                    continue
                (nx, ny), depth = hit
                moved = True
                inv_i, inv_j = 1.0 / self.objects[i].mass, 1.0 / self.objects[j].mass
                share_i, share_j = inv_i / (inv_i + inv_j), inv_j / (inv_i + inv_j)
                pi, pj, vi, vj = self.pos[i], self.pos[j], self.vel[i], self.vel[j]
                pi[0] -= nx * depth * share_i
                pi[1] -= ny * depth * share_i
                pj[0] += nx * depth * share_j
                pj[1] += ny * depth * share_j
                closing = -((vj[0] - vi[0]) * nx + (vj[1] - vi[1]) * ny)
                if closing <= 0:
                    continue
                self._record(events, frame, "collision", (i, j), closing)
                impulse = (closing + self._bounce(closing)) / (inv_i + inv_j)
                vi[0] -= impulse * inv_i * nx
                vi[1] -= impulse * inv_i * ny
                vj[0] += impulse * inv_j * nx
                vj[1] += impulse * inv_j * ny
        return moved

    def _record(self, events, frame, kind, objects, speed) -> None:
        if speed > self.visible_speed:
            events.append(PhysicsEvent(frame, kind, objects, float(speed)))

    def perturb(self, rng: np.random.Generator, relative: float) -> None:
        for v in self.vel:
            v[0] *= 1.0 + relative * float(rng.standard_normal())
            v[1] *= 1.0 + relative * float(rng.standard_normal())


def simulate(scene: Scene, config: SceneConfig = SceneConfig(), seed: int = 0, take: int = 1):
    """(positions (T, n, 2), velocities (T, n, 2), events) with frame 0 the initial state.

    For take > 1 every velocity is scaled by (1 + take_jitter·N(0, 1)) right after frame
    `conditioning_frames - 1`, from a random stream of its own, so take 1 is untouched.
    """
    world = _World(scene, config)
    n = len(scene.objects)
    positions = np.empty((config.num_frames, n, 2))
    velocities = np.empty((config.num_frames, n, 2))
    events: list[PhysicsEvent] = []
    positions[0], velocities[0] = world.pos, world.vel
    for frame in range(1, config.num_frames):
        if take != 1 and frame == config.conditioning_frames:
            world.perturb(np.random.default_rng([seed, take]), config.take_jitter)
        for _ in range(config.substeps):
            world.step(frame, events)
        positions[frame], velocities[frame] = world.pos, world.vel
    return positions, velocities, tuple(events)


# ------------------------------------------------------------------------------------------ rendering

# Camera per perspective: (scale, x offset, y offset) as fractions of the frame. The side views see
# the box smaller and off-centre, with the world's outside drawn darker so the walls stay visible.
CAMERAS = {
    "perspective-center": (1.0, 0.0, 0.0),
    "perspective-left": (0.85, 0.15, 0.15),
    "perspective-right": (0.85, 0.0, 0.15),
}


def _span_coverage(lows, highs, pixels) -> np.ndarray:
    """(T, K): overlap of each pixel [k, k+1) with the span [low_t, high_t]; `pixels` (T, K) or (K,) indices."""
    left = np.asarray(pixels, np.float32)
    lows = np.asarray(lows, np.float32)[:, None]
    highs = np.asarray(highs, np.float32)[:, None]
    return np.clip(np.minimum(left + 1.0, highs) - np.maximum(left, lows), 0.0, 1.0)


def _window(centres: np.ndarray, size: float, length: int) -> np.ndarray:
    """(T, K) pixel indices of a window that holds an object of half-extent `size` in every frame.

    Kept inside the frame (shifted, not cut), so no pixel appears twice and the blend below can
    write the patches back with one fancy-indexed assignment.
    """
    span = min(int(math.ceil(2 * size)) + 4, length)
    start = np.clip(np.floor(centres - size - 1).astype(np.int64), 0, length - span)
    return start[:, None] + np.arange(span)


def render_frames(
    objects: tuple[SceneObject, ...],
    positions: np.ndarray,
    height: int,
    width: int,
    background: tuple[int, int, int],
    perspective: str = "perspective-center",
) -> np.ndarray:
    """uint8 (T, H, W, 3): objects drawn in order over a plain background, anti-aliased by coverage.

    Squares get their exact pixel coverage (product of the two axis overlaps); balls the usual
    one-pixel ramp across the rim, clip(r + 1/2 - distance to the pixel centre, 0, 1). Each object
    is drawn only inside a small window around it, which keeps a 64x64x96 clip at a few ms.
    """
    scale, shift_x, shift_y = CAMERAS[perspective]
    count = len(positions)
    x0, y0 = shift_x * width, shift_y * height
    inside = _span_coverage([y0], [y0 + scale * height], np.arange(height))[0][:, None] * \
        _span_coverage([x0], [x0 + scale * width], np.arange(width))[0][None, :]
    back = np.asarray(background, np.float32)
    backdrop = 0.6 * back + inside[..., None] * (0.4 * back)  # outside the box is darker
    # The canvas stays uint8; only the small windows around objects are blended in float32.
    canvas = np.empty((count, height, width, 3), np.uint8)
    canvas[:] = np.rint(backdrop).astype(np.uint8)
    frame_index = np.arange(count)[:, None, None]
    for i, obj in enumerate(objects):
        cx = (positions[:, i, 0] * scale + x0).astype(np.float32)
        cy = (positions[:, i, 1] * scale + y0).astype(np.float32)
        size = np.float32(obj.size * scale)
        rows, cols = _window(cy, size, height), _window(cx, size, width)  # (T, Ky), (T, Kx)
        if obj.shape == "ball":
            dy = rows.astype(np.float32) + np.float32(0.5) - cy[:, None]
            dx = cols.astype(np.float32) + np.float32(0.5) - cx[:, None]
            dist = np.sqrt(dy[:, :, None] ** 2 + dx[:, None, :] ** 2)
            coverage = np.clip(size + np.float32(0.5) - dist, 0.0, 1.0)
        else:
            coverage = _span_coverage(cy - size, cy + size, rows)[:, :, None] * \
                _span_coverage(cx - size, cx + size, cols)[:, None, :]
        where = (frame_index, rows[:, :, None], cols[:, None, :])
        patch = canvas[where].astype(np.float32)
        patch += coverage[..., None] * (np.asarray(obj.rgb, np.float32) - patch)
        canvas[where] = np.rint(patch).astype(np.uint8)
    return canvas


# -------------------------------------------------------------------------------------------- captions


def plural_verb_phrase(singular: str) -> str:
    """The plural of a verb phrase whose first word is a 3rd-person verb: "rolls left" → "roll left"."""
    first, _, rest = singular.partition(" ")
    plural = first[:-2] if first.endswith("es") and first[:-2].endswith(("sh", "ch", "ss")) else first[:-1]
    return plural + (" " + rest if rest else "")


def _verb(singular: str) -> tuple[str, str]:
    return singular, plural_verb_phrase(singular)


def scene_background(seed: int, config: SceneConfig = SceneConfig()) -> tuple[int, int, int]:
    """The background colour of the clip of `seed`."""
    return sample_scene(seed, config).background


def motion_phrases(index: int, obj: SceneObject, positions, velocities, events,
                  config: SceneConfig) -> list[tuple[str, str]]:
    """(singular, plural) verb phrases for what object `index` does, read off its trajectory and events."""
    x, y = positions[:, index, 0], positions[:, index, 1]
    vx = velocities[:, index, 0]
    floor_level = config.height - obj.size
    on_floor = y >= floor_level - 0.5
    impacts = [e for e in events if e.kind == "floor" and e.objects == (index,)]
    walls = [e for e in events if e.kind == "wall" and e.objects == (index,)]
    verbs = []
    falls = not on_floor[0] and floor_level - y[0] > 0.25 * config.height and on_floor.any()
    if falls:
        verbs.append("falls" if len(impacts) >= 2 else "falls to the floor")
    if len(impacts) >= 2:
        verbs.append("bounces on the floor")
    moving_on_floor = on_floor & (np.abs(vx) > 0.1 * config.width)
    if moving_on_floor.mean() >= 0.2:
        direction = "right" if vx[moving_on_floor].sum() > 0 else "left"
        verbs.append(f"{'rolls' if obj.shape == 'ball' else 'slides'} to the {direction}")
    if walls and len(verbs) < 2:  # keep captions short: a wall hit is the least telling event
        verbs.append("hits the wall")
    if not verbs:
        travelled = np.hypot(np.diff(x), np.diff(y)).sum()
        verbs.append("rests on the floor" if on_floor[-1] and travelled < 0.1 * config.height else "moves around")
    return [_verb(v) for v in verbs]


def _indefinite(noun_phrase: str) -> str:
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(objects, positions, velocities, events, config: SceneConfig) -> str:
    """A one-sentence caption naming every object's colour and shape and what it does.

    Objects doing the same thing share a clause ("a red ball and a blue square bounce on the
    floor"); the first visible impact between two objects is mentioned at the end.
    """
    groups: dict[tuple, list[int]] = {}
    for i, obj in enumerate(objects):
        verbs = tuple(motion_phrases(i, obj, positions, velocities, events, config))
        groups.setdefault(verbs, []).append(i)
    clauses = []
    for verbs, members in groups.items():
        subject = _join([_indefinite(objects[i].name) for i in members])
        form = 0 if len(members) == 1 else 1
        clauses.append(f"{subject} {_join([v[form] for v in verbs])}")
    caption = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + ", and " + clauses[-1]
    hits = [e for e in events if e.kind == "collision"]
    if hits:
        first, second = hits[0].objects
        caption += f"; the {objects[first].name} hits the {objects[second].name}"
    return caption


# ---------------------------------------------------------------------------------------------- clips


def make_clip(seed: int, config: SceneConfig = SceneConfig(), take: int = 1,
              perspective: str = "perspective-center") -> PhysicsClip:
    """One clip, fully determined by (seed, config, take, perspective)."""
    if not 0 < config.conditioning_frames <= config.num_frames:
        raise ValueError(f"conditioning_frames must be in 1..num_frames, got {config.conditioning_frames}")
    scene = sample_scene(seed, config)
    positions, velocities, events = simulate(scene, config, seed=seed, take=take)
    frames = render_frames(scene.objects, positions, config.height, config.width, scene.background, perspective)
    return PhysicsClip(
        frames=frames,
        caption=describe(scene.objects, positions, velocities, events, config),
        objects=scene.objects,
        positions=positions,
        velocities=velocities,
        events=events,
        seed=seed,
        take=take,
        split_frame=config.conditioning_frames,
        fps=config.fps,
        perspective=perspective,
    )


class SyntheticPhysicsDataset(torch.utils.data.Dataset):
    """Index i → the clip of seed `first_seed + i`, as {"frames": uint8 (T, H, W, 3), "caption": str}."""

    def __init__(self, num_clips: int, config: SceneConfig = SceneConfig(), first_seed: int = 0,
                 take: int = 1, perspective: str = "perspective-center") -> None:
        if first_seed < EVAL_FIRST_SEED <= first_seed + num_clips - 1:
            raise ValueError(f"seeds {first_seed}..{first_seed + num_clips - 1} overlap the held-out "
                             f"evaluation seeds starting at {EVAL_FIRST_SEED}")
        self.num_clips, self.config, self.first_seed = num_clips, config, first_seed
        self.take, self.perspective = take, perspective

    def __len__(self) -> int:
        return self.num_clips

    def seed_of(self, index: int) -> int:
        if not -self.num_clips <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        return self.first_seed + index % self.num_clips

    def clip(self, index: int) -> PhysicsClip:
        """The full clip with its metadata (trajectories, events, objects)."""
        return make_clip(self.seed_of(index), self.config, self.take, self.perspective)

    def __getitem__(self, index: int) -> dict:
        clip = self.clip(index)
        return {"frames": clip.frames, "caption": clip.caption}


# ------------------------------------------------------------------------------ held-out Physics-IQ set


def write_physics_iq_eval_set(
    root: str | Path,
    num_scenarios: int = 8,
    first_seed: int = EVAL_FIRST_SEED,
    fps: int = 24,
    height: int = 64,
    width: int = 64,
    conditioning_seconds: float = 3.0,
    testing_seconds: float = 5.0,
    perspectives: tuple[str, ...] = PERSPECTIVES,
    config: SceneConfig = SceneConfig(),
) -> list[dict]:
    """Write scenarios in the Physics-IQ layout (see magi1.eval.benchmark) and return a manifest.

    Per scenario, perspective and take (1, 2): the conditioning video (the first
    `conditioning_seconds`), the testing video (the next `testing_seconds`), the switch frame (the
    last conditioning frame, JPEG as in the real set) and a descriptions.csv row. Videos are
    lossless. Take-1 IDs come first (0001...), take-2 IDs follow, as in the real benchmark.
    """
    root = Path(root)
    n_cond, n_test = round(conditioning_seconds * fps), round(testing_seconds * fps)
    config = replace(config, height=height, width=width, fps=float(fps), num_frames=n_cond + n_test,
                     conditioning_frames=n_cond)
    views_per_take = num_scenarios * len(perspectives)
    manifest = []
    for s in range(num_scenarios):
        seed = first_seed + s
        scenario = f"synthetic-{seed}"
        for take in (1, 2):
            for p, perspective in enumerate(perspectives):
                clip = make_clip(seed, config, take, perspective)
                video_id = (take - 1) * views_per_take + s * len(perspectives) + p + 1
                names = dict(video_id=video_id, perspective=perspective, take=take, scenario=scenario)
                testing = testing_videos_dir(root, fps) / benchmark_file_name(kind="testing-videos", fps=fps, **names)
                conditioning = conditioning_videos_dir(root, fps) / benchmark_file_name(
                    kind="conditioning-videos", fps=fps, **names)
                switch = switch_frames_dir(root) / benchmark_file_name(
                    kind="switch-frames", fps="any", extension="jpg", **names)
                write_lossless_video(testing, clip.frames[n_cond:], fps)
                write_lossless_video(conditioning, clip.frames[:n_cond], fps)
                switch.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(clip.frames[n_cond - 1]).save(switch, quality=95)
                manifest.append({
                    "id": f"{video_id:04d}", "scenario": scenario, "perspective": perspective, "take": take,
                    "seed": seed, "caption": clip.caption, "testing": str(testing),
                    "conditioning": str(conditioning), "switch_frame": str(switch),
                })
    descriptions = descriptions_path(root)
    descriptions.parent.mkdir(parents=True, exist_ok=True)
    with open(descriptions, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["scenario", "description"])
        for entry in manifest:
            writer.writerow([description_key(entry["id"], entry["perspective"], entry["take"], entry["scenario"]),
                             entry["caption"]])
    return manifest
