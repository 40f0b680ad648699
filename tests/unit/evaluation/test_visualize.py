"""utils.evaluation.visualize.stage_picture on hand-made images, boxes and score maps: layout (224-pixel tiles
below a title and a legend row), box colours at their edges, and the score map overlay."""
import numpy as np
import pytest

from utils.evaluation.visualize import BLUE, GREEN, RED, TILE, TITLE_H, box_grid, picture_layout, stage_picture


def _images(n, size=64, value=128):
    return [np.full((size, size, 3), value, dtype=np.uint8) for _ in range(n)]


def test_picture_size_tiles_and_title_row():
    n, cols = 7, 4
    pic = stage_picture(_images(n), [[] for _ in range(n)], ids=[f"img_{i}.jpg" for i in range(n)],
                        title="SPOL seg test", cols=cols)
    (h, w), origins = picture_layout(n, cols)
    assert pic.shape == (h, w, 3) and pic.dtype == np.uint8
    assert len(origins) == n and w >= cols * TILE and h >= 2 * TILE + TITLE_H
    for y, x in origins:   # each 64-pixel grey image fills a whole 224-pixel tile
        assert y >= TITLE_H
        assert (pic[y:y + TILE, x:x + TILE] == 128).all()
    assert (pic[:TITLE_H] < 100).any()        # the title's text is drawn in the title row
    blank = stage_picture(_images(n), [[] for _ in range(n)], ids=[""] * n, cols=cols)
    assert (blank[:TITLE_H] == 255).all()     # and nothing is there without a title


def test_box_edges_are_green_and_red_and_extra_box_blue():
    gt, pred, extra = np.array([[4, 4, 20, 20]]), np.array([36, 36, 60, 60]), np.array([24, 2, 60, 30])
    pic = stage_picture(_images(1), [[(gt, GREEN), (extra, BLUE), (pred, RED)]], ids=["a.jpg"])
    (y, x), s = picture_layout(1)[1][0], TILE / 64
    mid = (4 + 20) / 2 * s    # middle of the GT box's left edge, at the scaled coordinates
    assert tuple(pic[y + round(mid), x + round(4 * s)]) == GREEN
    assert tuple(pic[y + round(20 * s), x + round(mid)]) == GREEN
    assert tuple(pic[y + round(48 * s), x + round(60 * s)]) == RED
    assert tuple(pic[y + round(36 * s), x + round(48 * s)]) == RED
    assert tuple(pic[y + round(16 * s), x + round(24 * s)]) == BLUE
    assert tuple(pic[y + round(30 * s), x + round(12 * s)]) == (128, 128, 128)   # away from every box
    # the legend row names the three colours: each colour appears above the first tile
    head = pic[:y].reshape(-1, 3)
    for colour in (GREEN, RED, BLUE):
        assert (head == colour).all(axis=1).any()
    # the "no foreground" placeholder box is not drawn
    none = stage_picture(_images(1), [[(np.zeros(4), RED)]], ids=["a.jpg"], legend=[])
    assert not (none[y:y + TILE, x:x + TILE] == RED).all(axis=2).any()


def test_overlay_changes_pixels_where_the_map_is_high_only():
    scoremap = np.zeros((16, 16))
    scoremap[:8, :8] = 1.0     # top-left quarter high, rest zero
    pic = stage_picture(_images(1), [[]], scoremaps=[scoremap], ids=["a.jpg"])
    plain = stage_picture(_images(1), [[]], ids=["a.jpg"])
    (y, x) = picture_layout(1)[1][0]
    tile, ref = pic[y:y + TILE, x:x + TILE].astype(int), plain[y:y + TILE, x:x + TILE].astype(int)
    q = TILE // 4
    assert np.abs(tile[:q, :q] - ref[:q, :q]).sum(axis=2).min() > 60     # high map: coloured
    assert (tile[-q:, -q:] == ref[-q:, -q:]).all()                         # zero map: untouched
    assert tile[q // 2, q // 2, 0] > tile[q // 2, q // 2, 2]               # jet's top is red


def test_upsampled_tiles_and_box_grid_keeps_its_call():
    pic = box_grid(_images(8, size=32), [[(np.array([2, 2, 30, 30]), GREEN)]] * 8)
    (h, w), origins = picture_layout(8, 4)
    assert pic.shape == (h, w, 3)
    y, x = origins[0]
    assert tuple(pic[y + TILE // 2, x + round(2 * TILE / 32)]) == GREEN   # boxes scale with the image
    with pytest.raises(ValueError, match="3 ids"):
        stage_picture(_images(2), [[], []], ids=["a", "b", "c"])


def test_picture_draws_with_one_opencv_thread_and_restores_the_count(opencv_thread_spy):
    """An upsampling cv2.resize runs in parallel and starts OpenCV's worker pool, after which a forked
    process (the evaluator's pool) can hang in cv2.setNumThreads: the picture is drawn with one thread."""
    import cv2

    import utils.evaluation.visualize as vis

    seen = opencv_thread_spy(vis, "resize")
    stage_picture(_images(2), [[], []], scoremaps=[np.ones((8, 8)), None], ids=["a", "b"])
    assert cv2.getNumThreads() == 2
    assert seen and set(seen) == {1}
