"""End-to-end demo on generated "birds": plain CAM, SPOL and SLT-Net, each through its own stage scripts,
each fine-tuning a pretrained backbone with its paper's recipe (scaled), as the papers do.

    python3 demo.py                                   # CPU, 2 cores: the one-time stand-in pretraining, then the demo
    python3 demo.py --pretrained none                 # every stage from random weights (no pretraining)
    python3 demo.py --pretrained PATH                 # your own torchvision-layout state dict of --backbone
    python3 demo.py --device cuda --config configs/demo_gpu.yaml   # one GPU, 224 px preset
    torchrun --nproc_per_node 2 demo.py --device cuda # several GPUs (the stages run under DDP)
    python3 demo.py --data-root dataset/CUB_200_2011  # an existing CUB-200-2011-layout dataset, as is
    python3 demo.py --tiny                            # smoke run (a few images, one step per stage)

What it does, in order (settings in configs/demo.yaml; command-line options of this script win):

0. The backbone (``--backbone``; configs/demo.yaml: ResNet-18): ``--pretrained standin`` (default) is
   ``network.pretrain``'s network trained on generated generic objects (a stand-in for ImageNet;
   none of them is a bird); the ResNet-18 file of configs/demo.yaml ships in ``resource/``, any other
   is made once into ``resource/`` (``--pretrain-dir``) when missing and reused afterwards; its held-out
   accuracy goes into the report. ``imagenet`` / ``none`` / a path are passed to the stages as they are.
1. Generates a fine-grained "birds" dataset in the CUB-200-2011 layout (``utils.data.generate``; the class
   is decided by the head) into ``dataset/demo_birds`` unless ``--data-root`` is given; a folder
   already generated with the same settings is reused.
2. Runs the stage scripts in-process (``main(parse_args(get_args_parser(), argv, stage=...))``, the
   same code as ``python3 <stage>/train.py``; their own tqdm bars and log.jsonl):
   plain CAM = the SLT-Net localizer with SMT, top-K ACAM and VST switched off (train, test), once
   with SLT-Net's low-lr recipe ("CAM, paper's recipe": its Table 5 "new optimization" row) and once
   fine-tuned aggressively (``aggressive_lr`` / ``aggressive_epochs``: part domination);
   SPOL cls -> cam -> seg (train and test of each); SLT-Net localizer(+regressor) -> classifier ->
   final regressor test. Outputs: ``output/demo/runs/<method>/<stage>``.
3. Scores every row with the same evaluator (``utils.evaluation.evaluate.evaluate_scoremaps``, WSOL protocol: the
   whole image resized to the input size, Choe et al.'s box rule, inclusive IoU >= 0.5) on the test
   split, plus two trivial baselines (whole-image box; a centred box whose side fraction is chosen on
   the TRAINING split's boxes) and the upper bound of boxes from the true masks. GT-known / Top-1 Loc
   of a map are taken at the threshold that is best on the TRAINING split's boxes (Choe et al. choose
   it on a held-out fully supervised split; the CUB layout has none, and nothing is ever tuned on the
   test split); the accuracy at the papers' fixed 0.2 is given in the notes and the curve picture.
   MaxBoxAccV2 and PxAP need no threshold. The maps of the training images come from the stages'
   own test steps run on ``--split train`` (SPOL: seg test's ``--threshold-split train``).
4. Writes ``output/demo/results.json`` and ``output/demo/report.md`` with pictures (``demo_birds.report``;
   ``python -m demo_birds.report output/demo/results.json`` re-draws them).

The plain CAM row's classes come from the CAM network's own logits: the localizer test step writes
no predictions, so the demo reads them out (``demo_birds.readout.cam_predictions``) with the stage's
model code and the shared inference loop.

This file is the entry point only; the demo's code is the ``demo_birds`` package beside it
(settings, prepare, plan, readout, scoring, run, report: one job per file). The command line is
parsed before torch or any stage is imported, so ``--help`` is fast.
"""
from __future__ import annotations

from demo_birds.settings import get_args_parser  # light: argparse, yaml


def main(args) -> dict | None:
    """Run the demo (:func:`demo_birds.run.main`): results on rank 0, None on the other ranks."""
    from demo_birds.run import main as run_demo

    return run_demo(args)


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()  # before the heavy imports: --help and bad options answer at once
    from utils.config import report_error
    from utils.errors import DataError

    try:
        main(parsed)  # a stage's main has put a failed test step's previous outputs back already
    except (DataError, FloatingPointError) as exc:  # bad input, a stage's fault: one line, exit 2
        report_error(exc)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        from utils.errors import RunError
        report_error(RunError.at(parsed.output_dir, None, "interrupted (Ctrl-C): with --keep the same command "
                                 "resumes every stage from its checkpoint; without it the demo starts again"))
        raise SystemExit(130) from None
