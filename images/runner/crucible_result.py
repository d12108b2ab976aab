"""Turns what a job's main() returned into JSON: numpy and pandas values, tensors, dates, paths and
dataclasses convert; anything else is refused with the path to the offending value."""

import dataclasses
import datetime
import decimal
import enum
import json
import math
import pathlib
import sys

MAX_DEPTH = 200


class ResultError(Exception):
    """main() returned something that is not JSON; the message names where and what."""


def to_json_text(value, max_bytes):
    """The JSON text of `value`, at most `max_bytes` long."""
    text = json.dumps(_convert(value, "result", set(), 0), allow_nan=False, ensure_ascii=False)
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise ResultError(
            f"the result is {size} bytes of JSON, more than the {max_bytes} allowed;"
            " write large outputs to files under /workspace/outputs instead"
        )
    return text


def _convert(value, path, seen, depth):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity; null is what pandas and most JSON writers emit for them.
        return value if math.isfinite(value) else None
    if depth > MAX_DEPTH:
        raise ResultError(f"{path} is nested more than {MAX_DEPTH} levels deep")
    special = _special(value)
    if special is not _NOT_SPECIAL:
        return _convert(special, path, seen, depth + 1)
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in seen:
            raise ResultError(f"{path} contains itself")
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                return {
                    _key(key, path): _convert(item, f"{path}[{key!r}]", seen, depth + 1)
                    for key, item in value.items()
                }
            return [_convert(item, f"{path}[{index}]", seen, depth + 1) for index, item in enumerate(value)]
        finally:
            seen.discard(id(value))
    raise ResultError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which is not JSON-serialisable;"
        " return numbers, strings, lists and dicts (numpy and pandas values convert), or write files to"
        " /workspace/outputs"
    )


_NOT_SPECIAL = object()


def _special(value):
    """A plainer value standing for `value`, or _NOT_SPECIAL."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.ndarray):
            return value.tolist()
        if isinstance(value, numpy.generic):
            return value.item()
    pandas = sys.modules.get("pandas")
    if pandas is not None:
        if isinstance(value, pandas.DataFrame):
            return value.to_dict(orient="records")
        if isinstance(value, pandas.Series):
            return value.to_dict()
        if isinstance(value, pandas.Index):
            return value.tolist()
        if value is pandas.NaT:
            return None
        if isinstance(value, pandas.Timestamp):
            return value.isoformat()
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    return _NOT_SPECIAL


def _key(key, path):
    plain = _special(key)
    if plain is not _NOT_SPECIAL:
        key = plain
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise ResultError(f"{path} has a key of type {type(key).__qualname__}; JSON object keys are strings")
