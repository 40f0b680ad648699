"""utils.evaluation.handoff: predictions.csv round trip, derived flags, line-numbered errors."""
import numpy as np
import pytest
import torch

from utils.errors import DataError
from utils.evaluation.handoff import DEFAULT_PRODUCER, Prediction, read_predictions, write_predictions


def test_round_trip_and_flags(tmp_path):
    path = tmp_path / "cls" / "predictions.csv"
    ids = ["001.A/a.jpg", "001.A/b,c.jpg", "002.B/d.jpg"]
    labels = torch.tensor([0, 0, 1])
    top5 = np.array([[0, 3, 7, 12, 5],     # top-1 right
                     [2, 3, 0, 1, 4],      # label 0 is 3rd: top-5 only
                     [0, 2, 3, 4, 5]])     # label 1 absent
    write_predictions(path, ids, labels, top5)
    text = path.read_text().splitlines()
    assert text[0] == "image_id,label,pred_top5,top1_correct,top5_correct"
    assert text[1] == "001.A/a.jpg,0,0 3 7 12 5,1,1"
    assert text[2] == '"001.A/b,c.jpg",0,2 3 0 1 4,0,1'  # an id with a comma is quoted
    preds = read_predictions(path)
    assert list(preds) == ids
    assert preds["001.A/a.jpg"] == Prediction(0, (0, 3, 7, 12, 5), True, True)
    assert preds["001.A/b,c.jpg"] == Prediction(0, (2, 3, 0, 1, 4), False, True)
    assert preds["002.B/d.jpg"] == Prediction(1, (0, 2, 3, 4, 5), False, False)
    assert not list(tmp_path.glob("cls/.*tmp"))  # no temp file left behind


def test_fewer_than_five_classes(tmp_path):
    path = tmp_path / "p.csv"
    write_predictions(path, ["x.jpg"], [1], [[1, 0]])
    assert read_predictions(path)["x.jpg"] == Prediction(1, (1, 0), True, True)


def test_missing_file_names_the_producing_stage(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=r"nope\.csv: .*spol/cls/test\.py or sltnet/classifier/test\.py"):
        read_predictions(path)
    assert "classification stage" in DEFAULT_PRODUCER
    with pytest.raises(DataError, match="written by the demo stage"):
        read_predictions(path, producer="the demo stage")


@pytest.mark.parametrize("lines, lineno, what", [
    (["image_id,label,top5"], 1, "header"),
    (["image_id,label,pred_top5,top1_correct,top5_correct", "a.jpg,0,0 1 2 3 4,1,1", "b.jpg,0,0 1 2,1"], 3, "5 fields"),
    (["image_id,label,pred_top5,top1_correct,top5_correct", "a.jpg,x,0 1 2 3 4,1,1"], 2, "integers"),
    (["image_id,label,pred_top5,top1_correct,top5_correct", "a.jpg,0,0  1,1,1"], 2, "integers"),
    (["image_id,label,pred_top5,top1_correct,top5_correct", "a.jpg,0,0 1 2 3 4 5,1,1"], 2, "1 to 5"),
    (["image_id,label,pred_top5,top1_correct,top5_correct", "a.jpg,0,0 1,yes,1"], 2, "0 or 1"),
    (["image_id,label,pred_top5,top1_correct,top5_correct", "a.jpg,0,1 0,1,1"], 2, "disagree"),
    (["image_id,label,pred_top5,top1_correct,top5_correct", "a.jpg,0,0 1,1,1", "a.jpg,0,0 1,1,1"], 3, "duplicate"),
    (["image_id,label,pred_top5,top1_correct,top5_correct", ",0,0 1,1,1"], 2, "empty image_id"),
])
def test_malformed_lines_name_file_and_line(tmp_path, lines, lineno, what):
    path = tmp_path / "predictions.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"predictions\.csv:{lineno}: .*{what}"):
        read_predictions(path)


def test_write_rejects_inconsistent_inputs(tmp_path):
    with pytest.raises(ValueError):
        write_predictions(tmp_path / "p.csv", ["a", "b"], [0], [[0, 1, 2, 3, 4]])
    with pytest.raises(ValueError):
        write_predictions(tmp_path / "p.csv", ["a", "a"], [0, 0], [[0], [0]])
    assert not (tmp_path / "p.csv").exists()
