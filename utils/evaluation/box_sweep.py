"""Choe et al.'s contour boxes at every level of a threshold sweep, from one pass over the map:
:func:`level_boxes` (the component trees of the map's level sets, :class:`ComponentTree`), the same
boxes as ``cv2.findContours`` level by level. What the sweep computes: [docs/evaluation.md](../../docs/evaluation.md)
(Thresholds); why these boxes are cv2's: the comment below the imports.
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.evaluation.boxes import boxes_from_contours

# Choe et al. ("Evaluating WSOL right", CVPR 2020, ``compute_bboxes_from_scoremaps``) threshold the
# uint8 map ``u`` at each level ``L`` (foreground = ``u > L``), run ``cv2.findContours(RETR_TREE,
# CHAIN_APPROX_SIMPLE)`` and keep the contour of largest ``cv2.contourArea`` (MaxBoxAcc) or every
# contour (MaxBoxAccV2), boxed as ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]`` from
# ``cv2.boundingRect``. The foregrounds of all levels are nested, so their connected components
# form a tree (the component tree of the upper level sets; Salembier et al., IEEE TIP 1998; Najman
# & Couprie, IEEE TIP 2006). :class:`ComponentTree` builds it once and every level's components are
# read off it; :func:`level_boxes` turns them into Choe et al.'s boxes. Why they are cv2's:
#
# * The contours of ``u > L`` are the outer borders of its 8-connected components and the borders
#   of its holes, the bounded 4-connected components of ``u <= L`` (cv2 follows Suzuki & Abe 1985:
#   8-connected foreground, 4-connected background). An outer border passes through the
#   component's extreme pixels, so its ``boundingRect`` is the component's bounding box; a hole
#   border runs through the foreground pixels 4-adjacent to the hole, so its ``boundingRect`` is the
#   hole's bounding box grown by one pixel on every side. Every-contour mode is these boxes, from the
#   tree of ``u`` (8-connected) and the tree of ``255 - u`` (4-connected: ``u <= L`` is
#   ``255 - u > 254 - L``), whose components that do not touch the image border are the holes.
# * ``cv2.contourArea`` of an outer border is the area of its polygon through pixel centres: over all
#   2 x 2 pixel windows, 1 for a window whose 4 pixels lie inside the border and 1/2 for 3 inside
#   (the border cuts that window along a diagonal). For a component without holes "inside" means
#   "in the component", and the pixels of one window that are above the level are mutually
#   adjacent, so each window belongs to one component.
# * cv2 lists the outermost contours in reverse raster order of their first pixel, each followed by
#   its holes and the components nested in them; such an inner contour never has a larger area than
#   the outer border around it. So Python's ``max`` (first of the largest) picks the outermost
#   component of largest area, the one whose first pixel comes LAST in raster order on ties.
# * A hole adds its area to its component's contour, so the hole-free window areas decide the
#   largest contour only where the level has no hole, has one component, or the largest hole-free
#   area beats every other component's bounding-box area (which bounds any polygon through its
#   pixels). Elsewhere the level's hole count decides: from the tree of ``255 - u`` when every-contour
#   mode built it, else from the Euler number (components - holes), which is local: ``(Q1 - Q3 -
#   2 QD) / 4`` over the 2 x 2 windows of the zero-padded binary map (Gray, IEEE Trans. Computers
#   1971). A level with holes there takes its largest contour from cv2 itself.
#
# Building a tree: each row is cut into unimodal runs (values rise, then fall), so at any level the
# part of a run above the level is one interval. A run points to the run holding the largest
# neighbour of its peak, which is above the level whenever the peak is; following the pointers
# gives regions whose part above any level is connected or empty. A region that meets a
# larger-peaked one at its own peak value joins it. Two adjacent regions are joined below the
# largest ``min(u[p], u[q])`` over adjacent pixel pairs between them, and Kruskal's order over those
# edges gives the tree. Per region and value, histograms (min / max / sum) give what lies above
# each level: rows from the row runs (a run lies in the component of its peak), columns from each
# region's largest value per column, first pixels from the left ends of the row runs' intervals,
# window areas from the windows. A map whose tree would have more than ``MAX_REGIONS`` regions is
# boxed level by level with cv2.

NUM_VALUES = 256
# A tree keeps a few (regions x 256) int64 tables: above this many regions (large maps of pixel
# noise) the map is boxed level by level with cv2 instead, in bounded memory.
MAX_REGIONS = 16384
_BIG = np.iinfo(np.int64).max
_EXACT_FLOAT32 = 1 << 24  # cv2.calcHist counts in float32
# Up to this many undecided levels, cv2 decides them (cheaper than counting holes at every level).
_FEW_LEVELS = 4


# ----------------------------------------------------------------------------- cv2 at one level
def contour_boxes(contours, width: int, height: int, modes) -> dict:
    """{mode: Choe et al.'s boxes (n, 4) of ``contours``} for each mode (False = largest)."""
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


class _Steps:
    """Where the rows of ``u`` change value, in raster order: ``pixel[k]`` is the left pixel
    ``p`` (raveled) of a pair ``(p, p + 1)`` that rises (``up``), falls (``down``), or, at the
    last pixel of every row, ends the row (``end``). Shared by ``u`` and ``255 - u`` (rises and
    falls swapped)."""

    def __init__(self, u: np.ndarray):
        height, width = u.shape
        code = np.empty((height, width), dtype=np.int8)
        left, right = u[:, :-1], u[:, 1:]
        code[:, :-1] = (right > left).view(np.int8) - (right < left).view(np.int8)
        code[:, -1] = 2
        self.pixel = np.flatnonzero(code != 0)
        code = code.ravel()[self.pixel]
        self.up, self.down, self.end = code == 1, code == -1, code == 2
        self._at = {}

    def at(self, up: bool) -> np.ndarray:
        """The pixels ``p`` of the rises (``up``) or of the falls."""
        if up not in self._at:
            self._at[up] = self.pixel[self.up if up else self.down]
        return self._at[up]


class _Scan:
    """A map and where its rows change value (shared by ``u`` and ``255 - u``)."""

    def __init__(self, u: np.ndarray):
        self.u = u
        self.rows = _Steps(u)


class _Runs:
    """The unimodal runs of every row (values rise, then fall), raveled pixel indices.

    A run starts at each row start and where the values rise again after their last strict
    change was a fall (a plateau in a valley stays with the run on its left). Above any level, a
    run's pixels form one interval, whose left end is a row start or a pixel above its left
    neighbour (``rises``).
    """

    def __init__(self, u: np.ndarray, steps: _Steps, flip: bool = False):
        n = u.size
        self._steps, self._flip = steps, flip
        rise, fall = (steps.down, steps.up) if flip else (steps.up, steps.down)
        begins = rise | steps.end            # a rise after a fall, or the row's end
        begins[1:] &= fall[:-1] | steps.end[1:]
        begins[0] &= steps.end[0]
        self.starts = np.concatenate([[0], steps.pixel[begins][:-1] + 1])
        self.lengths = np.diff(np.append(self.starts, n))

    @property
    def rises(self) -> np.ndarray:
        return self._steps.at(not self._flip) + 1

    def of(self, pixels: np.ndarray) -> np.ndarray:
        """Run index of each pixel."""
        return np.searchsorted(self.starts, pixels, side="right") - 1


def _offsets(connectivity: int):
    if connectivity == 8:
        return [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    return [(-1, 0), (0, -1), (0, 1), (1, 0)]


def _regions(u: np.ndarray, runs: _Runs, connectivity: int):
    """Per run its region (int64) and peak (raveled pixel); per region its peak's key and value.

    Pixels are ordered by value, then the sum of the values in the 7 x 7 window around them (so
    that inside a plateau the order climbs towards larger values), then raster index. A run's peak
    is its largest pixel in that order; the run points to the run of the peak's largest neighbour
    when that neighbour is larger: the neighbour's value is at least the peak's, so it is above
    every level the run is, and the pointers never cycle. A region is the runs that reach one root."""
    height, width = u.shape
    n = height * width
    key = u.astype(np.int64).ravel()
    key <<= 16
    key |= cv2.boxFilter(u, cv2.CV_16U, (7, 7), normalize=False).ravel()  # <= 49 * 255 < 2 ** 16
    key *= n
    key += np.arange(n, dtype=np.int64)
    peak_key = np.maximum.reduceat(key, runs.starts)
    peaks = peak_key % n
    padded = np.full((height + 2, width + 2), -1, dtype=np.int64)
    padded[1:-1, 1:-1] = key.reshape(height, width)
    py, px = np.divmod(peaks, width)
    offsets = np.array([dy * (width + 2) + dx for dy, dx in _offsets(connectivity)])
    best = padded.ravel()[((py + 1) * (width + 2) + px + 1)[:, None] + offsets].max(axis=1)
    num_runs = len(runs.starts)
    parent = np.where(best > peak_key, runs.of(best % n), np.arange(num_runs))
    while True:  # pointer jumping: every run to the root of its tree
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            break
        parent = nxt
    is_root = parent == np.arange(num_runs)
    return (np.cumsum(is_root) - 1)[parent], peaks, peak_key[is_root], u.ravel()[peaks[is_root]]


def _region_edges(u: np.ndarray, runs: _Runs, region_of_run: np.ndarray, connectivity: int):
    """(a, b, w) per pair of adjacent regions: the largest ``min(u[p], u[q])`` over their
    adjacent pixel pairs; the regions are joined at the levels below ``w``."""
    height, width = u.shape
    num_regions = int(region_of_run.max()) + 1
    # along a row, pixels of different regions meet only where a run ends and the next starts;
    # the next run starts with a rise, so the pair's minimum is the end's value
    inner = runs.starts[1:] % width != 0
    ends_a = [region_of_run[:-1][inner]]
    ends_b = [region_of_run[1:][inner]]
    flat = u.ravel()
    weights = [flat[runs.starts[1:][inner] - 1]]
    label = np.uint8 if num_regions <= 256 else np.int32
    region = np.repeat(region_of_run.astype(label), runs.lengths)
    # (p, p + offset) pairs down, down-right, down-left; the diagonals must not wrap a row
    for offset, bad_column in [(width, -1)] + ([(width + 1, width - 1), (width - 1, 0)] if connectivity == 8 else []):
        if offset == 0 or offset >= len(region):
            continue
        p = np.flatnonzero(region[:-offset] != region[offset:])
        if bad_column >= 0:
            p = p[p % width != bad_column]
        q = p + offset
        ends_a.append(region[p])
        ends_b.append(region[q])
        weights.append(np.minimum(flat[p], flat[q]))
    return _strongest_edges(np.concatenate(ends_a), np.concatenate(ends_b), np.concatenate(weights),
                            num_regions)


def _strongest_edges(a: np.ndarray, b: np.ndarray, w: np.ndarray, num_regions: int):
    """The largest weight per unordered pair (a, b), a != b; zero weights dropped."""
    a, b = a.astype(np.int64), b.astype(np.int64)
    code = np.minimum(a, b) * num_regions + np.maximum(a, b)
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


def _merge_at_peaks(peak_key: np.ndarray, peak_value: np.ndarray, a: np.ndarray, b: np.ndarray, w: np.ndarray):
    """Join each region to a larger-peaked neighbour it meets at its own peak value.

    An edge of weight equal to the lower region's peak value holds a pixel pair at that value:
    whenever the lower region is above the level, so is the pair, and the union stays connected.
    Returns the new label of every region, the new regions' peak values and their edges."""
    num_regions = len(peak_key)
    low = np.where(peak_key[a] < peak_key[b], a, b)
    high = a + b - low
    equal = w == peak_value[low]
    into = np.arange(num_regions)
    into[low[equal]] = high[equal]  # each step goes to a larger peak key: no cycle
    while True:
        nxt = into[into]
        if np.array_equal(nxt, into):
            break
        into = nxt
    is_root = into == np.arange(num_regions)
    new = (np.cumsum(is_root) - 1)[into]
    na, nb = new[a], new[b]
    keep = na != nb
    merged = int(is_root.sum())
    return (new, peak_value[is_root]) + _strongest_edges(na[keep], nb[keep], w[keep].astype(np.uint8), merged)


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

    ``scan``: the map's :class:`_Scan`; ``connectivity`` 8 or 4; ``flip=True`` for the tree of
    ``255 - u`` (the background ``u <= 254 - L``). After construction (unless ``too_large``): ``level`` (C,) the
    level of each component (one entry per component per level it exists at), ``x0, y0, x1, y1``
    (C,) its bounding box in pixels (inclusive), ``first`` (C,) the raster index of its first
    pixel, and ``count`` (256,) the number of components per level. :meth:`reduce` sums (or
    takes min / max of) any per (region, value) quantity over each component.
    """

    def __init__(self, scan: _Scan, connectivity: int, max_regions: int = MAX_REGIONS, flip: bool = False):
        u = 255 - scan.u if flip else scan.u
        height, width = u.shape
        n = height * width
        runs = _Runs(u, scan.rows, flip)
        region_of_run, run_peaks, peak_key, peak_value = _regions(u, runs, connectivity)
        self.too_large = len(peak_key) > max_regions
        if self.too_large:
            return
        a, b, w = _region_edges(u, runs, region_of_run, connectivity)
        new, peak_value, a, b, w = _merge_at_peaks(peak_key, peak_value, a, b, w)
        region_of_run = new[region_of_run]
        self.num_regions = len(peak_value)
        self.region = np.repeat(region_of_run.astype(np.int32), runs.lengths).reshape(height, width)
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
        # a cell of a region at or above its peak is empty: min / max / sum ignore it
        inside = (cells >= 0) & (np.arange(NUM_VALUES) < peak_value[:, None])
        self._cells = cells[inside]
        self._above_mask = np.zeros_like(inside)   # cell (r, L) reads column L + 1 of a reverse
        self._above_mask[:, 1:] = inside[:, :-1]    # accumulation (the values above L)
        # bounding box: rows from the row runs (a run is above a level when its peak is, and then
        # lies in the component of its peak's region), columns from each region's largest value
        # per column (the region has a pixel above L in column x when that value is above L)
        flat = u.ravel()
        bins = region_of_run * NUM_VALUES + flat[run_peaks]
        rows = runs.starts // width
        self.y0 = self.reduce(_per_bin(np.minimum, bins, rows, self.num_regions), np.minimum, _BIG)
        self.y1 = self.reduce(_per_bin(np.maximum, bins, rows, self.num_regions), np.maximum, -1)
        column_max = np.zeros(self.num_regions * width, dtype=u.dtype)
        np.maximum.at(column_max, (self.region * width + np.arange(width, dtype=np.int32)).ravel(), flat)
        bins = np.arange(self.num_regions * width) // width * NUM_VALUES + column_max
        x = np.tile(np.arange(width), self.num_regions)
        self.x0 = self.reduce(_per_bin(np.minimum, bins, x, self.num_regions), np.minimum, _BIG)
        self.x1 = self.reduce(_per_bin(np.maximum, bins, x, self.num_regions), np.maximum, -1)
        self._runs, self._flat, self._first = runs, flat, None

    @property
    def first(self) -> np.ndarray:
        """Raster index of each component's first pixel: the left end of one of its runs'
        intervals, a row start or a pixel above its left neighbour."""
        if self._first is None:
            left = np.concatenate([self._runs.starts, self._runs.rises])
            bins = self.region.ravel()[left].astype(np.int64) * NUM_VALUES + self._flat[left]
            self._first = self.reduce(_per_bin(np.minimum, bins, left, self.num_regions), np.minimum, _BIG)
        return self._first

    def reduce(self, per_value: np.ndarray, ufunc, fill) -> np.ndarray:
        """Per component, ``ufunc`` over its regions of ``per_value`` (regions, 256) taken above
        the component's level (``ufunc.reduce(per_value[r, L + 1:])``)."""
        from_value = ufunc.accumulate(per_value[:, ::-1], axis=1)[:, ::-1]  # reduce(per_value[r, v:])
        out = np.full(len(self.level), fill, dtype=from_value.dtype)
        ufunc.at(out, self._cells, from_value[self._above_mask])
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
        above L, QD = windows with exactly the two diagonal ones. A window has exactly k pixels
        above L for ``s(k + 1) <= L < s(k)``: per value, the counts enter at the upper end of each
        such range and leave at its lower end."""
        a, b, c, d = self.a, self.b, self.c, self.d
        lo_ad, hi_ad = np.minimum(a, d), np.maximum(a, d)
        lo_bc, hi_bc = np.minimum(b, c), np.maximum(b, c)
        diag_ad, diag_bc = lo_ad > hi_bc, lo_bc > hi_ad   # the two largest pixels are a diagonal
        diag_top = lo_ad * diag_ad + lo_bc * diag_bc       # (at most one of the two holds)
        diag_bottom = hi_bc * diag_ad + hi_ad * diag_bc
        per_value = (_histogram(self.s1) - _histogram(self.s2) - _histogram(self.s3) + _histogram(self.s4)
                     - 2 * (_histogram(diag_top) - _histogram(diag_bottom)))
        return _above(per_value, np.add, 0) // 4

    def twice_areas(self, region: np.ndarray, num_regions: int) -> np.ndarray:
        """(regions, 256): per value v, the windows whose third (fourth) largest pixel is v,
        counted in the region of the larger of the window's diagonal pixels a, d (above L
        whenever three pixels are); above level L this sums to twice the window area (1/2 per
        window with three pixels above L, 1 with four)."""
        dtype = np.uint8 if num_regions <= 256 and self.s3.size < _EXACT_FLOAT32 else np.int64
        padded = np.zeros((region.shape[0] + 2, region.shape[1] + 2), dtype=dtype)
        padded[1:-1, 1:-1] = region
        owner = np.where(self.a >= self.d, padded[:-1, :-1], padded[1:, 1:])
        if dtype is np.uint8:
            hist = [cv2.calcHist([owner, s], [0, 1], None, [num_regions, NUM_VALUES], [0, num_regions, 0, NUM_VALUES])
                    for s in (self.s3, self.s4)]
            return (hist[0] + hist[1]).astype(np.int64)
        owner = owner.ravel() * NUM_VALUES
        size = num_regions * NUM_VALUES
        return (np.bincount(owner + self.s3.ravel(), minlength=size)
                + np.bincount(owner + self.s4.ravel(), minlength=size)).reshape(num_regions, NUM_VALUES)


def _histogram(values: np.ndarray) -> np.ndarray:
    """Counts of each uint8 value (int64, 256). cv2's float32 counts are exact below 2 ** 24."""
    if values.size >= _EXACT_FLOAT32:
        return np.bincount(values.ravel(), minlength=NUM_VALUES)
    hist = cv2.calcHist([np.ascontiguousarray(values)], [0], None, [NUM_VALUES], [0, NUM_VALUES])
    return hist.reshape(-1).astype(np.int64)


def euler_numbers(u: np.ndarray) -> np.ndarray:
    """Euler number (components - holes, as cv2 sees them) of ``u > L`` for L = 0..255."""
    return _Windows(u).euler_numbers()


# ----------------------------------------------------------------------------- the sweep
def _choe_boxes(x0, y0, x1, y1, width: int, height: int) -> np.ndarray:
    """Choe et al.'s box of a contour whose pixels span x0..x1, y0..y1 (inclusive)."""
    return np.stack([x0, y0, np.minimum(x1 + 1, width - 1), np.minimum(y1 + 1, height - 1)], axis=1)


def level_boxes(u: np.ndarray, levels, modes, *, max_regions: int = MAX_REGIONS,
                stats: dict | None = None) -> dict:
    """Choe et al.'s boxes of ``u > L`` for every ``L`` in ``levels`` (distinct ints in 0..255).

    ``modes``: bools, False = the largest contour, True = every contour. Returns
    ``{mode: (boxes (N, 4) int64, level_index (N,) int64)}``: the boxes of level ``levels[i]`` are
    the rows with ``level_index == i``, the same boxes (as a multiset) as
    ``boxes_from_contours(contours_at(u, L), W, H, mode)``: ``[[0, 0, 0, 0]]`` without contour.
    ``stats`` (optional dict) counts the ``cv2.findContours`` calls (``"findcontours_calls"``).
    """
    modes = tuple(dict.fromkeys(bool(m) for m in modes))
    levels = np.asarray(levels, dtype=np.int64).reshape(-1)
    if u.dtype != np.uint8 or u.ndim != 2:
        raise ValueError(f"level_boxes expects a 2-D uint8 map, got {u.dtype} {u.shape}")
    if len(levels) and (levels.min() < 0 or levels.max() >= NUM_VALUES or len(np.unique(levels)) != len(levels)):
        raise ValueError("level_boxes expects distinct levels in 0..255")
    sweep = _Sweep(u, levels, max_regions)
    out = {}
    for m in sorted(modes, reverse=True):  # every-contour mode first: its tree counts the holes
        parts = sweep.every_contour() if m else sweep.largest_contour()
        out[m] = (np.concatenate([b for b, _ in parts]).astype(np.int64).reshape(-1, 4),
                  np.concatenate([i for _, i in parts]).astype(np.int64))
    if stats is not None:
        stats["findcontours_calls"] = stats.get("findcontours_calls", 0) + len(sweep.contours)
    return out


class _Sweep:
    """The trees of one map and the boxes read off them; cv2 for the levels they cannot settle."""

    def __init__(self, u: np.ndarray, levels: np.ndarray, max_regions: int):
        self.u, self.levels, self.max_regions = u, levels, max_regions
        self.height, self.width = u.shape
        self.contours = {}                              # binary map -> cv2's contours
        self.slot = np.full(NUM_VALUES, -1, dtype=np.int64)
        self.slot[levels] = np.arange(len(levels))
        self.blank = int(u.max()) == 0                  # no foreground at any level
        if self.blank:
            return
        self.scan = _Scan(u)
        self.fg = ComponentTree(self.scan, 8, max_regions)
        self._bg = self._holes = self._windows = None
        if not self.fg.too_large:
            fg = self.fg
            self.boxes = _choe_boxes(fg.x0, fg.y0, fg.x1, fg.y1, self.width, self.height)
            self.empty = np.flatnonzero(fg.count[levels] == 0)

    def _cv2(self, which, multi_contour: bool):
        """cv2's boxes at the levels ``self.levels[which]``; levels with no pixel value between
        them share one binary map, hence one ``cv2.findContours``."""
        parts = []
        if len(which) == 0:
            return parts
        values = np.flatnonzero(np.bincount(self.u.ravel(), minlength=NUM_VALUES))
        for i in which:
            binary_map = int(np.searchsorted(values, self.levels[i], side="right"))
            if binary_map not in self.contours:
                self.contours[binary_map] = contours_at(self.u, int(self.levels[i]))
            boxes = contour_boxes(self.contours[binary_map], self.width, self.height, (multi_contour,))[multi_contour]
            parts.append((boxes, np.full(len(boxes), i)))
        return parts

    def _placeholders(self, which):
        return [(np.zeros((len(which), 4), dtype=np.int64), np.asarray(which, dtype=np.int64))]

    @property
    def windows(self) -> _Windows:
        if self._windows is None:
            self._windows = _Windows(self.u)
        return self._windows

    @property
    def bg(self):
        """The tree of the background ``u <= L`` (4-connected), None if it has too many regions."""
        if self._bg is None:
            tree = ComponentTree(self.scan, 4, self.max_regions, flip=True)
            self._bg = False if tree.too_large else tree
        return self._bg or None

    def holes(self) -> np.ndarray:
        """Number of holes of ``u > L`` for L = 0..255."""
        if self._holes is None:
            if self._bg is not None and self.bg is not None:
                bg = self.bg
                self._holes = np.bincount(254 - bg.level[self._hole(bg)], minlength=NUM_VALUES)
            else:
                self._holes = self.fg.count - self.windows.euler_numbers()
        return self._holes

    def _hole(self, bg) -> np.ndarray:
        """Background components that do not touch the image border: the holes."""
        return (bg.x0 > 0) & (bg.y0 > 0) & (bg.x1 < self.width - 1) & (bg.y1 < self.height - 1)

    def every_contour(self):
        """Every contour's box: the components' and the holes' (hole box grown by one pixel)."""
        if self.blank:
            return self._placeholders(range(len(self.levels)))
        if self.fg.too_large:
            return self._cv2(range(len(self.levels)), True)
        fg, slot = self.fg, self.slot
        keep = slot[fg.level] >= 0
        parts = self._placeholders(self.empty)
        bg = self.bg
        if bg is None:  # holes from the Euler number; their boxes from cv2
            holes = self.holes()
            keep &= holes[fg.level] == 0
            parts += self._cv2(np.flatnonzero(holes[self.levels] > 0).tolist(), True)
        else:
            fg_level = 254 - bg.level
            hole = self._hole(bg) & (slot[fg_level] >= 0)
            parts.append((_choe_boxes(bg.x0[hole] - 1, bg.y0[hole] - 1, bg.x1[hole] + 1, bg.y1[hole] + 1,
                                      self.width, self.height), slot[fg_level[hole]]))
        parts.append((self.boxes[keep], slot[fg.level[keep]]))
        return parts

    def largest_contour(self):
        """The box of the first contour of largest ``cv2.contourArea`` in cv2's order."""
        if self.blank:
            return self._placeholders(range(len(self.levels)))
        if self.fg.too_large:
            return self._cv2(range(len(self.levels)), False)
        fg, slot, n = self.fg, self.slot, self.u.size
        twice_area = fg.reduce(self.windows.twice_areas(fg.region, fg.num_regions), np.add, 0)
        # per level: largest twice-area, then (ties) the last first pixel in raster order
        order = np.lexsort((twice_area, fg.level))
        same_level = np.append(fg.level[order][1:] == fg.level[order][:-1], False)
        ends = np.flatnonzero(~same_level)
        below = np.maximum(ends - 1, 0)
        if np.any(same_level[below] & (ends > 0) & (twice_area[order[below]] == twice_area[order[ends]])):
            order = np.lexsort((twice_area * n + fg.first, fg.level))
        winner = order[ends]
        level = fg.level[winner]
        wanted = slot[level] >= 0
        winner, level = winner[wanted], level[wanted]
        # exact unless the level has holes (a hole adds to its component's contour area): the
        # winner then still wins if its hole-free area beats every other component's
        # bounding-box area (2 (x1 - x0) (y1 - y0) in twice-area units)
        bound = 2 * (fg.x1 - fg.x0) * (fg.y1 - fg.y0)
        bound[winner] = -1
        others = np.full(NUM_VALUES, -1, dtype=np.int64)
        np.maximum.at(others, fg.level, bound)
        certain = (fg.count[level] == 1) | (twice_area[winner] > others[level])
        if np.count_nonzero(~certain) > _FEW_LEVELS or (self._bg is not None and np.any(~certain)):
            certain |= self.holes()[level] == 0
        parts = self._placeholders(self.empty)
        parts.append((self.boxes[winner[certain]], slot[level[certain]]))
        return parts + self._cv2(slot[level[~certain]].tolist(), False)
