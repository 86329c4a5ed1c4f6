"""The toy world: a procedural generator of captioned images with known ground truth.

Every image is one or two flat coloured shapes on a light, slightly tinted background.
Each scene knows its objects' attributes and pixel masks, so a generated image can be
judged against its prompt by plain pixel analysis (:func:`analyse`), with no model.

A scene is drawn from ``numpy.random.default_rng([seed, index])``: the same seed and
index always give the same image and caption, on any machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

#: RGB of each colour word, 0-255. Far apart from each other and from the background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40),
    "green": (36, 158, 64),
    "blue": (40, 84, 216),
    "yellow": (238, 196, 24),
    "purple": (132, 52, 184),
}
#: Colours the bundled model never saw (notebook 10 teaches it one). Not in :data:`COLOURS`, so the world's
#: captions, vocabulary and scenes stay what the model was trained on; :func:`render` draws them, and
#: :func:`analyse` / :func:`judge` tell them apart when given :func:`palette` ``(with_new=True)``.
#: Orange sits between red and yellow: 95 from red and 80 from yellow in RGB (the palette's own closest
#: pair, blue and purple, is 103 apart), and over 200 from any background :func:`sample_scene` draws.
NEW_COLOURS: dict[str, tuple[int, int, int]] = {
    "orange": (246, 120, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Half the object's width, as a fraction of the image side (64 px: 7 and 13 px).
SIZES: dict[str, float] = {"small": 7 / 64, "big": 13 / 64}
#: Each position word's phrase and anchor (x, y), as fractions of the image side.
POSITIONS: dict[str, tuple[str, tuple[float, float]]] = {
    "left": ("on the left", (0.25, 0.5)),
    "right": ("on the right", (0.75, 0.5)),
    "top": ("at the top", (0.5, 0.25)),
    "bottom": ("at the bottom", (0.5, 0.75)),
    "middle": ("in the middle", (0.5, 0.5)),
}
#: Pairs of positions used by two-object scenes.
PAIRS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "position")

#: Every word a caption can contain, for the tokenizer.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", "an", "the", "and", "on", "at", "in", "of", "with", "image", "picture", "photo", "shape", "object"]
        + list(COLOURS)
        + list(SHAPES)
        + list(SIZES)
        + [w for phrase, _ in POSITIONS.values() for w in phrase.split()]
    )
)


@dataclass(frozen=True)
class Obj:
    """One object of a scene. ``center`` and ``radius`` are fractions of the image side."""

    colour: str
    shape: str
    size: str
    position: str
    center: tuple[float, float]
    radius: float


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image: its background colour and its objects."""

    background: tuple[int, int, int]
    objects: tuple[Obj, ...]
    gradient: tuple[float, float] = (0.0, 0.0)


@dataclass
class Sample:
    """One item of the toy world: image, caption and ground truth."""

    image: np.ndarray  # [H, W, 3] uint8
    caption: str
    scene: Scene
    masks: np.ndarray  # [n_objects, H, W] bool
    named: list[dict[str, str]] = field(default_factory=list)  # the attributes the caption names, per object


def _make_obj(rng: np.random.Generator, position: str, *, jitter: float, colour=None, shape=None, size=None) -> Obj:
    colour = colour or str(rng.choice(list(COLOURS)))
    shape = shape or str(rng.choice(SHAPES))
    size = size or str(rng.choice(list(SIZES)))
    radius = SIZES[size] * (1 + rng.uniform(-0.06, 0.06))
    ax, ay = POSITIONS[position][1]
    center = (ax + rng.uniform(-jitter, jitter), ay + rng.uniform(-jitter, jitter))
    return Obj(colour, shape, size, position, center, float(radius))


def sample_scene(rng: np.random.Generator, *, two_object_prob: float = 0.35) -> Scene:
    """Draw a random scene: one object (anywhere) or two (left/right or top/bottom)."""
    base = rng.uniform(218, 246)
    background = tuple(int(np.clip(base + rng.uniform(-8, 8), 0, 255)) for _ in range(3))
    gradient = (float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6)))
    if rng.random() < two_object_prob:
        pair = PAIRS[rng.integers(len(PAIRS))]
        colours = rng.choice(list(COLOURS), size=2, replace=False)
        objects = tuple(
            _make_obj(rng, pos, jitter=1 / 64, colour=str(c)) for pos, c in zip(pair, colours)
        )
    else:
        position = str(rng.choice(list(POSITIONS)))
        objects = (_make_obj(rng, position, jitter=4 / 64),)
    return Scene(background, objects, gradient)


def _shape_polygon(obj: Obj, scale: float) -> list[tuple[float, float]] | None:
    cx, cy, r = obj.center[0] * scale, obj.center[1] * scale, obj.radius * scale
    if obj.shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if obj.shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return None


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, scale: float, fill) -> None:
    poly = _shape_polygon(obj, scale)
    if poly is None:
        cx, cy, r = obj.center[0] * scale, obj.center[1] * scale, obj.radius * scale
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def palette(*, with_new: bool = False) -> dict[str, tuple[int, int, int]]:
    """The colours the judge chooses from: :data:`COLOURS`, plus :data:`NEW_COLOURS` when ``with_new``.

    Pass ``palette(with_new=True)`` as ``colours=`` to :func:`analyse` / :func:`judge` to judge images of
    a new colour: with the five colours alone an orange blob would be read as red or yellow.
    """
    return {**COLOURS, **NEW_COLOURS} if with_new else dict(COLOURS)


def _rgb(colour: str) -> tuple[int, int, int]:
    known = palette(with_new=True)
    if colour not in known:
        raise ValueError(f"unknown colour {colour!r}; the world draws {', '.join(map(repr, known))} "
                         "(add a new one to NEW_COLOURS).")
    return known[colour]


def render(scene: Scene, *, resolution: int = 64, supersample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene. Returns ``image`` [H, W, 3] uint8 and ``masks`` [n_objects, H, W] bool.

    Shapes are drawn ``supersample`` times larger and shrunk, for smooth edges; a mask
    pixel is set where the object covers at least half of it.
    """
    big = resolution * supersample
    yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution - 0.5
    bg = np.array(scene.background, dtype=np.float32)[None, None, :]
    shade = scene.gradient[0] * xx + scene.gradient[1] * yy
    image = np.clip(bg + shade[..., None], 0, 255)
    masks = []
    for obj in scene.objects:
        cover = Image.new("L", (big, big), 0)
        _draw(ImageDraw.Draw(cover), obj, big, 255)
        alpha = np.asarray(cover.resize((resolution, resolution), Image.Resampling.BOX), dtype=np.float32) / 255
        colour = np.array(_rgb(obj.colour), dtype=np.float32)
        image = image * (1 - alpha[..., None]) + colour * alpha[..., None]
        masks.append(alpha >= 0.5)
    return np.round(image).astype(np.uint8), np.stack(masks)


def _object_phrase(obj: Obj, named: dict[str, str]) -> str:
    words = ["a"]
    if "size" in named:
        words.append(obj.size)
    if "colour" in named:
        words.append(obj.colour)
    words.append(obj.shape)
    if "position" in named:
        words.append(POSITIONS[obj.position][0])
    return " ".join(words)


def caption(scene: Scene, rng: np.random.Generator | None = None, *, full: bool = False,
            drop_prob: float = 0.5, full_prob: float = 0.4) -> tuple[str, list[dict[str, str]]]:
    """A caption for ``scene`` and, per object, the attributes it names.

    With ``full=True`` (or with probability ``full_prob``) every attribute is named;
    otherwise size, colour and position are each left out with probability
    ``drop_prob`` ("a red circle", "a square at the top"). The shape is always named.
    Two-object captions always name colour, shape and position, and name the sizes of
    both objects or neither; the objects come in either order.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    objs = list(scene.objects)
    if len(objs) == 1:
        obj = objs[0]
        full = full or rng.random() < full_prob
        keep = {a: True for a in ATTRIBUTES} if full else {
            "colour": rng.random() >= drop_prob, "shape": True,
            "size": rng.random() >= drop_prob, "position": rng.random() >= drop_prob,
        }
        named = {a: getattr(obj, a) for a in ATTRIBUTES if keep[a]}
        return _object_phrase(obj, named), [named]
    with_size = full or rng.random() < 0.5
    if not full and rng.random() < 0.5:
        objs = objs[::-1]
    named_list = [{a: getattr(o, a) for a in ATTRIBUTES if a != "size" or with_size} for o in objs]
    text = " and ".join(_object_phrase(o, n) for o, n in zip(objs, named_list))
    return text, named_list


def possible_captions(scene: Scene) -> list[str]:
    """Every caption :func:`caption` can give ``scene``, sorted.

    One object: the shape with any subset of size, colour and position (8 captions). Two objects:
    either order, with both sizes or neither (4 captions).
    """
    objs = list(scene.objects)
    captions: set[str] = set()
    if len(objs) == 1:
        obj = objs[0]
        for mask in range(8):  # which of colour, size, position the caption names (the shape always)
            named = {"shape": obj.shape}
            if mask & 1:
                named["colour"] = obj.colour
            if mask & 2:
                named["size"] = obj.size
            if mask & 4:
                named["position"] = obj.position
            captions.add(_object_phrase(obj, named))
    else:
        for order in (objs, objs[::-1]):
            for with_size in (True, False):
                captions.add(" and ".join(_object_phrase(o, {a: getattr(o, a) for a in ATTRIBUTES
                                                             if a != "size" or with_size}) for o in order))
    return sorted(captions)


def all_captions() -> list[str]:
    """Every caption :func:`caption` can give any scene of the world, sorted.

    The scenes :func:`sample_scene` can draw: one object of any colour, shape, size and position, or
    two objects of different colours at one of the :data:`PAIRS` of positions.
    """
    captions: set[str] = set()
    background = (255, 255, 255)
    for c in COLOURS:
        for s in SHAPES:
            for z in SIZES:
                for p in POSITIONS:
                    scene = Scene(background, (Obj(c, s, z, p, (0.5, 0.5), 0.1),))
                    captions.update(possible_captions(scene))
    for p1, p2 in PAIRS:
        for c1 in COLOURS:
            for c2 in COLOURS:
                if c1 == c2:
                    continue
                for s1 in SHAPES:
                    for s2 in SHAPES:
                        for z1 in SIZES:
                            for z2 in SIZES:
                                objects = (Obj(c1, s1, z1, p1, (0.5, 0.5), 0.1), Obj(c2, s2, z2, p2, (0.5, 0.5), 0.1))
                                captions.update(possible_captions(Scene(background, objects)))
    return sorted(captions)


def sample(seed: int, index: int, *, resolution: int = 64, two_object_prob: float = 0.35,
           full_caption: bool = False) -> Sample:
    """Item ``index`` of the world with seed ``seed``: deterministic for (seed, index)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, two_object_prob=two_object_prob)
    image, masks = render(scene, resolution=resolution)
    text, named = caption(scene, rng, full=full_caption)
    return Sample(image, text, scene, masks, named)


def batch(seed: int, start: int, count: int, **kwargs) -> list[Sample]:
    """Items ``start`` .. ``start + count - 1`` of the world with seed ``seed``."""
    return [sample(seed, i, **kwargs) for i in range(start, start + count)]


# --------------------------------------------------------------------------------------
# A new concept: scenes of a colour the model never saw, captioned with a word for it.
# --------------------------------------------------------------------------------------


def _check_new_colour(colour: str) -> None:
    if colour not in NEW_COLOURS:
        raise ValueError(f"colour must be one of NEW_COLOURS ({', '.join(map(repr, NEW_COLOURS))}), got {colour!r}; "
                         "the five trained colours are drawn by sample_scene.")


def sample_concept_scene(rng: np.random.Generator, *, colour: str = "orange") -> Scene:
    """One object of the new ``colour`` (any shape, size and position), on a background drawn as
    :func:`sample_scene` draws it, with the same jitter as its one-object scenes."""
    _check_new_colour(colour)
    base = rng.uniform(218, 246)
    background = tuple(int(np.clip(base + rng.uniform(-8, 8), 0, 255)) for _ in range(3))
    gradient = (float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6)))
    position = str(rng.choice(list(POSITIONS)))
    return Scene(background, (_make_obj(rng, position, jitter=4 / 64, colour=colour),), gradient)


def concept_caption(scene: Scene, rng: np.random.Generator | None = None, *, word: str, full: bool = False,
                    drop_prob: float = 0.5, full_prob: float = 0.4) -> tuple[str, list[dict[str, str]]]:
    """A caption of a one-object concept scene that names its colour with ``word``, and what it names.

    "a big <orange> circle on the left": the colour is always named (the caption exists to teach
    ``word``); size and position are each left out with probability ``drop_prob`` unless the
    caption is full (``full=True``, or with probability ``full_prob``), as in :func:`caption`.
    ``named`` keeps the colour's own name ("orange"), which is what :func:`judge` reads from pixels.
    """
    if len(scene.objects) != 1:
        raise ValueError(f"concept scenes have one object, this one has {len(scene.objects)}; "
                         "draw them with sample_concept_scene.")
    if not isinstance(word, str) or not word.strip() or any(ch.isspace() for ch in word.strip()):
        raise ValueError(f"word must be one word for the colour (e.g. '<orange>' or 'orange'), got {word!r}.")
    rng = rng if rng is not None else np.random.default_rng(0)
    obj = scene.objects[0]
    full = full or rng.random() < full_prob
    named = {"colour": obj.colour, "shape": obj.shape}
    if full or rng.random() >= drop_prob:
        named["size"] = obj.size
    if full or rng.random() >= drop_prob:
        named["position"] = obj.position
    return _concept_phrase(obj, named, word), [{a: named[a] for a in ATTRIBUTES if a in named}]


def _concept_phrase(obj: Obj, named: dict[str, str], word: str) -> str:
    """:func:`_object_phrase` with ``word`` in place of the colour's name."""
    words = _object_phrase(obj, named).split()
    words[words.index(obj.colour)] = word.strip()
    return " ".join(words)


def possible_concept_captions(scene: Scene, *, word: str) -> list[str]:
    """Every caption :func:`concept_caption` can give ``scene``, sorted (4: size and position named or not)."""
    obj = scene.objects[0]
    captions = set()
    for with_size in (False, True):
        for with_position in (False, True):
            named = {"colour": obj.colour, "shape": obj.shape}
            if with_size:
                named["size"] = obj.size
            if with_position:
                named["position"] = obj.position
            captions.add(_concept_phrase(obj, named, word))
    return sorted(captions)


def concept_sample(seed: int, index: int, *, word: str, colour: str = "orange", resolution: int = 64,
                   full_caption: bool = False) -> Sample:
    """Item ``index`` of the new colour's scenes with seed ``seed``: deterministic for (seed, index),
    captioned with ``word`` (:func:`concept_caption`)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    rng = np.random.default_rng([seed, index, 1])   # a stream of its own: not the world's scene (seed, index)
    scene = sample_concept_scene(rng, colour=colour)
    image, masks = render(scene, resolution=resolution)
    text, named = concept_caption(scene, rng, word=word, full=full_caption)
    return Sample(image, text, scene, masks, named)


# --------------------------------------------------------------------------------------
# The judge: read attributes back from pixels, with no model.
# --------------------------------------------------------------------------------------

@dataclass
class Detection:
    """An object found in an image by :func:`analyse`."""

    colour: str
    shape: str
    size: str
    position: str
    area: int
    fill: float
    extent: float
    centroid: tuple[float, float]  # (x, y), fractions of the image side
    mask: np.ndarray  # [H, W] bool


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as a list of boolean masks."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    found: list[np.ndarray] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        label = len(found) + 1
        stack = [(y0, x0)]
        labels[y0, x0] = label
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    stack.append((ny, nx))
        found.append(labels == label)
    return found


def _estimate_background(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                             image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])
    return np.median(border.astype(np.float32), axis=0)


def classify_shape(fill: float) -> str:
    """Shape from the fraction of its bounding box an object fills.

    A square fills 1, a circle pi/4 = 0.785, this world's triangle 1/2.
    """
    if fill >= 0.885:
        return "square"
    if fill >= 0.64:
        return "circle"
    return "triangle"


def _check_colours(colours) -> tuple[list[str], np.ndarray]:
    if colours is None:
        colours = COLOURS
    if not isinstance(colours, Mapping) or not colours or not all(
            isinstance(k, str) and len(v) == 3 for k, v in colours.items()):
        raise TypeError(f"colours must be a non-empty mapping from colour names to (R, G, B) in 0-255, got "
                        f"{colours!r:.80}. Pass e.g. world.palette(with_new=True).")
    return list(colours), np.array([colours[c] for c in colours], dtype=np.float32)


def analyse(image: np.ndarray, *, min_area: int | None = None, threshold: float = 70.0,
            colours: Mapping[str, tuple[int, int, int]] | None = None) -> list[Detection]:
    """Find the objects in an image of the toy world, largest first.

    image: [H, W, 3] uint8. A pixel is foreground when its RGB distance from the
    background (the median of a 2-pixel border) exceeds ``threshold``. Each
    4-connected foreground region of at least ``min_area`` pixels (default: 0.5% of the
    image) is one object; its colour is the palette colour nearest to its median RGB (the palette is
    ``colours``, default :data:`COLOURS`; :func:`palette` ``(with_new=True)`` adds orange),
    its shape comes from how much of its bounding box it fills, its size from its
    bounding box, its position from the nearest anchor to its centroid.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"analyse expects an [H, W, 3] uint8 image, got {image.shape} {image.dtype}; "
                         "convert a [-1, 1] tensor with sdlearn.images.to_numpy first")
    h, w, _ = image.shape
    min_area = min_area if min_area is not None else max(4, int(0.005 * h * w))
    pixels = image.astype(np.float32)
    distance = np.linalg.norm(pixels - _estimate_background(image), axis=-1)
    palette_names, palette_rgb = _check_colours(colours)
    size_cut = (SIZES["small"] + SIZES["big"]) * h  # between the two bounding-box widths
    anchors = {p: np.array(xy) for p, (_, xy) in POSITIONS.items()}
    found = []
    for comp in _components(distance > threshold):
        area = int(comp.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(comp)
        bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        fill = area / float(bw * bh)
        median = np.median(pixels[comp], axis=0)
        colour = palette_names[int(np.argmin(np.linalg.norm(palette_rgb - median, axis=1)))]
        centroid = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
        if classify_shape(fill) == "triangle":  # a triangle's centroid sits 1/3 from its base
            centre_y = (ys.min() + ys.max() + 1) / 2 / h
        else:
            centre_y = centroid[1]
        centre = np.array(((xs.min() + xs.max() + 1) / 2 / w, centre_y))
        position = min(anchors, key=lambda p: float(np.linalg.norm(anchors[p] - centre)))
        extent = float(max(bw, bh))
        found.append(Detection(colour, classify_shape(fill), "big" if extent > size_cut else "small",
                               position, area, fill, extent, centroid, comp))
    return sorted(found, key=lambda d: -d.area)


def match(detections: list[Detection], named: list[dict[str, str]]) -> list[Detection | None]:
    """For each object a prompt describes, the detection it is compared with (None if none is left).

    detections: from :func:`analyse`, largest first; named: per object, the attributes the
    prompt names. One object: the largest detection. Two objects: each takes the detection at
    its named position among the ``len(named) + 1`` largest, or failing that the next largest
    unused one.
    """
    if len(named) == 1:
        return [detections[0] if detections else None]
    used: set[int] = set()
    matched: list[Detection | None] = []
    for want in named:
        pick = next((i for i, d in enumerate(detections[:len(named) + 1])
                     if i not in used and d.position == want.get("position")), None)
        if pick is None:
            pick = next((i for i in range(len(detections)) if i not in used), None)
        if pick is not None:
            used.add(pick)
        matched.append(detections[pick] if pick is not None else None)
    return matched


def judge(image: np.ndarray, named: list[dict[str, str]], *,
          colours: Mapping[str, tuple[int, int, int]] | None = None) -> list[dict[str, bool]]:
    """For each object a prompt describes, which of its named attributes the image gets right.

    named: per object, the attributes the prompt names (as returned by :func:`caption`).
    Each object is compared with the detection :func:`match` picks for it; colours are read with
    the palette ``colours`` (default :data:`COLOURS`; see :func:`analyse`).
    Returns, per object, ``{attribute: right}``; an object with no detection gets all False.
    """
    return [{a: d is not None and getattr(d, a) == v for a, v in want.items()}
            for want, d in zip(named, match(analyse(image, colours=colours), named))]
