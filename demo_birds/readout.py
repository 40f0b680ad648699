"""The plain CAM row's classes: the localizer test step writes no predictions, so the demo reads the
CAM network's own GAP logits out with the stage's model code and the shared inference loop."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from utils.config import parse_args
from utils.data.layouts import num_classes


def cam_predictions(argv: list, records, out_path: Path) -> Path:
    """predictions.csv of the plain CAM network (its own GAP logits), with the localizer test's
    options (``argv``, its --config included: device, AMP, batch size, workers), what it takes from its
    training run (``sltnet.options.LOCALIZER_TEST_INHERITS``) and model code (``sltnet.model.build_branch``
    + ``load_stage_weights``), through ``utils.engine.inference.run_inference`` in this one process (the
    demo calls it on rank 0 only, so the whole split is this process's shard)."""
    from sltnet.localizer import test as localizer_test
    from sltnet.model import build_branch
    from sltnet.options import LOCALIZER_TEST_INHERITS, PRODUCER, resolve_defaults
    from utils.engine.checkpoint import load_stage_weights
    from utils.engine.classify import top_k_step
    from utils.data.dataset import WSOLDataset
    from utils.engine.distributed import DistContext, resolve_device
    from utils.engine.inference import run_inference
    from utils.evaluation.handoff import write_predictions
    from utils.engine.stage import inherit_training_options
    from utils.data.transforms import build_transform

    args = resolve_defaults(parse_args(localizer_test.get_args_parser(), [str(a) for a in argv],
                                       stage="localizer_test"), "localizer")
    # the network as trained (backbone, CAM feature, output stride...), as the localizer test step
    # reads it; the weights would load into another stride without a word
    inherit_training_options(args, LOCALIZER_TEST_INHERITS)
    ctx = DistContext(device=resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0"))))
    branch = build_branch(args, num_classes(records), pretrained="none")
    load_stage_weights(branch, Path(args.localizer_dir) / "model.pth", PRODUCER["localizer"])
    model = branch.localizer.to(ctx.device)
    dataset = WSOLDataset(records, build_transform("resize", resize=args.input_size))
    k = min(5, num_classes(records))
    results = run_inference(model, dataset, lambda m, batch: top_k_step(m, batch, k=k), ctx,
                            batch_size=args.batch_size, workers=args.workers, amp=args.amp,
                            desc="CAM class read-out")
    top = torch.empty(len(records), k, dtype=torch.long)
    for index, best in results:  # placed by dataset index: the file's rows follow ``records``
        top[index.cpu()] = best.cpu()
    write_predictions(out_path, [r.image_id for r in records], [r.label for r in records], top)
    return out_path
