"""The demo world: procedural images with planted, nameable factors (pure math, no I/O).

Every image shows one object on a plain background. Its factors (the ground truth) are drawn
independently and uniformly; image `i` of world `seed` depends only on `(seed, i)`, so any range
of images can be generated on its own and `generate(0, 10)` equals `generate(0, 5)` followed by
`generate(5, 10)`.

Captions name a random subset of the factors in varied templates; `parse_caption` reads them
back, and `description_bank` builds the world's tagged description bank from the same grammar
(the bank must use the captions' own wording, see `docs/demo-model.md`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE: int = 64

# factor name -> ordered value names; codes index into these tuples (order of FACTORS).
FACTORS: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "cross"),
    "colour": ("red", "green", "blue", "yellow", "purple", "orange"),
    # a 2x2 grid of quadrants: large cells (half the image) leave room for large objects
    "position": ("top left", "top right", "bottom left", "bottom right"),
    "texture": ("plain", "striped", "dotted", "checkered"),
    "size": ("small", "large"),
    # background words never name an object colour, so the text encoder keeps them apart
    "background": ("black", "grey", "navy", "maroon"),
}
FACTOR_NAMES: tuple[str, ...] = tuple(FACTORS)

_COLOUR_RGB = {
    "red": (225, 35, 35),
    "green": (40, 190, 50),
    "blue": (50, 100, 250),
    "yellow": (240, 225, 40),
    "purple": (150, 50, 200),
    "orange": (245, 140, 20),
}
_BACKGROUND_RGB = {
    "black": (20, 20, 20),
    "grey": (110, 110, 110),
    "navy": (25, 30, 95),
    "maroon": (100, 25, 40),
}
# caption wording for each position value (the bank and the parser use the same phrases)
_POSITION_PHRASE = {
    "top left": "in the top left",
    "top right": "in the top right",
    "bottom left": "in the bottom left",
    "bottom right": "in the bottom right",
}
# probability that a caption names each factor (the harder properties more often)
_NAME_PROB = {
    "shape": 0.75,
    "colour": 0.45,
    "position": 0.7,
    "texture": 0.65,
    "size": 0.5,
    "background": 0.3,
}
_TEMPLATES = (
    "a photo of {np}.",
    "{np}",
    "there is {np}.",
    "an image of {np}.",
    "a picture of {np}.",
    "a drawing of {np}.",
)
_NOISE_STD = 6.0
_GRID = 2  # positions form a _GRID x _GRID grid of cells, row-major
_HALF_EXTENT = {
    "small": 0.28,
    "large": 0.44,
}  # object half-extent, in cells  # pixel noise, so no two images are identical


@dataclass
class WorldBatch:
    """Images `[start, stop)` of one world.

    images: uint8 [image, H, W, 3]; codes: int16 [image, factor] (order of FACTORS);
    captions: one caption per image; masks: bool [image, H, W], the object's pixels (only when
    asked for: `generate(..., masks=True)`).
    """

    images: np.ndarray
    codes: np.ndarray
    captions: list[str]
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.captions)


def _codes_array(codes: Mapping[str, int] | Sequence[int] | np.ndarray) -> np.ndarray:
    """Factor codes as int [factor] in FACTORS order, checked against the value counts."""
    if isinstance(codes, Mapping):
        missing = [f for f in FACTORS if f not in codes]
        if missing:
            raise ValueError(f"codes lack factor(s) {', '.join(missing)}")
        arr = np.array([int(codes[f]) for f in FACTORS], dtype=np.int64)
    else:
        arr = np.asarray(codes, dtype=np.int64).reshape(-1)
        if arr.shape[0] != len(FACTORS):
            raise ValueError(f"expected {len(FACTORS)} factor codes, got {arr.shape[0]}")
    for k, (f, values) in enumerate(FACTORS.items()):
        if not 0 <= arr[k] < len(values):
            raise ValueError(f"code {arr[k]} out of range for factor {f!r} ({len(values)} values)")
    return arr


@dataclass(frozen=True)
class Bias:
    """A planted shortcut: factor `spurious` follows factor `core` in a fraction `strength` of
    the images (value k of `core` goes with value k mod n of `spurious`, the *majority* pairing);
    in the others `spurious` takes one of its other values, uniformly. `strength` 1/n is the
    balanced world's own rate."""

    core: str
    spurious: str
    strength: float

    def __post_init__(self) -> None:
        if self.core not in FACTORS or self.spurious not in FACTORS or self.core == self.spurious:
            raise ValueError(f"bias needs two different factors of {', '.join(FACTORS)}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"bias strength {self.strength} is not in [0, 1]")

    def majority(self, core_code: int) -> int:
        """The spurious value paired with core value `core_code`."""
        return int(core_code) % len(FACTORS[self.spurious])


# The biased demo world (declared once): shape and background go together 90 % of the time, as
# in Waterbirds (bird type and place). Training data of the `demo-biased` model; evaluation uses
# the balanced world.
BIAS = Bias(core="shape", spurious="background", strength=0.9)


def sample_codes(index: int, seed: int = 0, bias: Bias | None = None) -> np.ndarray:
    """Factor codes of image `index` of world `seed`: int [factor], uniform and independent, or
    with `bias` the spurious factor re-drawn from its own stream `[seed, index, 3]`, so the
    biased world is also a pure function of `(seed, index)` and shares every other factor (and
    the pixel and caption streams) with the balanced one."""
    rng = np.random.default_rng([seed, index])
    codes = np.array([rng.integers(len(v)) for v in FACTORS.values()], dtype=np.int64)
    if bias is not None:
        brng = np.random.default_rng([seed, index, 3])
        k_core, k_sp = FACTOR_NAMES.index(bias.core), FACTOR_NAMES.index(bias.spurious)
        major = bias.majority(codes[k_core])
        if brng.random() < bias.strength:
            codes[k_sp] = major
        else:  # one of the other values, uniformly
            others = [v for v in range(len(FACTORS[bias.spurious])) if v != major]
            codes[k_sp] = others[int(brng.integers(len(others)))]
    return codes


# pixel-centre coordinates, shared by every render: [H, W] each
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean [H, W] mask of a shape of half-extent `r` centred where dx = dy = 0."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        s = r * 0.86  # about the circle's area
        return (np.abs(dx) <= s) & (np.abs(dy) <= s)
    if shape == "triangle":  # upward, apex at the top, base at the bottom
        t = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r * 1.05)
    if shape == "cross":  # a plus sign
        arm = r * 0.36
        return ((np.abs(dx) <= r) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= r) & (np.abs(dx) <= arm))
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(texture: str, dx: np.ndarray, dy: np.ndarray, phase: int) -> np.ndarray:
    """Boolean [H, W]: where the texture darkens the object colour."""
    x = np.floor(dx).astype(np.int64) + phase
    y = np.floor(dy).astype(np.int64) + phase
    if texture == "plain":
        return np.zeros(dx.shape, dtype=bool)
    if texture == "striped":  # horizontal stripes, period 4 px
        return (y % 4) < 2
    if texture == "dotted":  # 2x2 dots on a 4 px lattice
        return ((x % 4) < 2) & ((y % 4) < 2)
    if texture == "checkered":  # 3 px checks
        return ((x // 3 + y // 3) % 2) == 0
    raise ValueError(f"unknown texture {texture!r}")


def render_image(codes: Mapping[str, int] | Sequence[int], seed, return_mask: bool = False):
    """Render one image with the given factor codes; `seed` (int or sequence of ints) drives
    the jitter and noise. Returns uint8 [H, W, 3] with H = W = IMAGE_SIZE, and with
    `return_mask` also the object's ground-truth mask, bool [H, W] (the same image either way)."""
    c = _codes_array(codes)
    v = {f: FACTORS[f][c[k]] for k, f in enumerate(FACTORS)}
    rng = np.random.default_rng(seed)
    cell = IMAGE_SIZE / _GRID
    p = c[FACTOR_NAMES.index("position")]
    row, col = divmod(int(p), _GRID)
    r = cell * _HALF_EXTENT[v["size"]]  # half-extent of the object
    jitter = max(cell / 2 - r - 1, 0.0)
    cx = (col + 0.5) * cell + rng.uniform(-jitter, jitter)
    cy = (row + 0.5) * cell + rng.uniform(-jitter, jitter)
    dx, dy = _XX - cx, _YY - cy  # [H, W] each
    mask = _shape_mask(v["shape"], dx, dy, r)
    dark = _texture_mask(v["texture"], dx, dy, int(rng.integers(4)))
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    img[:] = _BACKGROUND_RGB[v["background"]]
    rgb = np.asarray(_COLOUR_RGB[v["colour"]], dtype=np.float32)
    img[mask] = rgb
    img[mask & dark] = rgb * 0.45
    img += rng.normal(0.0, _NOISE_STD, size=img.shape).astype(np.float32)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return (out, mask) if return_mask else out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(named: Mapping[str, str]) -> str:
    """The caption grammar's noun phrase for the named factor values (factor -> value name),
    e.g. {"size": "small", "colour": "red", "shape": "circle", "position": "top left"} ->
    "a small red circle in the top left"."""
    words = [named[f] for f in ("size", "colour", "texture") if f in named]
    words.append(named.get("shape", "object"))
    text = " ".join(words)
    text = f"{_article(text)} {text}"
    if "position" in named:
        text += " " + _POSITION_PHRASE[named["position"]]
    if "background" in named:
        text += f" on a {named['background']} background"
    return text


def caption(codes: Mapping[str, int] | Sequence[int], rng: np.random.Generator) -> str:
    """A caption naming a random subset (at least two) of the image's factors, in a random
    template. `rng` is a numpy Generator."""
    c = _codes_array(codes)
    named: dict[str, str] = {}
    while len(named) < 2:
        named = {f: FACTORS[f][c[k]] for k, f in enumerate(FACTORS) if rng.random() < _NAME_PROB[f]}
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return template.format(np=noun_phrase(named))


def _caption_regex() -> re.Pattern[str]:
    def alt(words) -> str:
        return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))

    phrases = alt(_POSITION_PHRASE.values())
    return re.compile(
        r"^(?:a photo of |there is |an image of |a picture of |a drawing of )?an? "
        rf"(?:(?P<size>{alt(FACTORS['size'])}) )?"
        rf"(?:(?P<colour>{alt(FACTORS['colour'])}) )?"
        rf"(?:(?P<texture>{alt(FACTORS['texture'])}) )?"
        rf"(?:(?P<shape>{alt(FACTORS['shape'])})|object)"
        rf"(?: (?P<position>{phrases}))?"
        rf"(?: on a (?P<background>{alt(FACTORS['background'])}) background)?\.?$"
    )


_CAPTION_RE = _caption_regex()
_PHRASE_TO_POSITION = {v: k for k, v in _POSITION_PHRASE.items()}


def parse_caption(text: str) -> dict[str, int]:
    """Read a caption back: factor -> code for each factor it names. Raises ValueError if the
    text is not in the caption grammar."""
    m = _CAPTION_RE.match(text)
    if m is None:
        raise ValueError(f"not a world caption: {text!r}")
    out: dict[str, int] = {}
    for f, values in FACTORS.items():
        word = m.group(f)
        if word is None:
            continue
        if f == "position":
            word = _PHRASE_TO_POSITION[word]
        out[f] = values.index(word)
    return out


def generate(
    start: int, stop: int, seed: int = 0, masks: bool = False, bias: Bias | None = None
) -> WorldBatch:
    """Images `[start, stop)` of world `seed`: images uint8 [image, H, W, 3], codes int16
    [image, factor], captions list[str], and with `masks` the object masks bool [image, H, W].
    Image i depends only on (seed, i) (and `bias`, a planted shortcut, see `Bias`)."""
    if start < 0 or stop < start:
        raise ValueError(f"bad image range [{start}, {stop})")
    n = stop - start
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    codes = np.empty((n, len(FACTORS)), dtype=np.int16)
    mask_out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool) if masks else None
    captions: list[str] = []
    for j, i in enumerate(range(start, stop)):
        c = sample_codes(i, seed, bias)
        codes[j] = c
        if mask_out is not None:
            images[j], mask_out[j] = render_image(c, [seed, i, 1], return_mask=True)
        else:
            images[j] = render_image(c, [seed, i, 1])
        captions.append(caption(c, np.random.default_rng([seed, i, 2])))
    return WorldBatch(images=images, codes=codes, captions=captions, masks=mask_out)


# zero-shot prompt ensemble (value_texts); the bank uses every caption template
_PROMPT_TEMPLATES = ("{np}", "a photo of {np}.", "there is {np}.", "an image of {np}.")
_BANK_TEMPLATES = _PROMPT_TEMPLATES + ("a picture of {np}.", "a drawing of {np}.")
_DISTRACTORS = (
    "a photo of a dog",
    "a photo of a cat",
    "a bowl of soup",
    "a city street at night",
    "a mountain lake",
    "a person riding a bicycle",
    "a plate of pasta",
    "a sailing boat",
    "a field of flowers",
    "a snowy forest",
    "a cup of coffee",
    "an old wooden door",
    "a car on a road",
    "a group of people laughing",
    "a bird on a branch",
    "a page of handwritten text",
    "a busy market",
    "a modern kitchen",
    "a tall lighthouse",
    "a close-up of an eye",
    "a pile of books",
    "a beach at sunset",
    "a football match",
    "a sleeping baby",
    "a tractor in a field",
    "a guitar on a stage",
    "a map of the world",
    "a bridge over a river",
    "an empty classroom",
    "a slice of cake",
    "a horse in a meadow",
    "a rainy window",
    "a crowded train",
    "a sky with clouds",
    "a pair of shoes",
    "a glass of water",
    "a portrait of an old man",
    "a tree in autumn",
    "a computer keyboard",
    "a desert landscape",
)


def description_bank() -> list[tuple[str, str]]:
    """The world's description bank: (text, factor name or "distractor"), generated from the
    caption grammar so that it uses the captions' own wording. Each factor text names exactly
    one factor."""
    bank: list[tuple[str, str]] = []
    for f, values in FACTORS.items():
        for value in values:
            for t in _BANK_TEMPLATES:
                bank.append((t.format(np=noun_phrase({f: value})), f))
            if f == "shape":
                bank.append((f"a {value} shape", f))
            elif f == "background":
                bank.append((f"a {value} background", f))
                bank.append((f"on a {value} background", f))
            elif f == "position":
                bank.append((f"something {_POSITION_PHRASE[value]}", f))
                bank.append((f"a shape {_POSITION_PHRASE[value]}", f))
            else:
                bank.append((f"{_article(value)} {value} shape", f))
                bank.append((f"something {value}", f))
    bank.extend((t, "distractor") for t in _DISTRACTORS)
    return bank


def value_texts(factor: str) -> list[list[str]]:
    """Per value of `factor` (in FACTORS order), the bank texts describing that value; used for
    zero-shot classification as a prompt ensemble."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}")
    out: list[list[str]] = []
    for value in FACTORS[factor]:
        out.append([t.format(np=noun_phrase({factor: value})) for t in _PROMPT_TEMPLATES])
    return out
