"""The job list of batch.py: one JSON object per line, each an edit.py run (the `EditConfig`
knobs under their field names, plus `name`, the job's output folder), checked whole before any
model loads or anything is written: a bad line is one `JobListError` naming the line and the
field (docs/batch.md has the format)."""

import difflib
import json
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from configs import EditConfig
from edit import check_config
from media import InputError


# ---------------------------------------------------------------------------------------------
# The job list: one JSON object per line, checked whole before any work
# ---------------------------------------------------------------------------------------------

BATCH_LEVEL = {"weights": "--weights", "dtype": "--dtype", "device": "--device",
               "out_dir": "--out-dir"}           # one model and one OUT for every job
PATH_FIELDS = ("video", "edited_frame", "lora")  # relative paths: from the job list's folder
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
FAILED_SUFFIX = ".failed.json"
SUMMARY = "summary.jsonl"


class JobListError(ValueError):
    """A bad line of the job list; the message is one line naming the line and the field."""


@dataclass
class Job:
    line: int               # 1-based line number in the job list
    name: str               # the output folder OUT/<name>
    spec: dict              # the line as written (recorded in done.json)
    knobs: dict             # EditConfig overrides, checked and with paths resolved


def check_value(key: str, value, kind):
    """A JSON value against an EditConfig field type (str, bool, int, float, list[str]) ->
    the value to use (an int for a float field becomes a float; a string for a list field, a
    one-item list). Raises JobListError naming `key`."""
    if typing.get_origin(kind) is list:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise JobListError(f"'{key}' must be a string or a list of strings, got "
                               f"{json.dumps(value)}")
        return value
    # bool is a subclass of int in Python: a JSON true is never a count.
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise JobListError(f"'{key}' must be {kind.__name__}, got {json.dumps(value)}")
    return float(value) if kind is float else value


def parse_job(text: str, line: int, base: Path) -> Job:
    """One line of the job list -> a Job; raises JobListError (without the line number)."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise JobListError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(spec, dict):
        raise JobListError("a job is a JSON object {...}")
    if "name" not in spec:
        raise JobListError("field 'name' is required (the output folder's name)")
    name = spec["name"]
    if not isinstance(name, str) or not NAME.fullmatch(name) or name.endswith(FAILED_SUFFIX) \
            or name == SUMMARY:
        raise JobListError(f"'name' must be a file name of letters, digits, '.', '_', '-' "
                           f"(not starting with '.', not {SUMMARY} nor *{FAILED_SUFFIX}), got "
                           f"{json.dumps(name)}")
    hints = typing.get_type_hints(EditConfig)
    types = {f.name: hints[f.name] for f in fields(EditConfig)}      # str, bool, int, list[str]...
    knobs = {}
    for key, value in spec.items():
        if key == "name":
            continue
        if key in BATCH_LEVEL:
            raise JobListError(f"'{key}' is set for the whole batch ({BATCH_LEVEL[key]}), not "
                               "per job")
        if key not in types:
            close = difflib.get_close_matches(key, types, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise JobListError(f"unknown field '{key}'{hint}")
        knobs[key] = check_value(key, value, types[key])
    for f in fields(EditConfig):
        minimum = f.metadata.get("minimum")
        if f.name in knobs and minimum is not None and knobs[f.name] < minimum:
            raise JobListError(f"'{f.name}' must be at least {minimum}, got {knobs[f.name]}")
    # The fields a job needs (edit.check_config says it again in terms of flags).
    if not knobs.get("edited_frame"):
        raise JobListError("field 'edited_frame' is required")
    if not knobs.get("plain_i2v"):
        if not knobs.get("video"):
            raise JobListError("field 'video' is required (or 'plain_i2v': true)")
        if bool(knobs.get("lora")) == knobs.get("train", False):
            raise JobListError("give either 'lora' (one file per clip) or 'train': true")
    for key in PATH_FIELDS:
        if isinstance(knobs.get(key), str):
            knobs[key] = str(base / Path(knobs[key]).expanduser()) if knobs[key] else ""
        elif key in knobs:
            knobs[key] = [str(base / Path(p).expanduser()) for p in knobs[key]]
    try:
        check_config(EditConfig(**knobs))   # the remaining rules: choices, overlap < frames
    except InputError as e:
        raise JobListError(str(e)) from None
    return Job(line, name, spec, knobs)


def read_jobs(path: Path) -> list[Job]:
    """The job list -> its jobs; raises JobListError "<path> line <n>: <what, which field>" for
    the first bad line. Blank lines are allowed; names are unique (ignoring case, so that two
    jobs never share a folder on a case-insensitive filesystem)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise JobListError(f"{path}: cannot read the job list ({e})") from None
    jobs, first_line = [], {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            job = parse_job(text, number, path.resolve().parent)
            if job.name.lower() in first_line:
                raise JobListError(f"'name' {json.dumps(job.name)} is already used on line "
                                   f"{first_line[job.name.lower()]}")
        except JobListError as e:
            raise JobListError(f"{path} line {number}: {e}") from None
        first_line[job.name.lower()] = number
        jobs.append(job)
    if not jobs:
        raise JobListError(f"{path}: no jobs")
    return jobs
