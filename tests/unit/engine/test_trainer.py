"""utils.engine.trainer (+ utils.data.samplers, utils.engine.seeding): exact step-level resume after SIGKILL, DDP = one process,
samplers, AMP."""
import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler

from utils.engine.checkpoint import load_checkpoint
from utils.engine.distributed import DistContext
from utils.engine.trainer import Trainer
from utils.data.samplers import ResumableSampler, ShardSampler, epoch_order
from utils.engine.seeding import PerSampleSeeded

TOY = Path(__file__).resolve().parents[2] / "toy_train.py"
_spec = importlib.util.spec_from_file_location("toy_train", TOY)
toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toy)


def run_toy(out, *extra, nproc=1, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    proc = subprocess.run(launcher + [str(TOY), "--output-dir", str(out), "--device", "cpu", *extra],
                          env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(path):
    return load_checkpoint(path)


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_to_identical_weights(tmp_path):
    common = ["--deterministic", "--epochs", "2", "--samples", "10", "--batch-size", "2",
              "--save-every-steps", "2", "--dropout", "0.5"]
    run_toy(tmp_path / "full", *common, "--workers", "0")
    # killed when step 8 starts: 7 steps done, last checkpoint at global step 6 = epoch 1 step 1,
    # so step 7 is trained twice (before the kill and after the resume); other worker count
    killed = run_toy(tmp_path / "cut", *common, "--workers", "1", "--kill-after-step", "7", check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "model.pth").exists()
    ck = load_checkpoint(tmp_path / "cut" / "checkpoint.pth")
    assert (ck["epoch"], ck["step"], ck["global_step"]) == (1, 1, 6)
    assert isinstance(ck["args"], dict) and ck["args"]["save_every_steps"] == 2
    trace = tmp_path / "trace.txt"
    resumed = run_toy(tmp_path / "cut", *common, "--workers", "0", "--trace-file", str(trace))
    assert "resumed toy from" in resumed.stdout
    # steps after the checkpoint were logged before the kill and again after: kept once
    cut_log = read_log(tmp_path / "cut" / "log.jsonl")
    assert [r["global_step"] for r in cut_log if r.get("event") != "epoch_end"] == list(range(1, 11))
    # the 2 samples of epoch 1's first step are skipped without being loaded
    assert len(trace.read_text().split()) == 8
    full, cut = weights(tmp_path / "full" / "model.pth"), weights(tmp_path / "cut" / "model.pth")
    assert full.keys() == cut.keys()
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    final_full = load_checkpoint(tmp_path / "full" / "checkpoint.pth")
    final_cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pth")
    assert final_cut["global_step"] == final_full["global_step"] == 10
    for group_full, group_cut in zip(final_full["optimizer"]["state"].values(),
                                     final_cut["optimizer"]["state"].values()):
        assert torch.equal(group_full["momentum_buffer"], group_cut["momentum_buffer"])
    assert final_cut["scheduler"]["last_epoch"] == 10
    # a finished run started again trains nothing and keeps the same weights
    run_toy(tmp_path / "full", *common, "--workers", "0")
    again = weights(tmp_path / "full" / "model.pth")
    assert all(torch.equal(again[k], full[k]) for k in full)
    # the log has a line per step and per epoch end
    log = read_log(tmp_path / "full" / "log.jsonl")
    assert [r["global_step"] for r in log if r.get("event") != "epoch_end"] == list(range(1, 11))
    ends = [r for r in log if r.get("event") == "epoch_end"]
    assert [r["epoch"] for r in ends] == [0, 1]
    assert {"loss", "ce", "acc", "lr", "images_per_s"} <= set(ends[0])
    assert log[0]["lr"] == pytest.approx(0.5) and log[1]["lr"] == pytest.approx(0.5 / 1.1)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path):
    common = ["--samples", "8", "--epochs", "1", "--dropout", "0", "--max-steps-per-epoch", "2",
              "--log-every", "1", "--workers", "0"]
    run_toy(tmp_path / "one", *common, "--batch-size", "4")
    run_toy(tmp_path / "two", *common, "--batch-size", "2", nproc=2)
    one, two = read_log(tmp_path / "one" / "log.jsonl"), read_log(tmp_path / "two" / "log.jsonl")
    assert len(one) == len(two) == 3  # two steps, one epoch end (rank 0 only writes)
    for a, b in zip(one, two):
        assert a["global_step"] == b["global_step"]
        assert abs(a["loss"] - b["loss"]) < 1e-5
    w1, w2 = weights(tmp_path / "one" / "model.pth"), weights(tmp_path / "two" / "model.pth")
    torch.manual_seed(0)  # the toy script seeds 0 before building its model
    start = toy.ToyNet(0.0).state_dict()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-6), k
        assert not torch.equal(w1[k], start[k])  # it did train


def test_epoch_order_matches_torch_samplers():
    for world in (2, 3):
        for rank in range(world):
            ds = DistributedSampler(list(range(7)), num_replicas=world, rank=rank, shuffle=True, seed=5)
            ds.set_epoch(3)
            assert epoch_order(7, epoch=3, seed=5, rank=rank, world_size=world) == list(ds)
    g = torch.Generator()
    g.manual_seed(5 + 3)
    assert epoch_order(7, epoch=3, seed=5) == list(RandomSampler(range(7), generator=g))
    assert epoch_order(5, epoch=0, seed=0, shuffle=False) == [0, 1, 2, 3, 4]
    assert epoch_order(9, epoch=1, seed=2) != epoch_order(9, epoch=2, seed=2)
    # a global batch holds the same samples on one process and on two
    one = epoch_order(8, epoch=0, seed=1)
    two = [epoch_order(8, epoch=0, seed=1, rank=r, world_size=2) for r in range(2)]
    assert sorted(two[0][:2] + two[1][:2]) == sorted(one[:4])


def test_resumable_and_shard_samplers():
    full = epoch_order(9, epoch=4, seed=0)
    assert list(ResumableSampler(9, epoch=4, seed=0, start=4)) == [(4, i) for i in full[4:]]
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]


class _Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.rand(3) + i


def test_per_sample_seeding_is_independent_of_global_state():
    ds = PerSampleSeeded(_Noisy(), seed=7)
    torch.manual_seed(1)
    a = ds[(0, 2)]
    torch.manual_seed(99)
    state = torch.get_rng_state()
    b = ds[(0, 2)]
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
    assert not torch.equal(ds[(1, 2)], a)  # another epoch, another augmentation


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_runs_on_cpu_and_checks_stage(tmp_path, amp):
    torch.manual_seed(0)
    args = argparse.Namespace(output_dir=str(tmp_path), batch_size=2, epochs=1, workers=0, seed=0, amp=amp,
                              deterministic=False, resume=True, log_every=1, save_every_steps=0,
                              max_steps_per_epoch=2)
    model = toy.ToyNet(0.0)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), args, DistContext(), stage_name="a")
    assert trainer.scaler.is_enabled() == (amp == "fp16")

    def loss_fn(net, batch):
        loss = torch.nn.functional.cross_entropy(net(batch["image"]).float(), batch["label"])
        return loss, {}

    trainer.fit(toy.ToyDataset(6), loss_fn)
    assert len(read_log(tmp_path / "log.jsonl")) == 3
    other = Trainer(toy.ToyNet(0.0), torch.optim.SGD(model.parameters(), lr=0.1), args, DistContext(),
                    stage_name="b")
    with pytest.raises(ValueError, match="checkpoint of stage 'a'"):
        other.fit(toy.ToyDataset(6), loss_fn)


def _toy_args(out, **kw):
    base = dict(output_dir=str(out), batch_size=4, epochs=1, workers=0, seed=0, amp="off",
                deterministic=False, resume=True, log_every=0, save_every_steps=0, max_steps_per_epoch=0)
    base.update(kw)
    return argparse.Namespace(**base)


def test_resume_with_another_batch_size_maps_the_position(tmp_path):
    model = toy.ToyNet(0.0)
    first = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), _toy_args(tmp_path), DistContext(),
                    stage_name="t")
    first.epoch, first.step_in_epoch, first.global_step = 0, 3, 3  # 12 samples of epoch 0 done
    first.save()
    for batch, step in ((2, 6), (6, 2), (12, 1)):
        m = toy.ToyNet(0.0)
        t = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), _toy_args(tmp_path, batch_size=batch),
                    DistContext(), stage_name="t")
        assert t.resume() and (t.epoch, t.step_in_epoch, t.global_step) == (0, step, 3)
    m = toy.ToyNet(0.0)
    t = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.1), _toy_args(tmp_path, batch_size=5), DistContext(),
                stage_name="t")
    with pytest.raises(ValueError, match="needs a multiple of 5"):
        t.resume()
    t.args.resume = False
    assert not t.resume()
