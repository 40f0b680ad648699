"""utils.engine.distributed: single process without a process group; 2-process gloo collectives."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from utils.engine.distributed import (DistContext, all_gather_object, all_reduce_sum, barrier, cleanup,
                               init_distributed, resolve_device)


def test_single_process_never_initialises_a_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext(0, 1, 0, torch.device("cpu"), False)
    assert ctx.is_main and not dist.is_initialized()
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t, ctx) is t and t.tolist() == [1.0, 2.0]
    assert all_gather_object({"a": 1}, ctx) == [{"a": 1}]
    barrier(ctx)
    cleanup(ctx)
    assert not dist.is_initialized()


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", 1) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", 1) == torch.device("cuda:1")
    assert resolve_device("cpu", 1) == torch.device("cpu")


WORKER = """
import json, os, sys
import torch
from utils.engine.distributed import init_distributed, all_reduce_sum, all_gather_object, barrier, cleanup
ctx = init_distributed("auto")
t = torch.tensor([float(ctx.rank + 1), 10.0])
all_reduce_sum(t, ctx)
gathered = all_gather_object({"rank": ctx.rank, "items": list(range(ctx.rank + 1))}, ctx)
barrier(ctx)
with open(os.path.join(sys.argv[1], f"rank{ctx.rank}.json"), "w") as f:
    json.dump({"ctx": [ctx.rank, ctx.world_size, ctx.local_rank, str(ctx.device), ctx.distributed,
                       ctx.is_main], "sum": t.tolist(), "gathered": gathered}, f)
cleanup(ctx)
"""


@pytest.mark.slow
def test_two_process_gloo_collectives(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    root = str(Path(__file__).resolve().parents[3])  # the worker imports utils from the checkout
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, res in enumerate(results):
        assert res["ctx"] == [rank, 2, rank, "cpu", True, rank == 0]
        assert res["sum"] == [3.0, 20.0]
        assert res["gathered"] == [{"rank": 0, "items": [0]}, {"rank": 1, "items": [0, 1]}]
