"""utils.engine.inference.run_inference: shards, order, the host consumer, errors, modes, 2-process gloo;
utils.engine.device."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from utils.engine.device import move_to_device
from utils.engine.distributed import DistContext
from utils.engine.inference import gather_lists, run_inference


class Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(x) * self.w


def data(n):
    return [{"image": torch.full((3,), float(i)), "index": i} for i in range(n)]


@pytest.mark.parametrize("workers", [0, 1])
def test_every_sample_on_exactly_one_rank_in_order(workers):
    per_rank = [run_inference(torch.nn.Identity(), data(7), lambda m, b: b["index"].tolist(),
                              DistContext(rank=r, world_size=3), batch_size=2, workers=workers) for r in range(3)]
    assert [[i for batch in part for i in batch] for part in per_rank] == [[0, 3, 6], [1, 4], [2, 5]]
    assert gather_lists([1, 2], DistContext()) == [1, 2]


def test_consumer_runs_off_the_calling_thread_in_batch_order_and_its_results_are_returned():
    model = Scale().train()
    seen, threads = [], set()

    def step(m, batch):
        assert torch.is_inference_mode_enabled() and not m.training
        return batch["index"], m(batch["image"])   # dropout off in eval: exactly 2 x

    def consume(result):
        index, out = result
        threads.add(threading.get_ident())
        seen.extend(index.tolist())
        assert torch.equal(out, 2 * index[:, None].float().expand(-1, 3))
        return out[:, 0].tolist()

    results = run_inference(model, data(9), step, DistContext(), batch_size=2, consume=consume)
    assert seen == list(range(9))
    assert [v for r in results for v in r] == [2.0 * i for i in range(9)]
    assert threading.get_ident() not in threads and len(threads) == 1
    assert model.training  # the mode is restored


@pytest.mark.parametrize("where", ["loader", "step", "consumer"])
def test_an_error_anywhere_reaches_the_caller_and_stops_the_loop(where):
    class Bad(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            if where == "loader" and i == 5:
                raise ValueError("bad image 5")
            return {"image": torch.zeros(1), "index": i}

    consumed = []

    def step(m, batch):
        if where == "step" and 5 in batch["index"].tolist():
            raise ValueError("bad batch")
        return batch["index"]

    def consume(index):
        if where == "consumer" and 5 in index.tolist():
            raise ValueError("bad write")
        consumed.append(index.tolist())

    with pytest.raises(ValueError, match="bad"):
        run_inference(torch.nn.Identity(), Bad(), step, DistContext(), batch_size=2, consume=consume)
    assert len(consumed) < 20  # stopped early: not every batch was consumed
    assert [0, 1] in consumed  # a batch handed to the consumer before the error is finished
    assert [2, 3] in consumed or where == "loader"  # (the loader fails while fetching one batch ahead)


def test_autocast_bf16_on_cpu_and_bad_amp_name():
    lin = torch.nn.Linear(4, 4)
    out = run_inference(lin, data(2), lambda m, b: m(b["image"].repeat(1, 2)[:, :4]).dtype, DistContext(),
                        batch_size=2, amp="bf16")
    assert out == [torch.bfloat16]
    with pytest.raises(ValueError, match="--amp"):
        run_inference(lin, data(2), lambda m, b: None, DistContext(), batch_size=2, amp="fp8")


def test_move_to_device_keeps_structure():
    moved = move_to_device({"a": [torch.ones(1)], "b": (torch.zeros(1), 3), "c": "x"}, torch.device("cpu"))
    assert moved["c"] == "x" and isinstance(moved["b"], tuple) and moved["b"][1] == 3


def test_last_stats_account_for_the_consumer():
    import time

    from utils.engine.inference import last_stats

    run_inference(torch.nn.Identity(), data(4), lambda m, b: b["index"], DistContext(), batch_size=2,
                  consume=lambda index: time.sleep(0.05))
    stats = last_stats()
    assert stats["batches"] == 2 and stats["consume_s"] >= 0.1
    assert set(stats) >= {"load_wait_s", "step_s", "consume_wait_s"}


WORKER = """
import json, sys
import torch
from utils.engine.distributed import cleanup, init_distributed
from utils.engine.inference import gather_lists, run_inference
ctx = init_distributed("cpu")
data = [{"image": torch.full((2,), float(i)), "index": i} for i in range(7)]
parts = run_inference(torch.nn.Identity(), data, lambda m, b: (b["index"], m(b["image"])[:, 0] * 10), ctx,
                      batch_size=2, consume=lambda r: list(zip(r[0].tolist(), r[1].tolist())))
items = gather_lists([it for part in parts for it in part], ctx)
if ctx.is_main:
    json.dump(items, open(sys.argv[1], "w"))
cleanup(ctx)
"""


@pytest.mark.slow
def test_two_process_gloo_run_gathers_every_image_once_on_rank_0(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "items.json"
    script.write_text(WORKER)
    root = str(Path(__file__).resolve().parents[3])  # the worker imports utils from the checkout
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = json.loads(out.read_text())
    assert [i for i, _ in items] == [0, 2, 4, 6, 1, 3, 5]  # rank 0's shard, then rank 1's
    assert sorted(items) == [[i, 10.0 * i] for i in range(7)]


def test_uint8_images_are_normalised_on_the_batch_bit_for_bit_as_per_image(tmp_path):
    """build_transform(normalize=False) + the loop's batch normalisation == the per-image transform
    (same float ops, same order), on real JPEG files and with a centre crop; other fields untouched."""
    from PIL import Image

    import numpy as np

    from utils.data.dataset import WSOLDataset
    from utils.data.layouts import Record
    from utils.data.transforms import build_transform, normalize_images

    g = torch.Generator().manual_seed(0)
    records = []
    for i, (h, w) in enumerate([(37, 50), (64, 41), (29, 29), (80, 60), (45, 52)]):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()).save(path)
        records.append(Record(image_id=f"{i}.jpg", path=path, label=i % 2, boxes=np.zeros((0, 4), np.float32),
                              size=(w, h), mask_path=None))
    for kind, crop in (("resize", None), ("center", 24)):
        per_image = WSOLDataset(records, build_transform(kind, resize=32, crop=crop))
        raw = WSOLDataset(records, build_transform(kind, resize=32, crop=crop, normalize=False))
        assert raw[0]["image"].dtype == torch.uint8
        expected = torch.stack([per_image[i]["image"] for i in range(len(records))])
        assert torch.equal(normalize_images(torch.stack([raw[i]["image"] for i in range(len(records))])), expected)
        seen = run_inference(torch.nn.Identity(), raw, lambda m, b: (b["image"], b["label"]), DistContext(),
                             batch_size=2)
        assert all(images.dtype == torch.float32 for images, _ in seen)
        assert torch.equal(torch.cat([images for images, _ in seen]), expected)
        assert torch.cat([labels for _, labels in seen]).tolist() == [r.label for r in records]
    with pytest.raises(TypeError):
        normalize_images(expected)
