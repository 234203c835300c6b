"""Vetting of ``where`` filters before DuckDB runs them.

A filter is untrusted text (the server takes it from anyone who may search), so it must
neither escape its place nor exhaust memory. DuckDB's parser turns the one statement the
engine runs, ``SELECT id FROM items WHERE <filter>``, into its syntax tree
(``json_serialize_sql``); the statement is accepted only when that tree is exactly the
engine's own query with one WHERE expression, so text such as ``1=1) OR (1=1``, a second
statement or a ``GROUP BY`` never reaches the engine, and the same text that was checked
is the text that runs. Every node of the expression must then be of an allowed kind and
every function on the allow-list below: DuckDB's ``memory_limit`` does not bound string
functions, and ``repeat('a', 1000000000)`` would allocate gigabytes from a few bytes of
filter. Allowed functions return at most about the size of their inputs, and the filter's
length and number of operations are capped, so one filter costs at most a few of its
columns' vectors at once.
"""

from __future__ import annotations

import json
import threading
from functools import cache, lru_cache
from typing import Any

import duckdb

from mmsearch.errors import FilterError

MAX_FILTER_CHARS = 20_000
MAX_FILTER_OPERATIONS = 128  # function calls, casts and CASEs: each holds a vector of its own while it runs
VERDICT_CACHE_SIZE = 256

# Expression kinds of DuckDB's parse tree that a filter may contain (constants, columns,
# AND/OR/NOT, comparisons, IN, BETWEEN, IS NULL, COALESCE, [i], .field, casts, CASE);
# subqueries, window functions, lambdas, parameters, ``*``/``COLUMNS(*)`` are not.
ALLOWED_KINDS = frozenset(
    {"CONSTANT", "COLUMN_REF", "CONJUNCTION", "COMPARISON", "BETWEEN", "OPERATOR", "CAST", "TYPE", "CASE", "COLLATE"}
)
REFUSED_KINDS = {
    "SUBQUERY": "subqueries are",
    "WINDOW": "window functions are",
    "LAMBDA": "lambdas are",
    "PARAMETER": "parameters are",
    "STAR": "* and COLUMNS(*) are",
    "POSITIONAL_REFERENCE": "positional references are",
}
ALLOWED_OPERATORS = frozenset(
    {
        "OPERATOR_NOT",
        "OPERATOR_IS_NULL",
        "OPERATOR_IS_NOT_NULL",
        "OPERATOR_COALESCE",
        "COMPARE_IN",
        "COMPARE_NOT_IN",
        "ARRAY_EXTRACT",
        "ARRAY_SLICE",
        "STRUCT_EXTRACT",
    }
)
# Functions (and operators DuckDB parses as functions) whose result is no bigger than
# their arguments, give or take a constant: what the README's filters and the tests use
# (comparisons, LIKE, year(taken_at), ...) and their kin. Left out on purpose: whatever
# makes a large value from a small one (repeat, lpad/rpad, printf/format, strftime, ||,
# concat, replace, regexp_replace, range, list_resize, ...), aggregates, table functions.
ALLOWED_FUNCTIONS = frozenset(
    {
        # arithmetic and comparison operators parsed as functions
        *("+", "-", "*", "/", "//", "%", "^", "**", "@", "&", "|", "<<", ">>", "~", "!"),
        # pattern matching: LIKE, NOT LIKE, ILIKE, NOT ILIKE, GLOB, ~ (regexp), ^@ (starts with)
        *("~~", "!~~", "~~*", "!~~*", "~~~", "^@", "like_escape", "not_like_escape", "ilike_escape"),
        *("not_ilike_escape", "regexp_matches", "regexp_full_match", "glob", "like", "ilike"),
        # strings that shrink or keep their size
        *("lower", "upper", "lcase", "ucase", "length", "len", "strlen", "char_length", "character_length"),
        *("substring", "substr", "prefix", "suffix", "contains", "starts_with", "ends_with", "left", "right"),
        *("trim", "ltrim", "rtrim", "instr", "strpos", "position", "split_part", "nullif"),
        # numbers
        *("abs", "round", "floor", "ceil", "ceiling", "trunc", "sign", "sqrt", "ln", "log", "log2", "log10"),
        *("pow", "power", "least", "greatest", "isnan", "isinf", "isfinite", "mod"),
        # dates and times
        *("date_part", "datepart", "date_trunc", "datetrunc", "date_diff", "datediff", "epoch", "epoch_ms"),
        *("year", "month", "day", "hour", "minute", "second", "dayofweek", "dayofyear", "week", "quarter"),
        *("now", "current_date", "current_timestamp", "today", "make_date", "to_timestamp"),
        *("to_years", "to_months", "to_days", "to_hours", "to_minutes", "to_seconds"),
        # lists and the JSON in ``extra``
        *("list_value", "list_contains", "list_has", "array_contains", "array_has", "array_length"),
        *("json_extract", "json_extract_string", "json_extract_path", "json_extract_path_text", "->", "->>"),
        *("json_exists", "json_valid", "json_type"),
    }
)
_STATEMENT = "SELECT id FROM items WHERE {}\n"  # the newline ends a trailing -- comment


def statement(where: str) -> str:
    """The statement that evaluates ``where`` over ``items``, once it passed every check
    (cached per filter text); a one-line ``FilterError`` says why it did not."""
    return _vetted(where)


@lru_cache(maxsize=VERDICT_CACHE_SIZE)
def _vetted(where: str) -> str:
    if len(where) > MAX_FILTER_CHARS:
        raise FilterError(f"invalid --where filter: longer than {MAX_FILTER_CHARS} characters")
    text = _STATEMENT.format(where)
    parsed = _parse(text)
    if parsed.get("error") and parsed.get("error_type") == "parser":
        raise FilterError(f"invalid --where filter: {' '.join(str(parsed.get('error_message')).split())}")
    statements = parsed.get("statements", [])  # a second statement (``; DROP ...``) is an error above
    node = statements[0]["node"] if len(statements) == 1 else {}
    if node.get("where_clause") is None or _shape(node) != _expected_shape():
        raise FilterError("invalid --where filter: give one boolean expression over the items columns")
    operations = _check(node["where_clause"])
    if operations > MAX_FILTER_OPERATIONS:
        raise FilterError(f"invalid --where filter: more than {MAX_FILTER_OPERATIONS} operations")
    return text


def _check(node: Any) -> int:
    """Raise on the first node outside the allow-lists; count the operations."""
    if isinstance(node, list):
        return sum(_check(child) for child in node)
    if not isinstance(node, dict):
        return 0
    kind = node.get("class")
    count = 0
    if kind is not None:
        if kind in REFUSED_KINDS or kind not in ALLOWED_KINDS | {"FUNCTION"}:
            what = REFUSED_KINDS.get(kind, f"{str(kind).lower()} expressions are")
            raise FilterError(f"invalid --where filter: {what} not allowed in a filter")
        if kind == "OPERATOR" and node.get("type") not in ALLOWED_OPERATORS:
            raise FilterError(f"invalid --where filter: operator {node.get('type')} is not allowed in a filter")
        if kind == "FUNCTION":
            name = str(node.get("function_name", "")).lower().removesuffix("_star")  # count(*): count_star
            qualified = node.get("schema") or node.get("catalog")
            if name not in ALLOWED_FUNCTIONS or qualified or node.get("distinct") or node.get("filter"):
                raise FilterError(f"invalid --where filter: function {name} is not allowed in a filter")
        count = kind in ("FUNCTION", "CAST", "CASE")
    return count + sum(_check(value) for value in node.values())


def _shape(node: dict) -> dict:
    """The statement's tree without its WHERE expression and source positions."""
    return {key: _without_locations(value) for key, value in node.items() if key != "where_clause"}


def _without_locations(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_locations(v) for k, v in value.items() if not k.startswith("query_location")}
    if isinstance(value, list):
        return [_without_locations(v) for v in value]
    return value


@cache
def _expected_shape() -> dict:
    """The shape of the engine's own filter statement (with a trivial filter)."""
    return _shape(_parse(_STATEMENT.format("true"))["statements"][0]["node"])


def _parse(text: str) -> dict:
    """DuckDB's syntax tree of ``text`` (or its parse error), as JSON."""
    row = _parser().execute("SELECT json_serialize_sql($1)", [text]).fetchone()
    assert row is not None  # a scalar function answers one row
    return json.loads(row[0])


_local = threading.local()


def _parser() -> duckdb.DuckDBPyConnection:
    """This thread's DuckDB connection for parsing: it holds no data and runs no user text
    (the text is a bound parameter of ``json_serialize_sql``)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect()
    return con
