"""Command-line options with YAML configuration files (timm-style), importable without torch: a
stage script's parser pieces (``stage_parser``, ``add_common_args``, ``OptionParser``'s one-line
errors), ``parse_args`` (parser defaults < YAML top level < YAML ``<stage>:`` section < command
line), ``parse_early`` (a script's parsing before its heavy imports), ``write_config`` (the options
back as a config file) and ``report_error`` (the one ``error:`` line)."""
from __future__ import annotations

import argparse
import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from utils.errors import DataError
from utils.paths import CONFIG_DIR, REPO_ROOT

# The stage names the stage scripts pass to parse_args ("<stage>_<train|test>").
STAGES = tuple(f"{stage}_{step}" for stage in ("cls", "cam", "seg", "localizer", "regressor", "classifier")
               for step in ("train", "test"))

# Sections of other scripts that read the same files (demo.py's own settings).
SCRIPT_SECTIONS = ("demo", "demo_full", "demo_tiny")

_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)
_SKIP_ACTIONS = (argparse._HelpAction, argparse._VersionAction)


# Common options that only a training run reads (utils.engine.trainer.Trainer): test steps leave them out.
# A config file's top-level key naming one of them is skipped by a test step (it is meant for the
# training stages), not refused as unknown.
TRAIN_ONLY = ("epochs", "resume", "overwrite", "log_every", "save_every_steps", "max_steps_per_epoch")


def is_training(args) -> bool:
    """Whether ``args`` are a training step's: only a training step's parser has ``TRAIN_ONLY``."""
    return hasattr(args, "overwrite")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with every option's default: ``(default: X)`` is added to the help text unless the
    text already says what the default is (it mentions "default") or the option is required."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default is not argparse.SUPPRESS \
                and not action.required:
            action = copy.copy(action)  # argparse prints no help line (so no default) for an empty help
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings
                or action.required):
            return text
        return (text + " " if text else "") + "(default: %(default)s)"


class OptionParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (an unknown option, a value out of its range, an invalid
    choice, a missing required option) are the project's one line, ``error: argument --epochs: must
    be an integer >= 1, got '0' (see spol/cls/train.py --help)``, and exit status 2: no usage block. Every entry point's
    parser is one (the stage scripts', ``utils.evaluation.evaluate``, ``utils.data.generate``, ``network.pretrain``,
    ``demo.py``)."""

    def error(self, message: str):
        report_error(DataError(f"{message} (see {self.prog} --help)"))
        raise SystemExit(2)


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a stage script: ``prog`` (the script, e.g. ``spol/cam/train.py``) starts the
    usage line, the description follows it, defaults are shown (``HelpFormatter``); its errors are
    one line (``OptionParser``). Options are spelled in full (no prefix of one is taken for it), as
    in a config file."""
    return OptionParser(prog=prog, description=description, formatter_class=HelpFormatter, allow_abbrev=False)


def add_common_args(parser: argparse.ArgumentParser, *, train: bool = True) -> argparse.ArgumentParser:
    """Add the options every training / testing stage shares (``train=False``: without ``TRAIN_ONLY``).

    Stage scripts change defaults with ``parser.set_defaults(batch_size=..., epochs=...)``
    and derive ``output_dir`` / ``data_root`` when left as ``None``.
    """
    from utils.ranges import non_negative_int, positive_int

    g = parser.add_argument_group("common")
    g.add_argument("--output-dir", type=str, default=None,
                   help="stage output folder (default: output/<method>/<dataset>/<stage> under the repository)")
    g.add_argument("--data-root", type=str, default=None,
                   help="dataset root folder (default chosen by the stage from --layout, under dataset/)")
    g.add_argument("--layout", type=str, default="cub", choices=["cub", "ilsvrc", "metadata"],
                   help="dataset layout: CUB-200-2011 files, ILSVRC folders, or wsolevaluation metadata")
    g.add_argument("--device", type=str, default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto = cuda:LOCAL_RANK when CUDA is available, else cpu")
    g.add_argument("--amp", type=str, default="off", choices=["off", "bf16", "fp16"],
                   help="mixed precision (torch.autocast); fp16 also enables a GradScaler")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                   help="deterministic algorithms (slower); with the same seed a run is repeatable")
    g.add_argument("--workers", type=non_negative_int, default=2, help="data loader worker processes per GPU")
    g.add_argument("--batch-size", type=positive_int, default=32, help="images per GPU (per process)")
    if train:
        g.add_argument("--epochs", type=positive_int, default=1)
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=False,
                   help="also log to <output-dir>/tensorboard/ (training: the log.jsonl scalars; test: the "
                        "metrics and grid.png); needs the tensorboard package")
    g.add_argument("--pretrained", type=str, default="imagenet", metavar="imagenet|none|PATH",
                   help="backbone initialisation: ImageNet weights from resource/, random (none), or "
                        "PATH = a state dict in torchvision's layout for the backbone (checked strictly)"
                   if train else "not read by a test step (its weights come from --checkpoint / the training "
                                 "run); accepted so that one command line serves every stage")
    if not train:
        return parser
    g.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from output_dir/checkpoint.pth when it exists")
    g.add_argument("--overwrite", action="store_true",
                   help="move a previous run in --output-dir aside (to <output-dir>.old-<time>, never deleted) "
                        "and start afresh; without it a folder holding another run is refused")
    g.add_argument("--log-every", type=non_negative_int, default=10, help="steps between log.jsonl lines")
    g.add_argument("--save-every-steps", type=non_negative_int, default=0,
                   help="also checkpoint every N optimizer steps (0: only at epoch ends)")
    g.add_argument("--max-steps-per-epoch", type=non_negative_int, default=0,
                   help="cap the steps of each epoch (0: no cap; for smoke runs)")
    return parser


def _find_config(path_text: str) -> Path:
    """A relative config path is tried against the cwd, then the repository root, then configs/."""
    path = Path(path_text).expanduser()
    candidates = [path] if path.is_absolute() else [path, REPO_ROOT / path, CONFIG_DIR / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise DataError.at(path, None, "config file not found (also looked under "
                       f"{REPO_ROOT} and {CONFIG_DIR})")


def read_config_text(path: Path) -> str:
    """The text of a config file; not UTF-8 (or unreadable) is one ``DataError`` naming the file
    and the line of the first bad byte."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError.at(path, None, f"unreadable config file ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError.at(path, line, f"not a UTF-8 text file (byte 0x{data[exc.start]:02x}): save it as "
                           "UTF-8") from None


def _duplicate_keys(node, path: Path, top: bool = True, seen_nodes: set | None = None) -> None:
    """A key given twice in one mapping (YAML would keep the last one silently) is an error naming the
    file and the line of the second; at the top level a repeated stage section is named as such.
    Merge keys (``<<: *anchor``) are YAML's own and may repeat."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias of a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in first:
                    what = "section" if top and isinstance(value_node, yaml.MappingNode) else "key"
                    raise DataError.at(path, line, f"{what} '{key}' appears twice (first on line {first[key]}): "
                                       "YAML would keep the last one only; merge them into one")
                first[key] = line
            _duplicate_keys(value_node, path, False, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _duplicate_keys(item, path, False, seen_nodes)


def load_yaml_with_lines(path: Path) -> tuple[dict, dict]:
    """Read a config file: (mapping, lines) where lines maps key tuples (``(key,)``, ``(section, key)``)
    to 1-based line numbers. Not UTF-8, invalid YAML, a key or section given twice, or a document that
    is not a mapping: one ``DataError`` naming the file and the line."""
    path = Path(path)
    text = read_config_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _duplicate_keys(node, path)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise DataError.at(path, line, f"invalid YAML: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise DataError.at(path, 1, "a config file must be a YAML mapping of option names to values")
    lines: dict[tuple, int] = {}
    for key_node, value_node in node.value:
        lines[(key_node.value,)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub_key, _ in value_node.value:
                lines[(key_node.value, sub_key.value)] = sub_key.start_mark.line + 1
    return data, lines


class _AnchorKeepingLoader(yaml.SafeLoader):
    """A SafeLoader that keeps the document's anchors after composing it."""

    def compose_document(self):
        self.get_event()  # DocumentStartEvent
        node = self.compose_node(None, None)
        self.get_event()  # DocumentEndEvent
        self.kept_anchors, self.anchors = dict(self.anchors), {}
        return node


def _anchored_sections(path: Path) -> set[str]:
    """Top-level keys whose mapping value carries a YAML anchor (``name: &name``)."""
    loader = _AnchorKeepingLoader(read_config_text(path))
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    if not isinstance(root, yaml.MappingNode):
        return set()
    anchored = {id(node) for node in loader.kept_anchors.values()}
    return {str(k.value) for k, v in root.value if id(v) in anchored}


def _checked(parser: argparse.ArgumentParser, action: argparse.Action, value: Any, path: Path,
             line: int | None, key: str) -> Any:
    """A YAML value as the option's destination value: argparse itself converts it (the option's
    ``type``) and checks its ``choices``, as for the same text on the command line. Flags take YAML
    booleans (the destination's value, also for ``--no-x``), options with ``nargs`` YAML lists."""
    def fail(msg: str):
        raise DataError.at(path, line, f"option '{key}': {msg}")

    if isinstance(action, _FLAG_ACTIONS):
        if not isinstance(value, bool) and not (value is None and action.default is None):
            fail(f"expected true or false, got {value!r}")
        return value
    if value is None or isinstance(action, (argparse._StoreConstAction, argparse._AppendConstAction,
                                            argparse._CountAction)):
        return value
    many = action.nargs not in (None, "?")
    items = value if isinstance(value, list) and many else [value]
    if isinstance(value, dict) or (isinstance(value, list) and not many):
        fail(f"expected a single value, got {type(value).__name__} {value!r}")
    if any(isinstance(item, (bool, list, dict)) for item in items):
        fail(f"expected a value as on the command line, got {value!r} (quote text in YAML)")
    if isinstance(action.nargs, int) and len(items) != action.nargs:
        fail(f"expected {action.nargs} values, got {len(items)}")
    if action.nargs == "+" and not items:
        fail("expected at least one value")
    try:
        return parser._get_values(action, [str(item) for item in items])
    except argparse.ArgumentError as exc:
        fail(exc.message)


def _yaml_defaults(parser: argparse.ArgumentParser, path: Path, stage: str) -> dict[str, Any]:
    data, lines = load_yaml_with_lines(path)
    actions = {a.dest: a for a in parser._actions if not isinstance(a, _SKIP_ACTIONS)
               and a.dest not in ("config", argparse.SUPPRESS)}
    values: dict[str, Any] = {}
    given: dict[tuple, tuple[str, int | None]] = {}  # (section, dest) -> (key, line): one spelling each

    def apply(key: Any, value: Any, where: tuple) -> None:
        line = lines.get(where)
        dest = str(key).replace("-", "_")
        slot = (where[:-1], dest)
        if slot in given:
            raise DataError.at(path, line, f"key '{key}' sets the same option as '{given[slot][0]}' on line "
                               f"{given[slot][1]}: give it once")
        given[slot] = (str(key), line)
        if dest not in actions and dest in TRAIN_ONLY and len(where) == 1:
            return  # a training option at the top level: for the training stages, not this test step
        if dest not in actions:
            section = f" in section '{stage}'" if len(where) == 2 else ""
            raise DataError.at(path, line, f"unknown key '{key}'{section}: the '{stage}' stage has "
                               f"no option --{dest.replace('_', '-')}")
        values[dest] = _checked(parser, actions[dest], value, path, line, str(key))

    stage_section = None
    anchors = _anchored_sections(path)
    for key, value in data.items():
        if isinstance(value, dict):
            # a mapping is a stage section (other stages' sections are not ours to check) or a
            # YAML anchor declared as such (``name: &name``); any other mapping is an error
            if key == stage:
                stage_section = value
            elif str(key).replace("-", "_") in actions:
                raise DataError.at(path, lines.get((key,)), f"option '{key}' must be a single value, "
                                   "not a mapping")
            elif key not in STAGES and key not in SCRIPT_SECTIONS and key not in anchors:
                near = difflib.get_close_matches(str(key), STAGES, n=1, cutoff=0.6)
                hint = f"did you mean '{near[0]}'?" if near else "known stages: " + ", ".join(STAGES)
                raise DataError.at(path, lines.get((key,)), f"unknown stage section '{key}' ({hint}; a "
                                   f"mapping meant to be merged elsewhere is declared with an anchor: "
                                   f"'{key}: &{key}')")
            continue
        apply(key, value, (key,))
    for key, value in (stage_section or {}).items():
        if isinstance(value, dict):
            raise DataError.at(path, lines.get((stage, key)), f"'{stage}.{key}': nested sections are "
                               "not supported")
        apply(key, value, (stage, key))
    return values


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None, *,
               stage: str) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) with the defaults of ``--config FILE.yaml`` (added
    to ``parser``); ``args.config`` is the file's resolved path or None.

    Precedence, lowest to highest: parser defaults < the file's top-level keys < its ``<stage>:``
    mapping < the command line. For example::

        batch_size: 32          # every stage that has --batch-size
        epochs: 4               # TRAIN_ONLY: the training stages (skipped by the test steps)
        cam_train:              # the "cam_train" stage only, wins over the top level
          epochs: 10

    Keys are option destinations (``batch_size``; ``batch-size`` too). Each value is converted and
    checked by argparse itself (the option's ``type``, so its ``utils.ranges`` range, and ``choices``);
    flags take YAML booleans, ``nargs`` options YAML lists. One ``DataError`` naming the file and the
    line for: a key the stage's parser does not have (but a top-level ``TRAIN_ONLY`` key in a test
    step), a top-level mapping that is no stage section (``STAGES``, ``SCRIPT_SECTIONS``) nor a
    declared YAML anchor (``name: &name``, merged with ``<<: *name``), a key or section given twice,
    one option under two spellings, invalid YAML, a file that is not UTF-8. The option cross
    checks (``utils.ranges.check_options``) run on the options given.
    """
    if not any("--config" in a.option_strings for a in parser._actions):
        parser.add_argument("--config", type=str, default=None,
                            help="YAML file of option values (top level: every stage; "
                                 f"a mapping named like the stage, e.g. '{stage}:', this stage only)")
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", type=str, default=None)
    known, _ = pre.parse_known_args(argv)
    config_path = None
    saved = (dict(parser._defaults), [(a, a.default, a.required) for a in parser._actions])
    try:
        if known.config:
            config_path = _find_config(known.config)
            values = _yaml_defaults(parser, config_path, stage)
            parser.set_defaults(**values)  # timm's train.py: the file's values become the defaults
            for action in parser._actions:
                if action.dest in values:
                    action.required = False  # given by the file, no longer needed on the command line
        args = parser.parse_args(argv)
    finally:
        # the parser is left as it was: parsing again without the file gives the plain defaults
        parser._defaults = saved[0]
        for action, default, required in saved[1]:
            action.default, action.required = default, required
    args.config = str(config_path) if config_path is not None else None
    given = set(values) if known.config else set()
    words = [a.split("=", 1)[0] for a in (argv if argv is not None else __import__("sys").argv[1:])]
    for action in parser._actions:
        if any(opt in words for opt in action.option_strings):
            given.add(action.dest)
    EXPLICIT[id(args)] = given
    from utils.ranges import check_options

    # the ranges one option cannot check alone (crop <= resize, a split of the layout), among the
    # options given; utils.engine.stage.start_run checks them all once the derived defaults are filled
    check_options(args, only=given | {"layout", "threshold_layout"})
    return args


# id(args) -> the destinations set by the command line or the config file (not left at defaults)
EXPLICIT: dict[int, set[str]] = {}


def explicit_options(args) -> set[str] | None:
    """The options of ``args`` given on the command line or in ``--config`` (None: unknown)."""
    return EXPLICIT.get(id(args))


def args_to_dict(args: argparse.Namespace | dict) -> dict[str, Any]:
    """A plain dict of builtins (paths become text, tuples lists), safe for YAML, JSON and checkpoints."""
    def plain(value: Any) -> Any:
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return str(value)

    items = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {k: plain(v) for k, v in items.items()}


def write_config(args: argparse.Namespace, path: str | os.PathLike) -> Path:
    """Every option of ``args`` but ``config`` to the YAML file ``path``, atomically (``utils.io``):
    ``--config`` of that file gives the same options back. Returns ``path``."""
    from utils.io import atomic_write_text

    values = args_to_dict(args)
    values.pop("config", None)
    atomic_write_text(path, yaml.safe_dump(values, sort_keys=True, default_flow_style=False))
    return Path(path)


def report_error(exc: BaseException) -> None:
    """Print ``error: <one line>`` for a fault that ends the run.

    Under torchrun every rank usually meets the same bad input: rank 0 prints the line and leaves
    a marker for the run; another rank prints its own line only when no marker came from rank 0
    within ``WSOL_ERROR_WAIT`` seconds (30), i.e. for a fault of that rank alone (on one node)."""
    import sys
    import tempfile
    import time

    from utils.errors import one_line

    try:  # end a progress bar's line first, so that the error starts a line of its own
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:
        pass
    rank = int(os.environ.get("RANK", "0"))
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    marker = Path(tempfile.gettempdir()) / f"wsol-error.{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}"
    if rank != 0 and several:
        since = time.time() - 60  # a marker left by an earlier run with the same run id is older
        deadline = time.monotonic() + float(os.environ.get("WSOL_ERROR_WAIT", "30"))
        while time.monotonic() < deadline:
            try:
                if marker.stat().st_mtime >= since:
                    return  # rank 0 reported the run's fault
            except OSError:
                pass
            time.sleep(0.2)
            time.sleep(0.2)
        print(f"error (rank {rank}): {one_line(exc)}", file=sys.stderr, flush=True)
        return
    print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
    if several:
        try:
            marker.write_text(f"{os.getpid()}\n")
        except OSError:
            pass


def parse_early(module_name: str, get_args_parser, stage: str, argv: list[str] | None = None):
    """A stage script's first statement: when it runs as ``__main__``, parse the command line (and
    the ``--config`` file) now, before the script imports torch, so that ``--help``, a mistyped
    option or a bad config file is answered at once; the namespace goes to ``run_cli(..., args=)``.
    A config error is the usual one ``error:`` line and exit status 2. Imported (tests, benchmarks,
    ``demo.py``): nothing is parsed, returns None."""
    if module_name != "__main__":
        return None
    try:
        return parse_args(get_args_parser(), argv, stage=stage)
    except DataError as exc:
        report_error(exc)
        raise SystemExit(2) from None
