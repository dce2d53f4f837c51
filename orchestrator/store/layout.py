"""The stable on-disk layout: every file of a table has exactly the same Arrow schema.

Plain Parquet readers (pandas, ``pyarrow.dataset``, Polars, Spark; DuckDB without
``union_by_name``) take one file's schema for a whole directory, so a column that only some files
have is silently dropped: a regression study's ``test_rmse`` next to a classification study, a knob
that only one study searches. So no file's schema depends on its study, its sweep or its rows.
Each table's files hold, in this order and with these types:

- the table's **fixed columns**: what orch itself writes (keys, status, timestamps...), and the
  built-in metrics of *every* task (classification and regression) under each prefix the table
  uses (``final_``/``best_``/``test_`` in trials; the reported names in metrics), ``float64``, null
  where a study does not have them;
- ``config`` (trials only): ``map<string, string>``, the knobs (the ``config.<knob>`` columns of
  :meth:`Store.read`) by name, each value JSON (``64``, ``"adam"``, ``0.001``, ``true``, ``[64, 64]``);
- ``extra``: ``map<string, string>`` of JSON values, for any other column (a training loop's own
  metrics, a ``test_`` score of its own).

A missing value is a missing map key (never a JSON ``null``), so ``config['lr']`` is SQL NULL there.

:func:`to_stable` turns what :func:`orchestrator.store.tables.to_arrow` builds into that layout (on
append); :func:`from_stable` turns it back (on read): the maps expand into their columns, typed from
their values, and a fixed metric column that no row has is left out, so :meth:`Store.read` returns
what it always did. Files of the previous layout (one column per knob and metric, the schema
varying by sweep) read too, alone or beside stable ones; ``orch store migrate`` rewrites them.

This module imports no other store module (``tables`` imports it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.config.metric_names import DIAGNOSTICS, TASK_METRICS

CONFIG = "config"
EXTRA = "extra"
CONFIG_PREFIX = "config."  # (orchestrator.store.trials.CONFIG_PREFIX)
MAP = pa.map_(pa.string(), pa.string())
TIMESTAMP = pa.timestamp("us", tz="UTC")  # (orchestrator.store.tables.TIMESTAMP)
_S, _F, _I, _B = pa.string(), pa.float64(), pa.int64(), pa.bool_()

# The built-in metrics of each task: the trainer's own list (tests/test_store_layout.py checks that
# the columns cover every metric the trainer reports).


def _union(groups: Iterable[Iterable[str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))


SCORED = _union(TASK_METRICS.values())  # final_ and best_ columns (orchestrator.tune.callbacks)
REPORTED = _union([SCORED, _union(DIAGNOSTICS.values())])  # every epoch's row
# The held-out scores of the best epoch: the validation metrics' names on the test split.
TESTED = tuple(f"test_{m[len('val_'):]}" for m in _union([SCORED, *DIAGNOSTICS.values()]) if m.startswith("val_"))

# name -> (type, optional). An optional column (a metric some task or trainer does not report) is
# left out of what from_stable returns when no row has it; the others are always there.
Fields = dict[str, tuple[pa.DataType, bool]]


def _fields(*groups: Fields) -> Fields:
    out: Fields = {}
    for g in groups:
        out.update(g)
    return out


def _core(**types: pa.DataType) -> Fields:
    return {name: (t, False) for name, t in types.items()}


def _metrics(names: Iterable[str], t: pa.DataType = _F) -> Fields:
    return {name: (t, True) for name in names}


# Each table's columns, in file order. The trials and metrics rows are those of the sweep driver's
# store writer (orchestrator/tune/callbacks.py), the sweeps row the driver's (tune/driver.py
# finish), exploits tune/pbt.py's, decisions retune/decide.py's; "study" is the partition.
FIELDS: dict[str, Fields] = {
    "sweeps": _fields(_core(
        sweep_id=_S, reason=_S, parent_sweep_id=_S, scheduler=_S, searcher=_S, config_yaml=_S, config_sig=_S,
        config_path=_S, started_at=TIMESTAMP, ended_at=TIMESTAMP, num_trials=_I, best_trial_id=_S, metric=_S,
        mode=_S, best_value=_F, promoted=_B, data_fingerprint=_S, code_version=_S, search_space=_S, stages=_S,
        orch_version=_S, extra=MAP)),
    "trials": _fields(
        _core(sweep_id=_S, trial_id=_S, status=_S, stop_reason=_S, stage=_I, generation=_I, config=MAP),
        _metrics(f"{prefix}_{m}" for m in SCORED for prefix in ("final", "best")),
        _metrics(TESTED),
        _core(collapsed=_B, best_epoch=_I, n_params=_I, epochs=_I, train_time_s=_F, started_at=TIMESTAMP,
              ended_at=TIMESTAMP, node=_S, host=_S, device=_S, gpu_ids=_S, retries=_I, extra=MAP)),
    "metrics": _fields(
        _core(sweep_id=_S, trial_id=_S, generation=_I, resumed_val_loss=_F),
        _metrics(REPORTED),
        _metrics(["lr"]), _metrics(["batch_size"], _I),  # orch's trainer reports them, a training function may not
        _core(epoch=_I, timestamp=_F, time_s=_F, extra=MAP)),
    "exploits": _fields(_core(
        sweep_id=_S, trial_id=_S, generation=_I, epoch=_I, donor_trial_id=_S, donor_epoch=_I, old_config=_S,
        new_config=_S, changed=_S, timestamp=TIMESTAMP, extra=MAP)),
    "decisions": _fields(_core(
        decided_at=TIMESTAMP, verdict=_S, reason=_S, reasons=_S, evidence=_S, error=_S, retune_sweep_id=_S,
        promoted=_B, outcome=_S, extra=MAP)),
}
SCHEMAS: dict[str, pa.Schema] = {t: pa.schema([(n, typ) for n, (typ, _) in f.items()]) for t, f in FIELDS.items()}
_MAPS = (CONFIG, EXTRA)


def schema(table: str) -> pa.Schema:
    """The schema of every file of ``table``."""
    return SCHEMAS[table]


def is_stable(table: str, file_schema: pa.Schema) -> bool:
    """Whether a file with this schema is in the stable layout (of this version of orch)."""
    return file_schema.remove_metadata().equals(SCHEMAS[table])


def stored_columns(table: str, columns: Iterable[str]) -> list[str]:
    """The columns to read from the files for ``columns`` of :meth:`Store.read`: a knob is in the
    ``config`` map, a column that is not fixed in ``extra``; the names themselves are kept too (a
    file of the previous layout holds them as columns)."""
    fields = FIELDS[table]
    out = dict.fromkeys(columns)
    for c in list(out):
        if c in _MAPS:
            continue
        if CONFIG in fields and c.startswith(CONFIG_PREFIX):
            out[CONFIG] = None
        elif c not in fields:
            out[EXTRA] = None
    return list(out)


# -- writing -----------------------------------------------------------------------------------------


def to_stable(table: str, arrow: pa.Table, defaults: dict[str, Any] | None = None) -> pa.Table:
    """A table of rows (one column per key, knob and metric, as ``to_arrow`` builds it) in the
    stable layout of ``table``.

    A value that does not fit its fixed column's type (a text where a number goes) is kept in
    ``extra`` under the column's name, and reads back from there; nothing is dropped. A fixed
    column the rows do not have is null, or its value in ``defaults`` (the table's key columns'
    ``KEY_DEFAULTS``: a key written without it reads as that value, now as before).
    """
    fields = FIELDS[table]
    n = arrow.num_rows
    config: dict[str, pa.Array] = {}
    extra: dict[str, pa.Array] = {}
    fixed: dict[str, pa.Array] = {}
    for name, column in zip(arrow.column_names, arrow.columns, strict=True):
        col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if name in fields and name not in _MAPS:
            fitted = _fit(col, fields[name][0])
            if fitted is not None:
                fixed[name] = fitted
            else:
                extra[name] = col
        elif CONFIG in fields and name.startswith(CONFIG_PREFIX) and len(name) > len(CONFIG_PREFIX):
            config[name[len(CONFIG_PREFIX):]] = col
        else:
            extra[name] = col
    arrays = []
    for name, (typ, _) in fields.items():
        if name == CONFIG:
            arrays.append(_to_map(config, n))
        elif name == EXTRA:
            arrays.append(_to_map(extra, n))
        else:
            default = (defaults or {}).get(name)
            missing = pa.nulls(n, typ) if default is None else pa.array(np.full(n, default)).cast(typ)
            arrays.append(fixed.get(name, missing))
    return pa.Table.from_arrays(arrays, schema=SCHEMAS[table])


def _fit(col: pa.Array, typ: pa.DataType) -> pa.Array | None:
    """``col`` as the fixed type ``typ`` without changing a value, else None."""
    if col.type == typ:
        return col
    if col.null_count == len(col):
        return pa.nulls(len(col), typ)
    same_kind = (
        (pa.types.is_floating(typ) and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)))
        or (pa.types.is_integer(typ) and pa.types.is_integer(col.type))
        or (pa.types.is_integer(typ) and pa.types.is_floating(col.type))  # 3.0 -> 3; 3.5 does not fit
        or (pa.types.is_timestamp(typ) and pa.types.is_timestamp(col.type))
        or (pa.types.is_string(typ) and pa.types.is_large_string(col.type))
    )
    if not same_kind:
        return None
    try:
        out = col.cast(typ, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if pa.types.is_integer(col.type) and pa.types.is_floating(typ):  # exact below 2**53 only
        back = out.cast(col.type, safe=False)
        if pc.all(pc.equal(back, col)).as_py() is False:
            return None
    return out


def _to_map(columns: dict[str, pa.Array], n: int) -> pa.Array:
    """Columns -> one map per row of their non-null values, JSON-encoded, in column order."""
    if not columns:
        return pa.MapArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], _S),
                                       pa.array([], _S))
    names = list(columns)
    encoded = [encode_json(columns[k]) for k in names]
    k = len(names)
    present = np.stack([np.asarray(pc.is_valid(e)) for e in encoded], axis=1)  # (rows, keys)
    flat = present.ravel()  # row-major: row 0's keys, then row 1's...
    values = pa.concat_arrays(encoded)  # key-major: key 0's rows, then key 1's...
    order = (np.arange(k)[None, :] * n + np.arange(n)[:, None]).ravel()[flat]
    keys = pa.array(names, _S).take(pa.array(np.tile(np.arange(k), n)[flat]))
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    return pa.MapArray.from_arrays(pa.array(offsets), keys, values.take(pa.array(order)))


def encode_json(col: pa.Array) -> pa.Array:
    """Each value as JSON text (null stays null), exactly enough to read it back with its type:
    ``64``, ``64.0``, ``true``, ``"adam"``. A text that is itself JSON of a list or a mapping (a
    ``config.<knob>`` cell of a list-valued knob, see :func:`orchestrator.store.trials.encode_value`)
    is kept as that JSON."""
    t = col.type
    if pa.types.is_null(t) or col.null_count == len(col):
        return pa.nulls(len(col), _S)
    if len(col) <= _SMALL:  # (an append's few rows: json itself costs less than arrow's calls)
        return pa.array([None if v is None else _json_value(v) for v in col.to_pylist()], _S)
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return col.cast(_S)
    if pa.types.is_floating(t):
        col = col.cast(_F)
        text = col.cast(_S)  # the shortest text that reads back as the same double
        text = pc.if_else(pc.match_substring_regex(text, r"^-?\d+$"), pc.binary_join_element_wise(text, ".0", ""),
                          text)  # 1.0 stays a float
        if pc.any(pc.invert(pc.is_finite(col))).as_py():
            for arrow_text, json_text in (("nan", "NaN"), ("inf", "Infinity"), ("-inf", "-Infinity")):
                text = pc.if_else(pc.equal(text, arrow_text), json_text, text)
        return text
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = col.cast(_S)
        # Quoting is all most texts need; JSON-looking ones and those with quotes, backslashes or
        # control characters go through json.
        slow = pc.fill_null(pc.match_substring_regex(text, r'^[\[{]|["\\\x00-\x1f]'), False)
        fast = pc.binary_join_element_wise('"', text, '"', "")
        if not pc.any(slow).as_py():
            return fast
        redo = [_json_text(v) for v in text.filter(slow).to_pylist()]
        return pc.replace_with_mask(fast, slow, pa.array(redo, _S))
    return pa.array([None if v is None else _json_any(v) for v in col.to_pylist()], _S)


_SMALL = 64


def _json_value(value: Any) -> str:
    if isinstance(value, str):
        return _json_text(value)
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)  # (1.0, NaN and Infinity as encode_json writes them)
    return _json_any(value)


def _json_text(text: str) -> str:
    if text[:1] in "[{":
        try:
            if json.dumps(json.loads(text)) == text:
                return text
        except ValueError:
            pass
    return json.dumps(text, ensure_ascii=False)


def _json_any(value: Any) -> str:
    if isinstance(value, (datetime, date)):
        return json.dumps(value.isoformat())  # (a non-fixed time column reads back as its ISO text)
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    return json.dumps(value, default=str, ensure_ascii=False)


# -- reading -----------------------------------------------------------------------------------------


def normalized(table: str, arrow: pa.Table) -> pa.Table:
    """One file's table with its ``config`` and ``extra`` maps as maps, also where pandas wrote
    them back as lists (see :func:`as_map`), so that it combines with the other files."""
    for name in _MAPS:
        if name in arrow.column_names and not pa.types.is_map(arrow.schema.field(name).type):
            column = as_map(arrow[name])
            if column is not None:
                i = arrow.column_names.index(name)
                arrow = arrow.set_column(i, pa.field(name, MAP), column)
    return arrow


def from_stable(table: str, arrow: pa.Table) -> pa.Table:
    """Files of ``table`` (stable, previous layout, or both, concatenated) as one column per key,
    knob (``config.<knob>``) and metric, as :meth:`Store.read` returns them.

    Fixed columns keep their order, the knobs come where ``config`` is and the other columns where
    ``extra`` is; an optional fixed column (a metric) that no row has is left out. A column that
    came from several places (a knob in an old file's column and in a new file's map) is one
    column, of the type that holds both.
    """
    fields = FIELDS[table]
    names = arrow.column_names
    if not names:
        return arrow
    out: dict[str, pa.Array | pa.ChunkedArray] = {}

    def put(name: str, column: pa.Array | pa.ChunkedArray) -> None:
        out[name] = _merge(out[name], column) if name in out else column

    def expand(map_name: str, prefix: str) -> None:
        if map_name not in names:
            return
        column = as_map(arrow[map_name])
        if column is None:  # a file of the previous layout with a column of that name (a metric "extra")
            put(map_name, arrow[map_name])
            return
        for key, values in expand_map(column).items():
            put(prefix + key, values)

    old_config = [c for c in names if c.startswith(CONFIG_PREFIX)] if CONFIG in fields else []
    others = [c for c in names if c not in fields and c not in old_config]
    for name in fields:
        if name == CONFIG:
            for c in old_config:
                put(c, arrow[c])
            expand(CONFIG, CONFIG_PREFIX)
        elif name == EXTRA:
            for c in others:
                put(c, arrow[c])
            expand(EXTRA, "")
        elif name in names:
            put(name, arrow[name])
    # An optional column that no row has (a metric of another task) is left out; one whose values
    # came from extra (see to_stable) has them now.
    return pa.table({c: v for c, v in out.items()
                     if not (c in fields and fields[c][1] and v.null_count == len(v))})


def as_map(column: pa.ChunkedArray | pa.Array) -> pa.Array | None:
    """A ``config`` or ``extra`` column as a map, also as pandas writes one back (a file read into a
    DataFrame and written again: a list of [key, value] lists, or of {key, value} records); None
    for a column of another shape (a column of that name in a file of the previous layout)."""
    t = column.type
    if pa.types.is_map(t):
        return column
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return None
    inner = t.value_type
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(col.offsets, dtype=np.int64)
    offsets = pa.array((offsets - offsets[0]).astype(np.int32))
    entries = col.flatten()
    if len(entries) == 0:  # every map was empty (pandas then writes lists of nulls): empty maps
        keys, items = pa.array([], _S), pa.array([], _S)
    elif pa.types.is_struct(inner) and [inner.field(i).name for i in range(inner.num_fields)] == ["key", "value"]:
        keys, items = entries.field("key"), entries.field("value")
    elif (pa.types.is_list(inner) or pa.types.is_large_list(inner)) and pa.types.is_string(inner.value_type) \
            and pc.all(pc.equal(pc.list_value_length(entries), 2)).as_py() in (True, None):
        pairs = entries.flatten()
        keys, items = (pairs.take(pa.array(np.arange(i, len(pairs), 2))) for i in (0, 1))
    else:
        return None
    if keys.null_count:
        return None
    return pa.MapArray.from_arrays(offsets, keys.cast(_S), items.cast(_S))


def expand_map(column: pa.ChunkedArray | pa.Array) -> dict[str, pa.Array]:
    """A map column of JSON values -> one typed column per key (in order of first appearance),
    null where a row's map does not have the key (a null map has no keys)."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(col)
    if not n:
        return {}
    offsets = np.asarray(col.offsets, dtype=np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    if end == start:
        return {}
    keys = pc.dictionary_encode(col.keys.slice(start, end - start))
    items = col.items.slice(start, end - start)
    rows = np.repeat(np.arange(n), np.diff(offsets))
    codes = np.asarray(keys.indices.fill_null(-1))
    out: dict[str, pa.Array] = {}
    for j, key in enumerate(keys.dictionary.to_pylist()):
        (entries,) = np.nonzero(codes == j)
        where = np.full(n, -1, dtype=np.int64)
        where[rows[entries]] = entries  # (a key twice in one map: the last one)
        out[key] = decode_json(items.take(pa.array(where, mask=where < 0)))
    return out


_INT = r"^-?(0|[1-9][0-9]*)$"
_NUMBER = r"^(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?|NaN|-?Infinity)$"


def decode_json(text: pa.Array) -> pa.Array:
    """JSON texts (null: missing) -> one column of the type their values share: bool, int64,
    float64 or string (a list or a mapping as its JSON text, as a ``config.<knob>`` cell holds it;
    values of different kinds as text, as ``to_arrow`` types them)."""
    valid = text.drop_null()
    if not len(valid):
        return pa.nulls(len(text))
    if pc.all(pc.is_in(valid, pa.array(["true", "false"]))).as_py():
        return pc.equal(text, "true")
    if pc.all(pc.match_substring_regex(valid, _INT)).as_py():
        try:
            return text.cast(_I)
        except (pa.ArrowInvalid, OverflowError):
            pass  # beyond int64: a float, as json reads it... or text (below)
    if pc.all(pc.match_substring_regex(valid, _NUMBER)).as_py():
        return text.cast(_F)
    if (pc.all(pc.starts_with(valid, '"')).as_py() and pc.all(pc.ends_with(valid, '"')).as_py()
            and not pc.any(pc.match_substring_regex(valid, r'\\|^"$|.".')).as_py()):
        return pc.utf8_slice_codeunits(text, 1, -1)
    return _inferred([None if v is None else _cell(v) for v in text.to_pylist()])


def _cell(text: str) -> Any:
    """One JSON value as the cell that holds it (a list or a mapping: its JSON text); a text that
    is not JSON (a map written by another tool) as it is."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _inferred(values: list[Any]) -> pa.Array:
    """A column of Python values, typed as ``orchestrator.store.tables._inferred`` types them."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, _B)
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        try:
            return pa.array(values, _I)
        except (OverflowError, pa.ArrowInvalid):
            pass
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], _F)
    return pa.array([None if v is None else str(v) for v in values], _S)


def _merge(a: pa.Array | pa.ChunkedArray, b: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """One column of two that name the same thing, row by row (``a`` where it has a value)."""
    if b.null_count == len(b):
        return a
    if a.null_count == len(a):
        return b
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    b = b.combine_chunks() if isinstance(b, pa.ChunkedArray) else b
    if a.type != b.type:
        try:
            common = pa.unify_schemas([pa.schema([("c", a.type)]), pa.schema([("c", b.type)])],
                                      promote_options="permissive").field("c").type
            a, b = a.cast(common), b.cast(common)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return _inferred([x if x is not None else y for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True)])
    return pc.coalesce(a, b)
