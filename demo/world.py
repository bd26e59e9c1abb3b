"""A procedural video world where I2VEdit can be run, seen and scored on a CPU.

Each scene is a few coloured shapes moving over a static background (flat, a gradient, or a
smooth texture), rendered at 64x64 for 8 frames. For every scene the world also renders the
**ground-truth edited video** for four kinds of edit of its target object (the last one drawn,
always on top):

- RECOLOUR: the target gets another colour;
- RESHAPE:  the target becomes another shape of about the same size (a moderate shape change);
- PATTERN:  the target gets dark stripes that move with it;
- STYLE:    a global colour style change of the whole frame (a rotation of the RGB channels).

The edited first frame a user would paint is frame 0 of the ground truth; the edit's job is to
produce the rest of it from the source video. Scoring uses the target's colour: every scene keeps
its saturated object colours far from the muted backgrounds, so a colour threshold finds the
object again in generated frames (`colour_mask`).

Everything is a pure function of the seed: `scene(seed)` draws a scene, `render(scene)` draws its
frames, `edit(scene, kind)` returns the edited scene. Seeds below HELD_OUT_SEEDS are never used in
pretraining (demo/pretrain.py draws from PRETRAIN_SEEDS), so they are held out for evaluation.
"""

import enum
from dataclasses import dataclass, replace

import numpy as np

SIZE = 64                     # pixels, square frames
NUM_FRAMES = 8                # one clip of the tiny model
FPS = 7                       # the frame rate the model is told (the id it sees is FPS - 1)
HELD_OUT_SEEDS = 100_000      # seeds [0, HELD_OUT_SEEDS) are never seen in pretraining
PRETRAIN_SEEDS = range(HELD_OUT_SEEDS, 2**31 - 1)

# Saturated object colours (RGB in [0, 1]); backgrounds are muted towards grey, so any two of
# these stay far from each other and from every background pixel.
PALETTE = np.array([
    [0.95, 0.15, 0.15],   # red
    [0.15, 0.85, 0.20],   # green
    [0.20, 0.35, 0.95],   # blue
    [0.95, 0.85, 0.10],   # yellow
    [0.10, 0.85, 0.90],   # cyan
    [0.90, 0.20, 0.90],   # magenta
])


class Shape(enum.Enum):
    CIRCLE = "circle"
    SQUARE = "square"
    DIAMOND = "diamond"


class Background(enum.Enum):
    FLAT = "flat"
    GRADIENT = "gradient"
    TEXTURE = "texture"


class EditKind(enum.Enum):
    RECOLOUR = "recolour"
    RESHAPE = "reshape"
    PATTERN = "pattern"
    STYLE = "style"


# The shape a RESHAPE edit turns each shape into.
RESHAPED = {Shape.CIRCLE: Shape.SQUARE, Shape.SQUARE: Shape.CIRCLE, Shape.DIAMOND: Shape.CIRCLE}


@dataclass(frozen=True)
class MovingShape:
    shape: Shape
    colour: tuple[float, float, float]
    radius: float                       # pixels; squares and diamonds are scaled to a similar area
    start: tuple[float, float]          # centre (x, y) at frame 0, pixels
    velocity: tuple[float, float]       # pixels per frame
    bounce: bool                        # reflect off the frame's edges, or move in a straight line
    striped: bool = False

    def centre(self, t: int) -> tuple[float, float]:
        """Centre at frame t: straight motion, or reflected inside [radius, SIZE - radius]."""
        return tuple(_reflect(p + v * t, self.radius, SIZE - self.radius) if self.bounce
                     else p + v * t for p, v in zip(self.start, self.velocity))


@dataclass(frozen=True)
class Scene:
    seed: int
    background: Background
    background_params: tuple            # colours, angle or frequencies, per background kind
    objects: tuple[MovingShape, ...]    # drawn in order; the last one is the edit's target
    styled: bool = False                # the STYLE edit: RGB channels rotated, whole frame

    @property
    def target(self) -> MovingShape:
        return self.objects[-1]

    @property
    def speed(self) -> float:
        """Mean speed of the objects in pixels per frame."""
        return float(np.mean([np.hypot(*o.velocity) for o in self.objects]))

    @property
    def motion_bucket_id(self) -> int:
        """SVD's motion conditioning from the scene's speed (pixels per frame x 40, so the
        world's speeds 1.5-4 map to about 60-160 around SVD's default 127)."""
        return int(np.clip(round(self.speed * 40), 1, 255))

    @property
    def target_colour(self) -> np.ndarray:
        """The target's colour as it appears in the frames (after the style, if any)."""
        colour = np.array(self.target.colour)
        return style(colour) if self.styled else colour


def _reflect(x: float, lo: float, hi: float) -> float:
    """Fold x into [lo, hi] as a ball bouncing between two walls."""
    span = hi - lo
    y = (x - lo) % (2 * span)
    return lo + (y if y <= span else 2 * span - y)


def _muted(rgb: np.ndarray, amount: float = 0.65) -> np.ndarray:
    return (1 - amount) * rgb + amount * 0.5


# ---------------------------------------------------------------------------------------------
# Drawing scenes
# ---------------------------------------------------------------------------------------------

def scene(seed: int, num_objects: int | None = None) -> Scene:
    """A random scene: background, 1-3 shapes of distinct colours, each moving straight or
    bouncing. Straight movers are placed so that they stay inside the frame for NUM_FRAMES."""
    rng = np.random.default_rng(seed)
    kind = [Background.FLAT, Background.GRADIENT, Background.TEXTURE][rng.integers(3)]
    base = _muted(rng.uniform(0.1, 0.9, 3))
    if kind is Background.FLAT:
        params = (tuple(base),)
    elif kind is Background.GRADIENT:
        params = (tuple(base), tuple(_muted(rng.uniform(0.1, 0.9, 3))), float(rng.uniform(0, 2 * np.pi)))
    else:   # two smooth sinusoids of low frequency, so the tiny VAE can reproduce them
        waves = tuple((float(rng.uniform(0.05, 0.16)), float(rng.uniform(0, 2 * np.pi)),
                       float(rng.uniform(0, 2 * np.pi))) for _ in range(2))
        params = (tuple(base), tuple(_muted(rng.uniform(-0.3, 0.3, 3), 0.5) - 0.25), waves)
    n = num_objects or int(rng.integers(1, 4))
    colours = rng.choice(len(PALETTE), size=n, replace=False)
    objects = []
    for i in range(n):
        radius = float(rng.uniform(6.5, 10.0))
        speed = float(rng.uniform(1.5, 4.0))
        angle = float(rng.uniform(0, 2 * np.pi))
        velocity = (speed * np.cos(angle), speed * np.sin(angle))
        bounce = bool(rng.random() < 0.5)
        travel = np.array(velocity) * (NUM_FRAMES - 1)
        lo = radius + np.maximum(0, -travel)            # start so the path stays in the frame
        hi = SIZE - radius - np.maximum(0, travel)
        if bounce or np.any(lo > hi):
            bounce = True
            lo, hi = np.full(2, radius), np.full(2, SIZE - radius)
        start = tuple(float(v) for v in rng.uniform(lo, hi))
        objects.append(MovingShape([Shape.CIRCLE, Shape.SQUARE, Shape.DIAMOND][rng.integers(3)],
                                   tuple(float(c) for c in PALETTE[colours[i]]), radius, start,
                                   tuple(float(v) for v in velocity), bounce))
    return Scene(seed, kind, params, tuple(objects))


def _background(s: Scene) -> np.ndarray:
    """(H, W, 3) in [0, 1]."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    if s.background is Background.FLAT:
        return np.broadcast_to(np.array(s.background_params[0]), (SIZE, SIZE, 3)).copy()
    if s.background is Background.GRADIENT:
        a, b, angle = s.background_params
        u = ((x - SIZE / 2) * np.cos(angle) + (y - SIZE / 2) * np.sin(angle)) / SIZE + 0.5
        u = np.clip(u, 0, 1)[..., None]
        return (1 - u) * np.array(a) + u * np.array(b)
    base, tint, waves = s.background_params
    field = sum(np.sin(f * (x * np.cos(d) + y * np.sin(d)) + p) for f, d, p in waves) / 2
    return np.clip(np.array(base) + 0.5 * field[..., None] * np.array(tint), 0, 1)


def _coverage(o: MovingShape, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage (H, W) in [0, 1] of shape o at frame t, and the signed x offset
    of each pixel from its centre (for stripes)."""
    cx, cy = o.centre(t)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    if o.shape is Shape.CIRCLE:
        sdf = np.hypot(dx, dy) - o.radius
    elif o.shape is Shape.SQUARE:
        sdf = np.maximum(np.abs(dx), np.abs(dy)) - 0.886 * o.radius   # same area as the circle
    else:
        sdf = (np.abs(dx) + np.abs(dy) - 1.25 * o.radius) / np.sqrt(2)
    return np.clip(0.5 - sdf, 0, 1), dx


def render(s: Scene, num_frames: int = NUM_FRAMES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene -> (frames (F, H, W, 3) float32 in [0, 1], target mask (F, H, W) bool: where the
    target covers at least half a pixel, objects mask (F, H, W) bool: where any object covers
    any of a pixel). F = num_frames (default one clip); the scene itself is placed for
    NUM_FRAMES, so a straight mover may leave the frame in a longer render (`stays_inside`)."""
    background = _background(s)
    frames, masks, objects = [], [], []
    for t in range(num_frames):
        frame = background.copy()
        covered = np.zeros((SIZE, SIZE), dtype=bool)
        for o in s.objects:
            alpha, dx = _coverage(o, t)
            covered |= alpha > 0
            colour = np.broadcast_to(np.array(o.colour), frame.shape)
            if o.striped:                    # dark stripes 4 px wide that move with the object
                dark = (np.floor(dx / 4.0) % 2 == 0)[..., None]
                colour = np.where(dark, 0.35 * colour, colour)
            frame = (1 - alpha[..., None]) * frame + alpha[..., None] * colour
        frames.append(style(frame) if s.styled else frame)
        masks.append(alpha >= 0.5)          # alpha of the last object drawn: the target
        objects.append(covered)
    return np.stack(frames).astype(np.float32), np.stack(masks), np.stack(objects)


def style(rgb: np.ndarray) -> np.ndarray:
    """The STYLE edit's colour transform: (r, g, b) -> (g, b, r), on the last axis."""
    return rgb[..., [1, 2, 0]]


# ---------------------------------------------------------------------------------------------
# Edits and their ground truth
# ---------------------------------------------------------------------------------------------

def edit(s: Scene, kind: EditKind) -> Scene:
    """The scene as it looks after an edit of kind `kind` (deterministic in the scene's seed)."""
    target = s.target
    if kind is EditKind.RECOLOUR:
        used = {tuple(o.colour) for o in s.objects}
        free = [tuple(float(c) for c in p) for p in PALETTE if tuple(p) not in used]
        colour = free[np.random.default_rng(s.seed + 1).integers(len(free))]
        target = replace(target, colour=colour)
    elif kind is EditKind.RESHAPE:
        target = replace(target, shape=RESHAPED[target.shape])
    elif kind is EditKind.PATTERN:
        target = replace(target, striped=True)
    else:
        return replace(s, styled=True)
    return replace(s, objects=s.objects[:-1] + (target,))


def stays_inside(s: Scene, num_frames: int) -> bool:
    """Whether every object stays wholly inside the frame for `num_frames` frames: bouncing ones
    always do; a straight mover's centre must stay in [radius, SIZE - radius] at every frame."""
    return all(o.bounce or all(o.radius <= c <= SIZE - o.radius
                               for t in range(num_frames) for c in o.centre(t))
               for o in s.objects)


def example(seed: int, kind: EditKind, num_frames: int = NUM_FRAMES) -> dict:
    """One evaluation case: the source video, the ground-truth edited video, the target's masks
    in both, the background (no object in either) and the target's colour after the edit
    (frames (F, H, W, 3) float32 in [0, 1], masks (F, H, W) bool). num_frames: how many frames
    of the same scene are rendered, source and ground truth alike (default one clip; for
    longer videos pick scenes that `stays_inside` that many frames)."""
    source_scene = scene(seed)
    edited_scene = edit(source_scene, kind)
    source, source_mask, source_objects = render(source_scene, num_frames)
    edited, edited_mask, edited_objects = render(edited_scene, num_frames)
    return {"seed": seed, "kind": kind, "scene": source_scene, "source": source,
            "edited": edited, "source_mask": source_mask, "edited_mask": edited_mask,
            "background": ~(source_objects | edited_objects),
            "target_colour": edited_scene.target_colour,
            "motion_bucket_id": source_scene.motion_bucket_id}


def evaluation_example_kind(seed: int) -> EditKind:
    """The edit kind of a seed's evaluation case: seed mod 4 in the order recolour, reshape,
    pattern, style, so any 4 consecutive seeds cover every kind."""
    return list(EditKind)[seed % len(EditKind)]


def evaluation_example(seed: int) -> dict:
    """The evaluation case of a seed: `example` with its `evaluation_example_kind`."""
    return example(seed, evaluation_example_kind(seed))


def colour_mask(frames: np.ndarray, colour: np.ndarray, tolerance: float = 0.25) -> np.ndarray:
    """(F, H, W, 3) in [0, 1] -> (F, H, W) bool: pixels within `tolerance` (RGB Euclidean) of
    `colour`. Muted backgrounds and the other palette colours are further than that."""
    return np.linalg.norm(frames - np.asarray(colour, dtype=frames.dtype), axis=-1) < tolerance


def random_training_video(seed: int) -> tuple[np.ndarray, int]:
    """Pretraining data: a scene, as is or after a random edit (so striped, reshaped, recoloured
    and styled objects are all in the training distribution) -> (frames, motion bucket id)."""
    s = scene(seed)
    choice = np.random.default_rng(seed + 7).integers(len(EditKind) + 1)
    if choice < len(EditKind):
        s = edit(s, list(EditKind)[choice])
    return render(s)[0], s.motion_bucket_id
