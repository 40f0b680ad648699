"""``python -m localize --run RUN --images DIR --out DIR``: see ``localize/__init__.py``. The command line
is parsed before torch loads, so ``--help`` and a bad option are answered at once."""
from localize.options import get_args_parser

if __name__ == "__main__":
    ARGS = get_args_parser().parse_args()

    from localize.cli import cli

    cli(ARGS)
