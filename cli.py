"""Command-line flags generated from a config dataclass, for the entry points (edit.py,
train.py; their configs are in configs.py): every field is a flag `--field-name`, its help
text and default live beside the field (all knobs visible at the top of the entry point, typed,
no YAML: every setting and its default are read in one place, and a typo in a flag is
argparse's error, not a silently ignored key)."""

import argparse
import sys
from dataclasses import field, fields


def knob(default, help: str, minimum: int | None = None):
    """A configuration field with its --help text (lists get a fresh default per instance);
    `minimum` for counts: a smaller value on the command line is argparse's one-line error."""
    metadata = {"help": help, "minimum": minimum}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def at_least(minimum: int):
    """An argparse `type`: an int not below `minimum`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def build_parser(config_cls, prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """argparse flags generated from a config dataclass: `--field-name value`, bools as
    switches, lists as one or more values."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    for f in fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        shown = default not in ("", []) and not isinstance(default, bool)
        help_text = f.metadata["help"] + (f" (default {default})" if shown else "")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        elif isinstance(default, list):
            parser.add_argument(flag, nargs="+", default=default, help=help_text, metavar="PATH")
        else:
            minimum = f.metadata.get("minimum")
            kind = type(default) if minimum is None else at_least(minimum)
            parser.add_argument(flag, type=kind, default=default, help=help_text)
    return parser


def fail(error: Exception) -> int:
    """A user's mistake (bad flag value, missing or broken file, weights or LoRA that do not
    fit) as the one line `error: ...` on stderr; the exit status 2 of the entry points."""
    print(f"error: {error}", file=sys.stderr)
    return 2
