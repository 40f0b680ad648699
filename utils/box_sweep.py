"""Choe et al.'s contour boxes at every level of a threshold sweep, from one pass over the map.

Choe et al. ("Evaluating WSOL right", CVPR 2020, ``compute_bboxes_from_scoremaps``) threshold the
uint8 map ``u`` at each level ``L`` (foreground = ``u > L``), run ``cv2.findContours(RETR_TREE,
CHAIN_APPROX_SIMPLE)`` and keep the contour of largest ``cv2.contourArea`` (MaxBoxAcc) or every
contour (MaxBoxAccV2), boxed as ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]`` from
``cv2.boundingRect``. The foregrounds of all levels are nested, so their connected components
form a tree (the component tree of the upper level sets; Salembier et al., IEEE TIP 1998; Najman
& Couprie, IEEE TIP 2006). :class:`ComponentTree` builds it once and every level's components are
read off it; :func:`level_boxes` turns them into Choe et al.'s boxes. What makes this exact:

* The contours of ``u > L`` are the outer borders of its 8-connected components and the borders
  of its holes, the bounded 4-connected components of ``u <= L`` (cv2 follows Suzuki & Abe 1985:
  8-connected foreground, 4-connected background). An outer border passes through the
  component's extreme pixels, so its ``boundingRect`` is the component's bounding box; a hole
  border runs through the foreground pixels 4-adjacent to the hole, so its ``boundingRect`` is the
  hole's bounding box grown by one pixel on every side. Every-contour mode is these boxes, from a
  tree over ``u`` (8-connected) and one over ``255 - u`` (4-connected: ``u <= L`` is
  ``255 - u > 254 - L``).
* ``cv2.contourArea`` of an outer border is the area of its polygon through pixel centres: over all
  2 x 2 pixel windows, 1 for a window whose 4 pixels lie inside the border and 1/2 for 3 inside
  (the border cuts that window along a diagonal). For a component without holes "inside" means
  "in the component", and the pixels of one window that are above the level are mutually
  adjacent, so each window belongs to one component.
* cv2 lists the outermost contours in reverse raster order of their first pixel, each followed by
  its holes and the components nested in them; such an inner contour never has a larger area than
  the outer border around it. So Python's ``max`` (first of the largest) picks the outermost
  component of largest area, the one whose first pixel comes LAST in raster order on ties.
* Hole counts come from the Euler number (components - holes), which is local: ``(Q1 - Q3 -
  2 QD) / 4`` over the 2 x 2 windows of the zero-padded binary map (Gray, IEEE Trans. Computers
  1971). At a level without holes the areas above are exact. At a level with holes and several
  components, the component of largest hole-free area wins whenever its area exceeds every other
  component's bounding-box area (an upper bound of any polygon through its pixels, holes filled
  or not); otherwise that level's largest contour comes from cv2 itself.

Building the tree: each row is cut into unimodal runs (values rise, then fall), so at any level
the part of a run above the level is one interval. A run points to the run holding the highest
neighbour of its peak, which is above the level whenever the peak is; following the pointers
gives regions whose part above any level is connected or empty. Two adjacent regions are joined
below the largest ``min(u[p], u[q])`` over adjacent pixel pairs between them, and Kruskal's order
over those region edges gives the tree. Per region and level, the bounding box, first pixel and
window areas come from histograms over the values (reverse cumulative min / max / sum). A map
whose tree has more than ``MAX_REGIONS`` regions (noise) is boxed level by level with cv2.
"""
from __future__ import annotations

import cv2
import numpy as np

NUM_VALUES = 256
# Above this many regions the tree's Python part (Kruskal's merges) costs more than
# cv2.findContours at every level.
MAX_REGIONS = 1024
_BIG = np.iinfo(np.int64).max


# ----------------------------------------------------------------------------- cv2 at one level
def contour_boxes(contours, width: int, height: int, modes) -> dict:
    """{mode: Choe et al.'s boxes (n, 4) of ``contours``} for each mode (False = largest)."""
    from utils.cam import boxes_from_contours
    return {m: boxes_from_contours(contours, width, height, m) for m in modes}


def contours_at(u: np.ndarray, level: int):
    """cv2's contours of ``u > level`` (Choe et al.'s threshold, ``RETR_TREE``)."""
    binary = cv2.threshold(u, int(level), 255, cv2.THRESH_BINARY)[1]
    return cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]


# ----------------------------------------------------------------------------- the tree
def _above(per_value: np.ndarray, ufunc, fill) -> np.ndarray:
    """``out[..., L] = ufunc.reduce(per_value[..., L + 1:])``: what lies above level ``L``."""
    acc = ufunc.accumulate(per_value[..., ::-1], axis=-1)[..., ::-1]
    out = np.empty_like(acc)
    out[..., :-1] = acc[..., 1:]
    out[..., -1] = fill
    return out


def _row_runs(u: np.ndarray) -> np.ndarray:
    """Start flags (H, W) of the unimodal runs of every row: a run starts where the values rise
    again after their last strict change was a fall (a plateau in a valley stays in one run)."""
    height, width = u.shape
    start = np.zeros((height, width), dtype=bool)
    start[:, 0] = True
    if width > 2:
        left, right = u[:, :-1], u[:, 1:]
        rise, fall = right > left, right < left
        pos = np.arange(width - 1, dtype=np.int32)
        last_rise = np.maximum.accumulate(np.where(rise, pos, -1), axis=1)
        last_fall = np.maximum.accumulate(np.where(fall, pos, -1), axis=1)
        start[:, 2:] = rise[:, 1:] & (last_fall[:, :-1] > last_rise[:, :-1])
    return start


def _offsets(connectivity: int):
    if connectivity == 8:
        return [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    return [(-1, 0), (0, -1), (0, 1), (1, 0)]


def _regions(u: np.ndarray, connectivity: int):
    """Region label per pixel (int64, raveled) and the value of each region's peak.

    Pixels are ordered by ``(value, raster index)``; a run's peak is its largest pixel in that
    order and the run points to the run of the largest neighbour of the peak when that neighbour
    is larger (so the pointers never cycle, and the neighbour's value is at least the peak's)."""
    height, width = u.shape
    n = height * width
    key = u.astype(np.int64).ravel() * n + np.arange(n, dtype=np.int64)
    start = _row_runs(u).ravel()
    run_of = np.cumsum(start) - 1
    starts = np.flatnonzero(start)
    peak_key = np.maximum.reduceat(key, starts)
    peak = peak_key % n
    py, px = np.divmod(peak, width)
    best = np.full(len(starts), -1, dtype=np.int64)
    for dy, dx in _offsets(connectivity):
        qy, qx = py + dy, px + dx
        inside = (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        best = np.where(inside, np.maximum(best, key[np.where(inside, qy * width + qx, 0)]), best)
    run_parent = np.where(best > peak_key, run_of[np.maximum(best, 0) % n], np.arange(len(starts)))
    while True:  # pointer jumping: every run to the root of its tree
        nxt = run_parent[run_parent]
        if np.array_equal(nxt, run_parent):
            break
        run_parent = nxt
    is_root = run_parent == np.arange(len(starts))
    region_of_run = (np.cumsum(is_root) - 1)[run_parent]
    return region_of_run[run_of], u.ravel()[peak[is_root]]


def _region_edges(u: np.ndarray, region: np.ndarray, num_regions: int, connectivity: int):
    """(a, b, w) per pair of adjacent regions: the largest ``min(u[p], u[q])`` over their
    adjacent pixel pairs; the regions are joined at the levels below ``w``."""
    views = [((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
             ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))]
    if connectivity == 8:
        views += [((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),
                  ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1)))]
    codes, weights = [], []
    for sa, sb in views:
        ra, rb = region[sa], region[sb]
        differ = ra != rb
        if not differ.any():
            continue
        a, b = ra[differ], rb[differ]
        codes.append(np.minimum(a, b) * num_regions + np.maximum(a, b))
        weights.append(np.minimum(u[sa][differ], u[sb][differ]))
    if not codes:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    code, w = np.concatenate(codes), np.concatenate(weights)
    if num_regions * num_regions <= 1 << 22:
        dense = np.zeros(num_regions * num_regions, dtype=np.uint8)
        np.maximum.at(dense, code, w)
        code = np.flatnonzero(dense)
        w = dense[code]
    else:
        order = np.lexsort((w, code))
        code, w = code[order], w[order]
        last = np.append(code[1:] != code[:-1], True) & (w > 0)
        code, w = code[last], w[last]
    a, b = np.divmod(code, num_regions)
    return a, b, w.astype(np.int64)


def _kruskal(peak_value: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray):
    """Merge tree of the regions (its leaves). Per node: ``level`` (the node is one component
    at the levels below it, down to its parent's level), ``parent`` (-1 at a root), and the
    first position and count of its leaves in ``leaf_order``, where every node's leaves are
    contiguous."""
    num_regions = len(peak_value)
    level = peak_value.astype(np.int64).tolist()
    parent = [-1] * num_regions
    set_of = list(range(num_regions))
    node_of_set = list(range(num_regions))
    leaves = [[i] for i in range(num_regions)]
    first_leaf = list(range(num_regions))
    count = [1] * num_regions

    def find(x):
        root = x
        while set_of[root] != root:
            root = set_of[root]
        while set_of[x] != root:
            set_of[x], x = root, set_of[x]
        return root

    order = np.argsort(-w, kind="stable")
    for ea, eb, ew in zip(a[order].tolist(), b[order].tolist(), w[order].tolist()):
        ra, rb = find(ea), find(eb)
        if ra == rb:
            continue
        if len(leaves[ra]) < len(leaves[rb]):
            ra, rb = rb, ra
        node = len(level)
        level.append(ew)
        parent.append(-1)
        parent[node_of_set[ra]] = node
        parent[node_of_set[rb]] = node
        set_of[rb] = ra
        leaves[ra].extend(leaves[rb])
        leaves[rb] = None
        node_of_set[ra] = node
        first_leaf.append(leaves[ra][0])
        count.append(len(leaves[ra]))
    leaf_order = [leaf for r in range(num_regions) if set_of[r] == r for leaf in leaves[r]]
    position = np.empty(num_regions, dtype=np.int64)
    position[leaf_order] = np.arange(num_regions)
    return (np.asarray(level, dtype=np.int64), np.asarray(parent, dtype=np.int64),
            position[np.asarray(first_leaf, dtype=np.int64)], np.asarray(count, dtype=np.int64),
            np.asarray(leaf_order, dtype=np.int64))


class ComponentTree:
    """The connected components of ``u > L`` for every level ``L`` (0..254) of a uint8 map.

    ``connectivity`` 8 or 4. After construction (unless ``too_large``): ``level`` (C,) the
    level of each component (one entry per component per level it exists at), ``x0, y0, x1, y1``
    (C,) its bounding box in pixels (inclusive), ``first`` (C,) the raster index of its first
    pixel, and ``count`` (256,) the number of components per level. :meth:`reduce` sums (or
    takes min / max of) any per (region, value) quantity over each component.
    """

    def __init__(self, u: np.ndarray, connectivity: int, max_regions: int = MAX_REGIONS):
        height, width = u.shape
        region, peak_value = _regions(u, connectivity)
        self.num_regions = len(peak_value)
        self.too_large = self.num_regions > max_regions
        if self.too_large:
            return
        self.region = region.reshape(height, width)
        a, b, w = _region_edges(u, self.region, self.num_regions, connectivity)
        level, parent, first_leaf, count, leaf_order = _kruskal(peak_value, a, b, w)
        # node n is one component at the levels level[parent] <= L < level[n]; the cells
        # (leaf, L) of those levels form a rectangle in leaf order, disjoint from every other
        # node's: paint each cell with the index of its (node, level) component
        lo = np.where(parent >= 0, level[np.maximum(parent, 0)], 0)
        hi = np.minimum(level, NUM_VALUES - 1)
        alive = np.maximum(hi - lo, 0)
        start = np.cumsum(alive) - alive
        self.level = np.repeat(lo - start, alive) + np.arange(int(alive.sum()))
        self.count = np.bincount(self.level, minlength=NUM_VALUES)
        painted = np.full((self.num_regions, NUM_VALUES), -(1 << 40), dtype=np.int64)
        shift = start - lo
        for node in np.flatnonzero(alive).tolist():
            painted[first_leaf[node]:first_leaf[node] + count[node], lo[node]:hi[node]] = shift[node]
        cells = np.empty_like(painted)
        cells[leaf_order] = painted + np.arange(NUM_VALUES)
        self._inside = cells >= 0
        self._cells = cells[self._inside]
        # bounding box and first pixel: per (region, value), then above each level
        flat = u.ravel()
        valid = np.flatnonzero(flat)
        bins = region[valid] * NUM_VALUES + flat[valid]
        xs = valid % width
        self.x0 = self.reduce(_per_bin(np.minimum, bins, xs, self.num_regions), np.minimum, _BIG)
        self.x1 = self.reduce(_per_bin(np.maximum, bins, xs, self.num_regions), np.maximum, -1)
        self.first = self.reduce(_per_bin(np.minimum, bins, valid, self.num_regions), np.minimum, _BIG)
        last = self.reduce(_per_bin(np.maximum, bins, valid, self.num_regions), np.maximum, -1)
        self.y0, self.y1 = self.first // width, last // width

    def reduce(self, per_value: np.ndarray, ufunc, fill) -> np.ndarray:
        """Per component, ``ufunc`` over its regions of ``per_value`` (regions, 256) taken above
        the component's level (``ufunc.reduce(per_value[r, L + 1:])``)."""
        per_level = _above(per_value, ufunc, fill)
        out = np.full(len(self.level), fill, dtype=per_level.dtype)
        ufunc.at(out, self._cells, per_level[self._inside])
        return out


def _per_bin(ufunc, bins: np.ndarray, values: np.ndarray, num_regions: int) -> np.ndarray:
    fill = _BIG if ufunc is np.minimum else -1
    out = np.full(num_regions * NUM_VALUES, fill, dtype=np.int64)
    ufunc.at(out, bins, values)
    return out.reshape(num_regions, NUM_VALUES)


# ----------------------------------------------------------------------------- 2 x 2 windows
class _Windows:
    """The 2 x 2 windows of the zero-padded map ((H + 1) x (W + 1)): their pixels (top-left a,
    top-right b, bottom-left c, bottom-right d) and those four values sorted (s1 >= ... >= s4)."""

    def __init__(self, u: np.ndarray):
        padded = np.zeros((u.shape[0] + 2, u.shape[1] + 2), dtype=u.dtype)
        padded[1:-1, 1:-1] = u
        self.a, self.b, self.c, self.d = padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
        lo_ab, hi_ab = np.minimum(self.a, self.b), np.maximum(self.a, self.b)
        lo_cd, hi_cd = np.minimum(self.c, self.d), np.maximum(self.c, self.d)
        mid_hi, mid_lo = np.minimum(hi_ab, hi_cd), np.maximum(lo_ab, lo_cd)
        self.s1 = np.maximum(hi_ab, hi_cd)
        self.s2 = np.maximum(mid_hi, mid_lo)
        self.s3 = np.minimum(mid_hi, mid_lo)
        self.s4 = np.minimum(lo_ab, lo_cd)

    def euler_numbers(self) -> np.ndarray:
        """Euler number (components - holes) of ``u > L`` for L = 0..255: ``(Q1 - Q3 - 2 QD) / 4``
        (Gray 1971; 8-connected foreground), Q1 / Q3 = windows with exactly one / three pixels
        above L, QD = windows with exactly the two diagonal ones."""
        a, b, c, d = self.a, self.b, self.c, self.d
        q1 = _count_above(self.s1) - _count_above(self.s2)
        q3 = _count_above(self.s3) - _count_above(self.s4)
        lo_ad, hi_ad = np.minimum(a, d), np.maximum(a, d)
        lo_bc, hi_bc = np.minimum(b, c), np.maximum(b, c)
        diag_ad, diag_bc = lo_ad > hi_bc, lo_bc > hi_ad
        qd = (_count_above(lo_ad[diag_ad]) - _count_above(hi_bc[diag_ad])
              + _count_above(lo_bc[diag_bc]) - _count_above(hi_ad[diag_bc]))
        return (q1 - q3 - 2 * qd) // 4

    def twice_areas(self, region: np.ndarray, num_regions: int) -> np.ndarray:
        """(regions, 256): per value v, the windows whose third (fourth) largest pixel is v,
        counted in the region of the window's largest pixel; above level L this sums to twice
        the window area (1/2 per window with three pixels above L, 1 with four)."""
        padded = np.zeros((region.shape[0] + 2, region.shape[1] + 2), dtype=region.dtype)
        padded[1:-1, 1:-1] = region
        ra, rb, rc, rd = padded[:-1, :-1], padded[:-1, 1:], padded[1:, :-1], padded[1:, 1:]
        top = self.s1
        owner = np.where(self.a == top, ra, np.where(self.b == top, rb, np.where(self.c == top, rc, rd)))
        counted = self.s3 > 0
        owner = owner[counted] * NUM_VALUES
        size = num_regions * NUM_VALUES
        per_value = (np.bincount(owner + self.s3[counted], minlength=size)
                     + np.bincount(owner + self.s4[counted], minlength=size))
        return per_value.reshape(num_regions, NUM_VALUES)


def _count_above(values: np.ndarray) -> np.ndarray:
    """``out[L] = #{values > L}`` for L = 0..255."""
    return _above(np.bincount(values.ravel(), minlength=NUM_VALUES), np.add, 0)


def euler_numbers(u: np.ndarray) -> np.ndarray:
    """Euler number (components - holes, as cv2 sees them) of ``u > L`` for L = 0..255."""
    return _Windows(u).euler_numbers()


# ----------------------------------------------------------------------------- the sweep
def _choe_boxes(x0, y0, x1, y1, width: int, height: int) -> np.ndarray:
    """Choe et al.'s box of a contour whose pixels span x0..x1, y0..y1 (inclusive)."""
    return np.stack([x0, y0, np.minimum(x1 + 1, width - 1), np.minimum(y1 + 1, height - 1)], axis=1)


def level_boxes(u: np.ndarray, levels, modes, *, max_regions: int = MAX_REGIONS,
                stats: dict | None = None) -> dict:
    """Choe et al.'s boxes of ``u > L`` for every ``L`` in ``levels`` (distinct ints in 0..254).

    ``modes``: bools, False = the largest contour, True = every contour. Returns
    ``{mode: (boxes (N, 4) int64, level_index (N,) int64)}``: the boxes of level ``levels[i]`` are
    the rows with ``level_index == i``, the same boxes (as a multiset) as
    ``boxes_from_contours(contours_at(u, L), W, H, mode)``: ``[[0, 0, 0, 0]]`` without contour.
    ``stats`` (optional dict) counts the levels that needed cv2 (``"contour_levels"``).
    """
    modes = tuple(dict.fromkeys(bool(m) for m in modes))
    levels = np.asarray(levels, dtype=np.int64).reshape(-1)
    height, width = u.shape
    n = height * width
    index = np.arange(len(levels))
    placeholder = np.zeros((1, 4), dtype=np.int64)
    cv2_levels = []

    def from_cv2(which, wanted=modes):
        out = {m: ([], []) for m in wanted}
        for i in which:
            boxes = contour_boxes(contours_at(u, int(levels[i])), width, height, wanted)
            for m in wanted:
                out[m][0].append(boxes[m])
                out[m][1].append(np.full(len(boxes[m]), i, dtype=np.int64))
            cv2_levels.append(i)
        return out

    def finish(parts):
        if stats is not None:
            stats["contour_levels"] = stats.get("contour_levels", 0) + len(set(cv2_levels))
        return {m: (np.concatenate(parts[m][0]).astype(np.int64).reshape(-1, 4),
                    np.concatenate(parts[m][1]).astype(np.int64)) for m in modes}

    if int(u.max()) == 0:  # no foreground at any level
        return finish({m: ([placeholder] * len(levels), [index]) for m in modes})
    fg = ComponentTree(u, 8, max_regions)
    if fg.too_large:
        return finish(from_cv2(range(len(levels))))
    slot = np.full(NUM_VALUES, -1, dtype=np.int64)
    slot[levels] = index
    parts = {m: ([], []) for m in modes}
    boxes = _choe_boxes(fg.x0, fg.y0, fg.x1, fg.y1, width, height)
    empty = fg.count[levels] == 0
    windows = _Windows(u)
    bg = ComponentTree(255 - u, 4, max_regions) if True in modes else None
    if bg is not None and not bg.too_large:
        fg_level = 254 - bg.level
        hole = (bg.x0 > 0) & (bg.y0 > 0) & (bg.x1 < width - 1) & (bg.y1 < height - 1)
        holes = np.bincount(fg_level[hole], minlength=NUM_VALUES)
    else:
        holes = fg.count - windows.euler_numbers()
    if True in modes:
        if bg is not None and not bg.too_large:
            keep = slot[fg.level] >= 0
            parts[True][0].append(boxes[keep])
            parts[True][1].append(slot[fg.level[keep]])
            keep_hole = hole & (slot[fg_level] >= 0)
            parts[True][0].append(_choe_boxes(bg.x0[keep_hole] - 1, bg.y0[keep_hole] - 1,
                                              bg.x1[keep_hole] + 1, bg.y1[keep_hole] + 1, width, height))
            parts[True][1].append(slot[fg_level[keep_hole]])
            parts[True][0].append(np.repeat(placeholder, int(empty.sum()), axis=0))
            parts[True][1].append(index[empty])
        else:
            keep = (slot[fg.level] >= 0) & (holes[fg.level] == 0)
            parts[True][0].append(boxes[keep])
            parts[True][1].append(slot[fg.level[keep]])
            parts[True][0].append(np.repeat(placeholder, int(empty.sum()), axis=0))
            parts[True][1].append(index[empty])
            extra = from_cv2(np.flatnonzero((holes[levels] > 0) & ~empty).tolist(), (True,))
            parts[True][0].extend(extra[True][0])
            parts[True][1].extend(extra[True][1])
    if False in modes:
        # the first contour of largest area in cv2's order: largest twice-area, then the last
        # first pixel in raster order
        twice_area = fg.reduce(windows.twice_areas(fg.region, fg.num_regions), np.add, 0)
        rank = twice_area * n + fg.first
        order = np.lexsort((rank, fg.level))
        ends = np.flatnonzero(np.append(fg.level[order][1:] != fg.level[order][:-1], True))
        winner = order[ends]                       # per level that has components
        winner_level = fg.level[winner]
        # a level with holes and several components: the winner's hole-free area must beat every
        # other component's bounding-box area (2 (x1 - x0) (y1 - y0) in twice-area units)
        bound = 2 * (fg.x1 - fg.x0) * (fg.y1 - fg.y0)
        bound[winner] = -1
        others = np.full(NUM_VALUES, -1, dtype=np.int64)
        np.maximum.at(others, fg.level, bound)
        certain = (holes[winner_level] == 0) | (fg.count[winner_level] == 1) | \
                  (twice_area[winner] > others[winner_level])
        use = certain & (slot[winner_level] >= 0)
        parts[False][0].append(boxes[winner[use]])
        parts[False][1].append(slot[winner_level[use]])
        parts[False][0].append(np.repeat(placeholder, int(empty.sum()), axis=0))
        parts[False][1].append(index[empty])
        uncertain = slot[winner_level[~certain & (slot[winner_level] >= 0)]]
        extra = from_cv2(uncertain.tolist(), (False,))
        parts[False][0].extend(extra[False][0])
        parts[False][1].extend(extra[False][1])
    return finish(parts)
