"""How far explanation maps can be trusted, measured two ways (the bench prints them; the tests hold them):

- **Faithfulness**, the deletion and insertion curves of Petsiuk et al. (RISE, BMVC 2018): the map's cells
  are removed (blurred, as the map itself removes them) hottest-first, or inserted hottest-first into a
  blurred copy, and the class's score followed; the area under each curve is compared with the same curves
  for random orders. A map that explains the model drops the score faster than random when deleting, and
  raises it faster when inserting. (Painting the cells black instead is the paper's other removal; it is
  measured in docs/explanations.md.)
- **Localisation on busy backgrounds**: a photo of the object, cut to a soft oval, pasted at seeded places
  on another photo blurred past recognition; is the hottest cell on the object, and is the map hotter on
  it than off it?

Both take two callables, the map and the class's score, so that one measure compares every method: the
bench runs them in process on one model, and the tests run the served method through the service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from space.serving.explain import DEFAULT, Method, cell_boxes, cell_edges, explain, fill_image

Explain = Callable[[Image.Image, str], np.ndarray]  # (image, label) -> the map's grid
Score = Callable[[Sequence[Image.Image], str], np.ndarray]  # (images, label) -> that class's scores

CANVAS = 448
MARGIN = CANVAS // 16  # ImageNet processors crop a 224/256 centre: the object stays inside what they keep
STEPS = 16  # points on each curve after the first: the cells go in 16 groups
RANDOM_ORDERS = 8  # fewer, and one unlucky random order decides a photo


@dataclass
class Placement:
    """An object photo pasted on a blurred background: ``mask`` is True where the object is."""

    name: str
    label: str
    image: Image.Image
    mask: np.ndarray


@dataclass
class Curves:
    """Areas under one photo's deletion and insertion curves, for the map and for random orders."""

    name: str
    deletion: float
    insertion: float
    random_deletion: float
    random_insertion: float


def oval(size: tuple[int, int]) -> Image.Image:
    """A soft-edged oval alpha mask: the photo's own corners (often background) are cut away."""
    alpha = Image.new("L", size, 0)
    ImageDraw.Draw(alpha).ellipse((0, 0, size[0] - 1, size[1] - 1), fill=255)
    return alpha.filter(ImageFilter.GaussianBlur(min(size) / 20))


def busy_backgrounds(
    objects: Sequence[tuple[str, Image.Image, str]], seed: int, per_object: int = 2, edge: int = 200
) -> list[Placement]:
    """Each (name, photo, label) cut to an oval at most ``edge`` pixels, pasted at seeded places on the
    other photos blurred past recognition (a radius of CANVAS / 37)."""
    rng = np.random.default_rng(seed)
    placements = []
    for i, (name, photo, label) in enumerate(objects):
        small = photo.convert("RGB")
        small.thumbnail((edge, edge))
        alpha = oval(small.size)
        for k in range(per_object):
            other = objects[(i + 1 + 3 * k) % len(objects)][1].convert("RGB")
            canvas = other.resize((CANVAS, CANVAS)).filter(ImageFilter.GaussianBlur(CANVAS / 37))
            x = int(rng.integers(MARGIN, CANVAS - MARGIN - small.width + 1))
            y = int(rng.integers(MARGIN, CANVAS - MARGIN - small.height + 1))
            canvas.paste(small, (x, y), alpha)
            mask = Image.new("L", (CANVAS, CANVAS), 0)
            mask.paste(alpha, (x, y))
            placements.append(Placement(name, label, canvas, np.asarray(mask) > 127))
    return placements


def cell_shares(mask: np.ndarray, cells: int) -> np.ndarray:
    """The share of each grid cell covered by ``mask``."""
    ys, xs = cell_edges(mask.shape[0], cells), cell_edges(mask.shape[1], cells)
    return np.array(
        [[mask[ys[r] : ys[r + 1], xs[c] : xs[c + 1]].mean() for c in range(cells)] for r in range(cells)]
    )


def localised(grid: np.ndarray, mask: np.ndarray) -> tuple[bool, bool]:
    """(the hottest cell covers at least a quarter of a cell of the object, the mean over the cells mostly
    on the object is above the mean over the cells off it)."""
    shares = cell_shares(mask, grid.shape[0])
    hottest = np.unravel_index(int(np.argmax(grid)), grid.shape)
    inside, outside = grid[shares >= 0.5], grid[shares == 0]
    contrast = bool(len(inside) and len(outside) and inside.mean() > outside.mean())
    return bool(shares[hottest] >= 0.25), contrast


def frames(
    image: Image.Image, order: Sequence[int], cells: int, mode: str, black: bool = False
) -> list[Image.Image]:
    """The images along a curve: deletion blurs the cells in ``order`` (or paints them black: ``black``);
    insertion copies them in ``order`` onto the image blurred."""
    boxes = cell_boxes(*image.size, cells, cells)  # row by row, as the grid's cells are numbered
    blurred = fill_image(image, "blur", None)  # removed as the map removes them
    if mode == "deletion":
        current, source = image.copy(), Image.new("RGB", image.size) if black else blurred
    else:
        current, source = blurred, image
    counts = np.linspace(0, len(order), STEPS + 1).round().astype(int)
    out = [current.copy()]
    for step in range(STEPS):
        for cell in order[counts[step] : counts[step + 1]]:
            box = boxes[cell]
            current.paste(source.crop(box), box[:2])
        out.append(current.copy())
    return out


def area(values: np.ndarray) -> float:
    """The area under a curve of evenly spaced points, x from 0 to 1 (the trapezoid rule)."""
    return float(((values[:-1] + values[1:]) / 2).mean())


def curves(
    name: str,
    image: Image.Image,
    label: str,
    grid: np.ndarray,
    score: Score,
    seed: int,
    modes: Sequence[str] = ("deletion", "insertion"),
    black: bool = False,
    randoms: dict[tuple[object, ...], float] | None = None,
) -> Curves:
    """The map's deletion and insertion areas (nan for a mode not in ``modes``), and the mean over
    RANDOM_ORDERS random orders (kept in ``randoms`` where given: they do not depend on the map)."""
    cells = grid.shape[0]
    hottest = list(np.argsort(-grid.ravel(), kind="stable"))
    rng = np.random.default_rng(seed)
    orders = [list(rng.permutation(cells * cells)) for _ in range(RANDOM_ORDERS)]
    randoms = {} if randoms is None else randoms

    def along(order: Sequence[int], mode: str) -> float:
        return area(score(frames(image, order, cells, mode, black), label))

    found = {}
    for mode in ("deletion", "insertion"):
        if mode not in modes:
            found[mode] = (np.nan, np.nan)
            continue
        key = (name, label, cells, mode, black, seed)
        if key not in randoms:
            randoms[key] = float(np.mean([along(order, mode) for order in orders]))
        found[mode] = (along(hottest, mode), randoms[key])
    return Curves(
        name, found["deletion"][0], found["insertion"][0], found["deletion"][1], found["insertion"][1]
    )


def summary(placements: Sequence[tuple[bool, bool]], photos: Sequence[Curves]) -> str:
    """One line with every figure: localisation, and the areas against random orders."""
    hits, contrast = sum(h for h, _ in placements), sum(c for _, c in placements)
    below = sum(c.deletion < c.random_deletion for c in photos)
    above = sum(c.insertion > c.random_insertion for c in photos)

    def mean(key: str) -> float:
        return float(np.mean([getattr(c, key) for c in photos]))

    placed, shown = len(placements), len(photos)
    return (
        f"busy backgrounds: hottest cell on the object {hits}/{placed} = {hits / placed:.0%}, "
        f"hotter on it than off it {contrast}/{placed} = {contrast / placed:.0%}; "
        f"deletion area {mean('deletion'):.3f} (random orders {mean('random_deletion'):.3f}), "
        f"below random on {below}/{shown}; insertion area {mean('insertion'):.3f} "
        f"(random {mean('random_insertion'):.3f}), above random on {above}/{shown}"
    )


def measure(
    explain: Explain,
    score: Score,
    objects: Sequence[tuple[str, Image.Image, str]],
    seed: int = 17,
    modes: Sequence[str] = ("deletion", "insertion"),
    black: bool = False,
    randoms: dict[tuple[object, ...], float] | None = None,
) -> tuple[list[tuple[bool, bool]], list[Curves]]:
    """Localisation of every busy-background placement, and the curves (``modes``; deletion to black with
    ``black``) of every object photo."""
    placed = [localised(explain(p.image, p.label), p.mask) for p in busy_backgrounds(objects, seed)]
    photos = [
        curves(name, image, label, explain(image, label), score, seed + i, modes, black, randoms)
        for i, (name, image, label) in enumerate(objects)
    ]
    return placed, photos


# --- Comparing methods in process (``python -m space bench --explanations``) -----------------------------


def in_process(model: object, method: Method = DEFAULT) -> tuple[Explain, Score]:
    """The served method's code (space.serving.explain) with ``method``, and the model's own scores."""

    def explain_with(image: Image.Image, label: str) -> np.ndarray:
        return explain(model, image, label, chunk=16, method=method).grid  # type: ignore[arg-type]

    return explain_with, scorer(model)


def scorer(model: object) -> Score:
    def score(images: Sequence[Image.Image], label: str) -> np.ndarray:
        index = model.labels.index(label)  # type: ignore[attr-defined]
        found = [
            model.scores(model.backend.logits(model.preprocess(images[i : i + 16])))[:, index]  # type: ignore[attr-defined]
            for i in range(0, len(images), 16)
        ]
        return np.concatenate(found)

    return score


def rise(model: object, masks: int = 49, cells: int = 7, seed: int = 0) -> Explain:
    """RISE (Petsiuk et al.): random coarse masks, the map their score-weighted mean; ``masks`` passes, the
    same budget as the occlusion maps. Here only to be measured against them."""
    score = scorer(model)

    def explain_with(image: Image.Image, label: str) -> np.ndarray:
        rng = np.random.default_rng(seed)
        width, height = image.size
        blurred = fill_image(image, "blur", None)
        cell_w, cell_h = width / cells, height / cells
        copies, maps = [], []
        for _ in range(masks):
            coarse = (rng.random((cells + 1, cells + 1)) < 0.5).astype(np.uint8) * 255
            size = (int((cells + 1) * cell_w), int((cells + 1) * cell_h))
            up = Image.fromarray(coarse, "L").resize(size, Image.Resampling.BILINEAR)
            dx, dy = int(rng.integers(0, max(1, cell_w))), int(rng.integers(0, max(1, cell_h)))
            mask = up.crop((dx, dy, dx + width, dy + height))
            copies.append(Image.composite(image, blurred, mask))
            maps.append(cell_shares(np.asarray(mask, dtype=np.float64) / 255, cells))
        weights = score(copies, label)
        grid = sum(w * m for w, m in zip(weights, maps, strict=True)) / masks
        grid = grid - grid.min()
        return grid / grid.max() if grid.max() > 0 else grid

    return explain_with


def merged(*explainers: Explain) -> Explain:
    """Several maps averaged (two scales of windows): each normalised to [0, 1] first."""

    def explain_with(image: Image.Image, label: str) -> np.ndarray:
        grid = np.mean([explain(image, label) for explain in explainers], axis=0)
        return grid / grid.max() if grid.max() > 0 else grid

    return explain_with
