"""``python -m utils.evaluation``: the evaluator of saved score maps (:mod:`utils.evaluation.evaluate`,
also ``python -m utils.evaluation.evaluate``). ``--help`` and bad options are answered before the
heavy imports. Specification: [docs/evaluation.md](../../docs/evaluation.md)."""
from utils.options import evaluate_parser

if __name__ == "__main__":
    ARGS = evaluate_parser().parse_args()

    from utils.evaluation.evaluate import cli

    cli(args=ARGS)
