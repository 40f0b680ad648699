"""Tiny training run used by tests/unit/engine/test_trainer.py (not a stage of either method).

A synthetic dataset with random augmentation (crop, flip, noise from torch, numpy and
random) and a BatchNorm-free model with dropout, trained by utils.engine.trainer.Trainer.

    python3 tests/toy_train.py --output-dir /tmp/toy --device cpu --workers 0
    OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/toy_train.py --output-dir /tmp/toy2 --device cpu --batch-size 2

``--kill-after-step K`` sends SIGKILL to the process itself when step K + 1 starts
(K optimizer steps done), to test resuming. ``--trace-file F`` appends the index of
every sample loaded (from any worker) to F. ``--pause-after-step K --pause-file F`` creates F
when step K + 1 starts and then waits (for the lock test). ``--nan-after-step K`` makes the
loss NaN from step K + 1 on. Framed and run like a stage script (``utils.engine.stage.start_run``,
``utils.engine.rundir.run_cli``).
"""
import argparse
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

if __name__ == "__main__":  # run by its path (python3 tests/toy_train.py, torchrun): the repository root first
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.engine import rundir
from utils.config import add_common_args
from utils.engine.rundir import run_cli
from utils.engine.stage import save_args, start_run
from utils.engine.trainer import Trainer, build_optimizer


class ToyDataset(Dataset):
    def __init__(self, n: int, classes: int = 3, size: int = 12, trace_file: str | None = None):
        g = torch.Generator().manual_seed(1234)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.trace_file = trace_file

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.trace_file:
            with open(self.trace_file, "a") as f:
                f.write(f"{i}\n")
        y, x = torch.randint(0, 3, (2,)).tolist()
        img = self.images[i, :, y:y + 10, x:x + 10]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        img = img + 0.05 * torch.randn_like(img) + float(np.random.rand()) * 0.1 + random.random() * 0.1
        return {"image": img, "label": int(self.labels[i]), "index": i}


class ToyNet(nn.Module):
    def __init__(self, dropout: float, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = F.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(self.drop(x))


# the fault hooks below do not change what a run computes (a resumed run may drop them)
rundir.NOT_IDENTITY |= {"kill_after_step", "trace_file", "pause_after_step", "pause_file"}


def get_args_parser():
    parser = argparse.ArgumentParser("toy training run for the engine tests")
    add_common_args(parser)
    parser.set_defaults(batch_size=2, epochs=2, workers=0, device="cpu", log_every=1)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--dropout", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--kill-after-step", type=int, default=-1)
    parser.add_argument("--trace-file", type=str, default=None)
    parser.add_argument("--pause-after-step", type=int, default=-1)
    parser.add_argument("--pause-file", type=str, default=None)
    parser.add_argument("--nan-after-step", type=int, default=-1)
    return parser


def main(args):
    torch.set_num_threads(1)
    with start_run(args) as ctx:
        save_args(args, ctx)
        train(args, ctx)


def train(args, ctx):
    model = ToyNet(args.dropout)
    optimizer = build_optimizer(model.parameters(), args)
    trainer = Trainer(model, optimizer, args, ctx, lr_lambda=lambda step: 1.0 / (1.0 + 0.1 * step),
                      stage_name="toy")
    calls = {"n": 0}

    def loss_fn(net, batch):
        calls["n"] += 1
        if calls["n"] == args.kill_after_step + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if calls["n"] == args.pause_after_step + 1:
            Path(args.pause_file).write_text(str(os.getpid()))
            time.sleep(120)
        logits = net(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        if 0 <= args.nan_after_step < calls["n"]:
            loss = loss * float("nan")
        return loss, {"ce": loss.item(), "acc": (logits.argmax(1) == batch["label"]).float().mean().item()}

    trainer.fit(ToyDataset(args.samples, trace_file=args.trace_file), loss_fn)


if __name__ == "__main__":
    run_cli(main, get_args_parser, "toy")
