"""Mixed-model formulas in lme4's syntax: a response, a fixed part and random terms ``(terms | factor)``.

``TICKS ~ YEAR + scale(HEIGHT) + (1|BROOD) + (1|LOCATION)`` is read as lme4 reads it (Bates et al. 2015, "Fitting
linear mixed-effects models using lme4", J. Stat. Softw. 67(1), section 2.1 and table 2):

- the random terms are ours to parse: ``(1|g)``, ``(1 + x|g)``, ``(x|g)`` (the intercept is implied), ``(0 + x|g)``,
  nested ``(1|a/b)`` = ``(1|a) + (1|b:a)``, interactions of labels ``(1|a:b)``, crossed ``(1|a) + (1|b)``, and
  uncorrelated ``(1 + x||g)`` = ``(1|g) + (0 + x|g)``. They are found by matching parentheses, never by a pattern
  that a ``log(x)`` would break;
- the fixed part and the random terms' left sides go to formulaic (a maintained formula library): string columns,
  and the numeric columns named in ``factors``, are factors with treatment contrasts whose reference is the first
  level in R's sort order; formulaic's column names are turned into lme4's (``YEAR[T.96]`` -> ``YEAR96``,
  ``Intercept`` -> ``(Intercept)``); ``scale()`` divides by the sample sd (n - 1) as R's does;
- the response is an expression of columns (``TICKS``, ``log(y)``) or ``cbind(k, n - k)`` (binomial successes and
  failures); ``offset(expr)`` terms are taken out of the fixed part and summed;
- rows missing a value in a column the formula uses are dropped (lme4's ``na.omit``) and counted.

Inside a function's parentheses ``^`` is R's power (``I(age^2)`` = ``I(age**2)``). Formulas are evaluated as Python
by formulaic, so only names of columns, formulaic's transforms and numpy's math functions (``np.sqrt``) may appear:
a formula saved in a run folder must not be able to run other code when the run is read back.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from .frames import read_frame

__all__ = [
    "BarTerm",
    "FormulaError",
    "MixedDesign",
    "ParsedFormula",
    "RandomBlock",
    "build_design",
    "design_on_new_data",
    "parse_formula",
    "read_frame",
]

KEY = "data.formula"
MAX_LISTED_COLUMNS = 12
# A fixed-effect column whose part not explained by the columns before it is below this fraction of its norm is
# aliased: lme4 (chkRank.drop.cols) drops such columns after a pivoted QR with tolerance 1e-7.
RANK_TOLERANCE = 1e-7


class FormulaError(UsageError):
    """A formula cannot be used with a table: one line naming the key, what is wrong and the fix."""

    def __init__(self, message: str, key: str = KEY):
        super().__init__(f"{key}: {message}")
        self.key = key


# ----- parsing ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BarTerm:
    """One random term ``(terms | factor)`` or ``(terms || factor)`` as written.

    Attributes:
        terms: the left side, as formula text (``"1 + x"``).
        factor: the grouping factor as written (``"a/b"``).
        uncorrelated: written with ``||`` (one block per term, no correlations).
        groupings: the grouping factors it expands to, each a tuple of column names whose labels are joined by
            ``:`` (``a/b`` -> ``(("a",), ("b", "a"))``).
    """

    terms: str
    factor: str
    uncorrelated: bool
    groupings: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into its parts by string work alone (no table needed).

    Attributes:
        text: the formula as given.
        lhs: the response as written (``"TICKS"``, ``"cbind(incidence, size - incidence)"``).
        response_args: the expressions of the response: ``(lhs,)``, or cbind's two (successes, failures).
        cbind: the response is ``cbind(k, n - k)``.
        fixed: the fixed part for formulaic: the right side without random terms and offsets (``"1"`` if
            nothing is left, ``"0"`` for ``0 + (1|g)``).
        offsets: the expressions inside ``offset(...)``.
        bars: the random terms in order.
    """

    text: str
    lhs: str
    response_args: tuple[str, ...]
    cbind: bool
    fixed: str
    offsets: tuple[str, ...]
    bars: tuple[BarTerm, ...]


_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<backtick>`[^`]*`)
    |(?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>\*\*|\|\||[=!<>]=|.)""",
    re.X | re.S,
)
_OPEN, _CLOSE = "([{", ")]}"


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int
    depth: int  # nesting depth of brackets around the token (an opening bracket counts outside itself)


def _tokens(text: str, where: str = "the formula") -> list[_Token]:
    """Splits ``text`` into tokens with their bracket depth; refuses unbalanced brackets and open quotes."""
    tokens, stack = [], []
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group()
        if kind == "space":
            continue
        if kind == "op" and value in "'\"`":
            raise FormulaError(f"{where} '{text}' has an unclosed {value} quote; close it")
        depth = len(stack)
        if kind == "op" and value in _OPEN:
            stack.append((value, match.start()))
        elif kind == "op" and value in _CLOSE:
            if not stack or _OPEN.index(stack[-1][0]) != _CLOSE.index(value):
                raise FormulaError(
                    f"unbalanced parentheses in '{text}': '{value}' at character {match.start() + 1} closes "
                    "nothing that is open; check the brackets"
                )
            stack.pop()
            depth = len(stack)
        tokens.append(_Token(kind, value, match.start(), match.end(), depth))
    if stack:
        raise FormulaError(
            f"unbalanced parentheses in '{text}': the '{stack[-1][0]}' at character {stack[-1][1] + 1} is never "
            "closed; check the brackets"
        )
    return tokens


def _split_top(text: str, separators: set[str]) -> list[tuple[str, str]]:
    """Splits ``text`` at the depth-0 operators in ``separators``: [(separator before the piece, piece), ...]."""
    pieces, start, sign = [], 0, ""
    for token in _tokens(text):
        if token.kind == "op" and token.depth == 0 and token.text in separators:
            pieces.append((sign, text[start : token.start].strip()))
            sign, start = token.text, token.end
    pieces.append((sign, text[start:].strip()))
    return pieces


def _strip_parentheses(text: str) -> str:
    """``((1|g))`` -> ``1|g``: removes brackets that enclose the whole text."""
    while text.startswith("(") and text.endswith(")"):
        tokens = _tokens(text)
        closing = next(t for t in tokens if t.text == ")" and t.depth == 0)
        if closing.end != len(text):
            break
        text = text[1:-1].strip()
    return text


def _call(text: str, name: str) -> str | None:
    """The argument text of ``name(...)`` when ``text`` is exactly that call, else None."""
    tokens = _tokens(text)
    if len(tokens) < 3 or tokens[0].text != name or tokens[1].text != "(" or tokens[-1].text != ")":
        return None
    closing = next(t for t in tokens[2:] if t.text == ")" and t.depth == 0)
    return text[tokens[1].end : tokens[-1].start].strip() if closing is tokens[-1] else None


def _has_bar(text: str) -> bool:
    return any(t.kind == "op" and t.text in ("|", "||") for t in _tokens(text))


def _groupings(factor: str, formula: str) -> tuple[tuple[str, ...], ...]:
    """``a/b`` -> ((a,), (b, a)); ``a:b`` -> ((a, b),); ``a/b/c`` -> ((a,), (b, a), (c, b, a))."""
    for token in _tokens(factor):
        if not (token.kind in ("name", "backtick") or (token.kind == "op" and token.text in ":/")):
            raise FormulaError(
                f"the grouping factor '{factor}' in '{formula}' must be column names joined by ':' (interaction) "
                "or '/' (nesting), as in (1|BROOD), (1|a:b) or (1|a/b)"
            )
    nests = []
    for _, piece in _split_top(factor, {"/"}):
        names = tuple(name.strip().strip("`") for _, name in _split_top(piece, {":"}))
        if not all(names):
            raise FormulaError(f"the grouping factor '{factor}' in '{formula}' has an empty part; name a column")
        nests.append(names)
    expanded, outer = [], ()
    for names in nests:  # lme4 names the inner factor of a/b "b:a"
        outer = names + outer
        expanded.append(outer)
    return tuple(expanded)


def parse_formula(text: str) -> ParsedFormula:
    """Splits an lme4 formula into response, fixed part, offsets and random terms (string work only).

    Args:
        text: the formula, such as ``"TICKS ~ YEAR + scale(HEIGHT) + (1|BROOD) + (1|LOCATION)"``.

    Returns:
        The parts.

    Raises:
        FormulaError: no ``~`` (or more than one), no response, an empty right side, unbalanced parentheses, a
            ``|`` outside a parenthesised random term, an empty term or grouping factor in a random term, a
            random term or offset not added with ``+``, or a ``cbind`` without two arguments.
    """
    text = str(text).strip()
    if not text:
        raise FormulaError('is empty; write a formula such as "y ~ x + (1|group)"')
    tokens = _tokens(text)
    tildes = [t for t in tokens if t.text == "~"]
    if not tildes:
        raise FormulaError(f"'{text}' has no '~'; write the response on its left: \"y ~ x + (1|group)\"")
    if len(tildes) > 1 or tildes[0].depth > 0:
        raise FormulaError(f"'{text}' must have one '~', between the response and the terms, outside brackets")
    lhs, rhs = text[: tildes[0].start].strip(), text[tildes[0].end :].strip()
    if not lhs:
        raise FormulaError(f"'{text}' has no response left of '~'; name the response column, as in \"y ~ x\"")
    if not rhs:
        raise FormulaError(f"'{text}' has nothing right of '~'; write the terms, or 1 for an intercept only")
    bars = [t for t in _tokens(rhs) if t.kind == "op" and t.text in ("|", "||") and t.depth == 0]
    if bars:
        raise FormulaError(
            f"'{text}' has a '{bars[0].text}' outside parentheses; write each random term in its own "
            "parentheses, as in (1 + x | group)"
        )

    kept, offsets, random = [], [], []
    for position, (sign, piece) in enumerate(_split_top(rhs, {"+", "-"})):
        if not piece:
            if position == 0 and sign == "":
                continue  # a leading sign: "-1 + x"
            raise FormulaError(f"'{text}' has an empty term (two operators in a row, or one at the end)")
        inner = _strip_parentheses(piece)
        offset = _call(inner, "offset")
        if piece.startswith("(") and _top_bar(inner):
            if sign == "-":
                raise FormulaError(f"the random term '{piece}' in '{text}' is subtracted; add it with '+'")
            random.append(_bar_term(inner, piece, text))
        elif offset is not None:
            if sign == "-":
                raise FormulaError(f"'offset({offset})' in '{text}' is subtracted; add it with '+'")
            if not offset:
                raise FormulaError(f"'offset()' in '{text}' is empty; write offset(log(exposure)) or similar")
            offsets.append(offset)
        elif _has_bar(piece):
            raise FormulaError(
                f"the random term in '{piece}' must stand alone, joined to the rest with '+', as in "
                "y ~ x + (1 + x | group)"
            )
        elif any(t.text == "offset" for t in _tokens(piece)):
            raise FormulaError(f"'offset(...)' in '{piece}' must stand alone, joined to the rest with '+'")
        else:
            kept.append((sign or "+", piece))
    fixed = " ".join(f"{sign} {piece}" for sign, piece in kept).strip()
    if not kept:
        fixed = "1"
    elif kept[0][0] == "+":
        fixed = fixed[1:].strip()
    else:
        fixed = "1 " + fixed  # "-1 + x": R's intercept, then taken away
    cbind = _call(lhs, "cbind")
    if cbind is not None:
        arguments = [piece for _, piece in _split_top(cbind, {","})]
        if len(arguments) != 2 or not all(arguments):
            raise FormulaError(
                f"cbind in '{text}' needs two arguments, successes and failures, as in "
                "cbind(incidence, size - incidence)"
            )
        response_args = tuple(arguments)
    else:
        response_args = (lhs,)
    return ParsedFormula(text, lhs, response_args, cbind is not None, fixed, tuple(offsets), tuple(random))


def _top_bar(inner: str) -> bool:
    """A bar outside further brackets: ``1 + x | g`` is a random term, ``f(a | b)`` is not."""
    return any(t.kind == "op" and t.text in ("|", "||") and t.depth == 0 for t in _tokens(inner))


def _bar_term(inner: str, piece: str, text: str) -> BarTerm:
    bars = [t for t in _tokens(inner) if t.kind == "op" and t.text in ("|", "||") and t.depth == 0]
    if len(bars) > 1:
        raise FormulaError(f"the random term '{piece}' in '{text}' has more than one bar; write (terms | factor)")
    terms, factor = inner[: bars[0].start].strip(), inner[bars[0].end :].strip()
    if not terms:
        raise FormulaError(f"the random term '{piece}' in '{text}' has no terms left of the bar; write (1 | {factor})")
    if not factor:
        raise FormulaError(
            f"the random term '{piece}' in '{text}' has no grouping factor right of the bar; name the column "
            "that groups the rows, as in (1 | group)"
        )
    return BarTerm(terms, factor, bars[0].text == "||", _groupings(factor, text))


# ----- names, safety and columns ---------------------------------------------------------------------------------
def _allowed_calls() -> frozenset[str]:
    from formulaic.transforms import TRANSFORMS

    return frozenset(TRANSFORMS) - {"np", "contr"} | frozenset(EXTRA_FUNCTIONS)


# R's names for common functions that formulaic spells np.xxx.
EXTRA_FUNCTIONS = {"sqrt": np.sqrt, "abs": np.abs, "log1p": np.log1p, "expm1": np.expm1}
_MODULES = {"np", "numpy"}
_CONTRASTS = {"treatment", "sum", "helmert", "poly", "diff", "custom"}
_CONSTANTS = {"True", "False", "None", "pi", "inf"}


def _column_names(expression: str, columns: Sequence[str], formula: str) -> list[str]:
    """The column names ``expression`` reads, refusing what could run other code than arithmetic on columns.

    A name called as a function must be formulaic's transform or one of ``EXTRA_FUNCTIONS``; attributes only of
    numpy (its ufuncs: ``np.log``) and of formulaic's ``contr``; no name starting with ``_`` but columns'.
    """
    tokens = _tokens(expression)
    known = set(columns)
    calls = _allowed_calls()
    used: list[str] = []
    for index, token in enumerate(tokens):
        after = tokens[index + 1].text if index + 1 < len(tokens) else ""
        before = tokens[index - 1].text if index > 0 else ""
        if token.kind == "backtick":
            name = token.text[1:-1]
            if name not in known:
                raise _unknown_column(name, columns, formula)
            used.append(name)
        elif token.kind == "op" and token.text == ".":
            module = tokens[index - 1] if index > 0 else None
            attribute = tokens[index + 1] if index + 1 < len(tokens) else None
            if not (module and attribute and module.kind == "name" and attribute.kind == "name"):
                raise _not_allowed(f"'.{after}'", formula)
            if module.text in _MODULES:
                if not isinstance(getattr(np, attribute.text, None), np.ufunc):
                    raise _not_allowed(f"'{module.text}.{attribute.text}'", formula)
            elif not (module.text == "contr" and attribute.text in _CONTRASTS):
                raise _not_allowed(f"'{module.text}.{attribute.text}'", formula)
        elif token.kind == "name":
            if before == ".":
                continue  # checked with its module
            if after == "(":
                if token.text not in calls:
                    raise FormulaError(
                        f"'{token.text}(...)' in '{formula}' is not a function formulas know; use log, exp, sqrt, "
                        "abs, scale, center, I, C, poly, bs or numpy's math functions (np.log1p, ...)"
                    )
            elif after == "." and token.text in _MODULES | {"contr"}:
                continue
            elif after == "=" and before in ("(", ","):
                continue  # a keyword argument: scale(x, ddof=0)
            elif token.text in known and not token.text.startswith("__"):
                used.append(token.text)
            elif token.text not in _CONSTANTS:
                raise _unknown_column(token.text, columns, formula)
    return used


def _not_allowed(what: str, formula: str) -> FormulaError:
    return FormulaError(
        f"{what} in '{formula}' is not allowed: a formula may read columns and call math functions "
        "(log, np.sqrt, ...), nothing else"
    )


def _listed(columns: Sequence[str]) -> str:
    shown = ", ".join(str(c) for c in list(columns)[:MAX_LISTED_COLUMNS])
    more = len(columns) - MAX_LISTED_COLUMNS
    return shown + (f" and {more} more" if more > 0 else "")


def _unknown_column(name: str, columns: Sequence[str], formula: str) -> FormulaError:
    return FormulaError(
        f"the table has no column '{name}' (used in '{formula}'); its columns are {_listed(columns)}; "
        "fix the name in the formula (names are case-sensitive)"
    )


def _pythonise(expression: str) -> str:
    """R's power ``^`` inside a function's brackets is Python's ``**`` (formulaic reads it there as xor)."""
    out, last = [], 0
    for token in _tokens(expression):
        if token.kind == "op" and token.text == "^" and token.depth > 0:
            out.append(expression[last : token.start] + "**")
            last = token.end
    return "".join(out) + expression[last:]


# ----- labels and levels -----------------------------------------------------------------------------------------
def _r_number(value: float) -> str:
    """A number as R prints a factor level made from it: 95 -> "95", 0.5 -> "0.5"."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(float(value), ".15g")


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) and not isinstance(series.dtype, pd.CategoricalDtype)


def _missing(series: pd.Series) -> np.ndarray:
    if _is_numeric(series):
        return np.isnan(series.to_numpy(dtype=np.float64))
    return np.asarray(series.isna().to_numpy() | (series.astype(str).str.strip() == ""), dtype=bool)


def _labels(series: pd.Series) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each row's label and the labels in R's factor order (numbers numerically, text as sorted strings)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        present = set(series.astype(str))
        order = tuple(str(c) for c in series.cat.categories if str(c) in present)
        return series.astype(str).to_numpy(dtype=object), order
    if _is_numeric(series):
        values = series.to_numpy(dtype=np.float64)
        unique = np.unique(values)
        labels = {v: _r_number(v) for v in unique}
        return np.array([labels[v] for v in values], dtype=object), tuple(labels[v] for v in unique)
    labels = series.astype(str).to_numpy(dtype=object)
    return labels, tuple(sorted(set(labels)))


def _grouping(frame: pd.DataFrame, names: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Level index (n,) and labels of the interaction of ``names``: labels joined by ':', the first name slowest."""
    ranks, labels = [], []
    for name in names:
        row_labels, order = _labels(frame[name])
        position = {label: k for k, label in enumerate(order)}
        ranks.append(np.array([position[label] for label in row_labels], dtype=np.int64))
        labels.append(row_labels)
    keys = np.stack(ranks, axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    first = {}
    for row, code in enumerate(inverse.reshape(-1)):
        first.setdefault(int(code), row)
    levels = tuple(":".join(str(labels[j][first[code]]) for j in range(len(names))) for code in range(len(unique)))
    return inverse.reshape(-1).astype(np.int64), levels


# ----- the design ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RandomBlock:
    """One ``(terms | factor)`` block after expansion.

    Attributes:
        factor: the grouping factor as lme4 prints it (``"BROOD"``; ``(1|a/b)`` gives ``"a"`` and ``"b:a"``).
        terms: the random terms' names as lme4 prints them (``"(Intercept)"``, ``"x"``).
        columns: (n, q) float64 random-effect covariates of each row (ones for the intercept).
        group: (n,) int64 each row's level 0..G-1.
        levels: the G level labels, in index order (R's sort: numbers numerically, text as strings).
        spec: formulaic's ModelSpec of ``terms``, to build the same columns on new data.
        groupings: the column names whose labels make the factor (``("b", "a")`` for ``b:a``).
    """

    factor: str
    terms: tuple[str, ...]
    columns: np.ndarray
    group: np.ndarray
    levels: tuple[str, ...]
    spec: Any = field(default=None, repr=False)
    groupings: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class MixedDesign:
    """A formula evaluated on a table: everything a mixed model needs, row by row.

    Attributes:
        formula: the formula as given.
        response_name: the response as written (``"TICKS"``, ``"cbind(incidence, size - incidence)"``).
        response: (n,) float64 response; for ``cbind(k, m)`` the successes k. A factor response (text column) is
            0 for its first level and 1 otherwise, as R's glm reads it.
        trials: (n,) float64 k + m for ``cbind(k, m)``, else None.
        offset: (n,) float64 sum of the ``offset(...)`` terms, zeros if none.
        fixed: (n, p) float64 fixed-effect model matrix.
        fixed_names: the p column names as lme4 prints them.
        random: the random-effect blocks in formula order.
        rows: (n,) int64 index (0-based, in the input table) of each kept row.
        dropped: rows dropped for a missing value in a column the formula uses.
        parsed: the formula's parts.
        fixed_spec: formulaic's ModelSpec of the fixed part (stateful transforms keep the training mean and sd).
        response_specs: ModelSpecs of the response expressions (one, or cbind's two).
        offset_specs: ModelSpecs of the offsets.
        categories: the training levels of every factor column the fixed part or random terms use.
        factors: the numeric columns read as factors.
    """

    formula: str
    response_name: str
    response: np.ndarray
    trials: np.ndarray | None
    offset: np.ndarray
    fixed: np.ndarray
    fixed_names: tuple[str, ...]
    random: tuple[RandomBlock, ...]
    rows: np.ndarray
    dropped: int
    parsed: ParsedFormula | None = field(default=None, repr=False)
    fixed_spec: Any = field(default=None, repr=False)
    response_specs: tuple[Any, ...] = field(default=(), repr=False)
    offset_specs: tuple[Any, ...] = field(default=(), repr=False)
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    factors: tuple[str, ...] = ()


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _materialise(formula_or_spec, data: pd.DataFrame, what: str, formula: str):
    """formulaic's model matrix of ``formula_or_spec`` on ``data`` (rows kept as they are), its errors as ours."""
    import formulaic

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unseen levels are refused before, by _typed_frame
            if isinstance(formula_or_spec, str):
                matrix = formulaic.model_matrix(formula_or_spec, data, na_action="ignore", context=EXTRA_FUNCTIONS)
            else:
                matrix = formula_or_spec.get_model_matrix(data, context=EXTRA_FUNCTIONS)
    except FormulaError:
        raise
    except Exception as error:  # formulaic's parser and the evaluation of users' expressions raise many kinds
        raise FormulaError(
            f"cannot evaluate {what} of '{formula}' ({type(error).__name__}: {_one_line(error)}); check the "
            "formula's syntax, that functions are applied to numeric columns and that the names are columns"
        ) from None
    if len(matrix) != len(data):
        raise FormulaError(f"{what} of '{formula}' gave {len(matrix)} rows for {len(data)}; simplify the term")
    return matrix


def _lme4_name(name: str) -> str:
    """formulaic's column name as lme4 prints it: ``Intercept`` -> ``(Intercept)``, ``trt[T.b]:x`` -> ``trtb:x``."""
    if name == "Intercept":
        return "(Intercept)"
    parts, depth, start = [], 0, 0
    for position, char in enumerate(name):  # levels may hold quotes: count brackets only
        depth += (char in _OPEN) - (char in _CLOSE)
        if char == ":" and depth == 0:
            parts.append(name[start:position])
            start = position + 1
    parts.append(name[start:])
    renamed = []
    for part in parts:
        if part.endswith("]"):
            depth = 0
            for opening in range(len(part) - 1, -1, -1):
                depth += (part[opening] in _CLOSE) - (part[opening] in _OPEN)
                if depth == 0:
                    break
            level = part[opening + 1 : -1]
            part = part[:opening] + (level[2:] if level.startswith("T.") else level)
        renamed.append(part)
    return ":".join(renamed)


def _check_finite(values: np.ndarray, names: Sequence[str], rows: np.ndarray, frame: pd.DataFrame, formula: str):
    """Refuses NaN or ±inf in (n, k) ``values``, naming the term and the row of the table."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    row, column = np.argwhere(bad)[0]
    lines = frame.attrs.get("lines")
    index = int(rows[row])
    place = f"line {lines[index]} of the file" if lines else f"row index {index} (0-based)"
    raise FormulaError(
        f"'{names[column]}' is {values[row, column]} at {place} (a transformation of a value outside its "
        f"domain, such as log(0), or an infinite cell) in '{formula}'; change the transformation (log(x + 1)) or "
        "drop that row"
    )


def _aliased(matrix: np.ndarray) -> int | None:
    """The first column of (n, p) ``matrix`` that is a linear combination of the columns before it, or None."""
    basis: list[np.ndarray] = []
    for j in range(matrix.shape[1]):
        column = matrix[:, j].astype(np.float64)
        norm = np.linalg.norm(column)
        if norm == 0.0:
            return j
        residual = column / norm
        for _ in range(2):  # Gram-Schmidt twice: one pass loses orthogonality on nearly dependent columns
            for vector in basis:
                residual = residual - (vector @ residual) * vector
        size = np.linalg.norm(residual)
        if size < RANK_TOLERANCE:
            return j
        basis.append(residual / size)
    return None


def _scan_columns(parsed: ParsedFormula, frame: pd.DataFrame, with_response: bool = True) -> dict[str, list[str]]:
    """The columns each part of the formula reads; refuses unknown names and code that is not arithmetic."""
    columns = [str(c) for c in frame.columns]
    text = parsed.text
    parts = {
        "response": [n for arg in parsed.response_args for n in _column_names(arg, columns, text)]
        if with_response
        else [],
        "fixed": _column_names(parsed.fixed, columns, text),
        "offset": [n for expression in parsed.offsets for n in _column_names(expression, columns, text)],
        "random": [n for bar in parsed.bars for n in _column_names(bar.terms, columns, text)],
    }
    grouping = []
    for bar in parsed.bars:
        for names in bar.groupings:
            for name in names:
                if name not in columns:
                    raise FormulaError(
                        f"the grouping factor '{name}' of '({bar.terms} | {bar.factor})' is not a column of the "
                        f"table; its columns are {_listed(columns)}; name the column that groups the rows"
                    )
                grouping.append(name)
    parts["grouping"] = grouping
    return parts


def _typed_frame(
    frame: pd.DataFrame,
    names: Sequence[str],
    factors: Sequence[str],
    categories: Mapping[str, tuple[str, ...]] | None,
    formula: str,
) -> tuple[pd.DataFrame, dict[str, tuple[str, ...]]]:
    """The columns formulaic reads: numbers as float64, text and ``factors`` as categoricals in R's level order.

    With ``categories`` (the training levels) a factor keeps the training levels and a label outside them is
    refused; a column that was numeric in training must be numeric here.
    """
    data, found = {}, {}
    for name in dict.fromkeys(names):
        series = frame[name].reset_index(drop=True)
        as_factor = name in factors or not _is_numeric(series)
        if categories is not None:
            if name in categories:
                labels, _ = _labels(series)
                unseen = sorted(set(labels) - set(categories[name]))
                if unseen:
                    raise FormulaError(
                        f"column '{name}' has the level '{unseen[0]}' that the training table did not have "
                        f"(its levels: {_listed(categories[name])}); a fixed effect cannot be predicted for an "
                        "unseen level: drop those rows or refit with them"
                    )
                data[name] = pd.Categorical(labels, categories=list(categories[name]))
                continue
            if as_factor:
                raise FormulaError(
                    f"column '{name}' holds text in this table but numbers in the training table; make it numeric"
                )
        if as_factor:
            labels, order = _labels(series)
            data[name] = pd.Categorical(labels, categories=list(order))
            found[name] = order
        else:
            data[name] = series.to_numpy(dtype=np.float64)
    return pd.DataFrame(data, index=pd.RangeIndex(len(frame))), found


def _evaluate_expression(expression: str, spec, data: pd.DataFrame, formula: str, what: str):
    """One number per row from ``expression`` (a response, a cbind argument or an offset) and its ModelSpec."""
    if spec is None and expression.strip("` ") in data.columns:
        column = data[expression.strip("` ")]
        if isinstance(column.dtype, pd.CategoricalDtype) and what == "the response":
            # R's glm: a factor response is 0 for its first level, 1 for the others
            return (column.cat.codes.to_numpy() > 0).astype(np.float64), None
    matrix = _materialise(spec if spec is not None else f"0 + I({_pythonise(expression)})", data, what, formula)
    if matrix.shape[1] != 1:
        raise FormulaError(
            f"{what} '{expression}' in '{formula}' gives {matrix.shape[1]} columns, not one number per row; "
            "use a numeric column or an expression of numeric columns"
        )
    return np.asarray(matrix, dtype=np.float64)[:, 0], matrix.model_spec


def _random_blocks(
    parsed: ParsedFormula,
    data: pd.DataFrame,
    kept: pd.DataFrame,
    specs: Sequence[Any] | None,
    formula: str,
) -> list[RandomBlock]:
    """The random blocks of ``parsed`` on ``data`` (typed) with groups from ``kept`` (the raw kept rows)."""
    from formulaic import Formula

    blocks, index = [], 0
    for bar in parsed.bars:
        if bar.uncorrelated:  # (1 + x || g) = (1|g) + (0 + x|g): one block per term
            try:
                terms = [str(term) for term in Formula(_pythonise(bar.terms))]
            except Exception as error:
                raise FormulaError(
                    f"cannot read the random terms '{bar.terms}' of '{formula}': {_one_line(error)}"
                ) from None
            pieces = ["1" if term == "1" else f"0 + {term}" for term in terms]
        else:
            pieces = [_pythonise(bar.terms)]
        for names in bar.groupings:
            group, levels = _grouping(kept, names)
            for piece in pieces:
                what = f"the random term '({bar.terms} | {bar.factor})'"
                matrix = _materialise(specs[index] if specs is not None else piece, data, what, formula)
                index += 1
                if matrix.shape[1] == 0:
                    raise FormulaError(
                        f"the random term '({bar.terms} | {bar.factor})' in '{formula}' has no terms (0 or -1 "
                        "alone); write (1 | group) for a random intercept"
                    )
                blocks.append(
                    RandomBlock(
                        factor=":".join(names),
                        terms=tuple(_lme4_name(str(c)) for c in matrix.columns),
                        columns=np.asarray(matrix, dtype=np.float64),
                        group=group,
                        levels=levels,
                        spec=matrix.model_spec,
                        groupings=names,
                    )
                )
    return blocks


def _design(
    formula: str,
    frame: pd.DataFrame,
    factors: Sequence[str],
    template: MixedDesign | None,
    with_response: bool = True,
) -> MixedDesign:
    parsed = template.parsed if template is not None else parse_formula(formula)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"build_design needs a pandas DataFrame, not {type(frame).__name__}")
    columns = [str(c) for c in frame.columns]
    for name in factors:
        if name not in columns:
            raise FormulaError(
                f"'{name}' is not a column of the table; its columns are {_listed(columns)}", key="data.factors"
            )
    used = _scan_columns(parsed, frame, with_response)
    every = list(dict.fromkeys(used["response"] + used["fixed"] + used["offset"] + used["random"] + used["grouping"]))
    missing = np.zeros(len(frame), dtype=bool)
    for name in every:
        missing |= _missing(frame[name])
    rows = np.flatnonzero(~missing).astype(np.int64)
    if rows.size == 0:
        raise FormulaError(
            f"every one of the {len(frame)} rows misses a value in a column of '{formula}' "
            f"({', '.join(every)}); fill in the missing cells or leave the empty column out"
        )
    kept = frame.iloc[rows].reset_index(drop=True)
    modelled = list(dict.fromkeys(used["response"] + used["fixed"] + used["offset"] + used["random"]))
    categories = template.categories if template is not None else None
    data, found = _typed_frame(kept, modelled, factors, categories, formula)

    response_specs, values = [], []
    for k, expression in enumerate(parsed.response_args if with_response else ()):
        spec = template.response_specs[k] if template is not None else None
        value, spec = _evaluate_expression(expression, spec, data, formula, "the response")
        values.append(value)
        response_specs.append(spec)
    if not with_response:
        response, trials = np.full(len(rows), np.nan), (np.full(len(rows), np.nan) if parsed.cbind else None)
    elif parsed.cbind:
        response, trials = values[0], values[0] + values[1]
    else:
        response, trials = values[0], None

    offset = np.zeros(len(rows))
    offset_specs = []
    for k, expression in enumerate(parsed.offsets):
        spec = template.offset_specs[k] if template is not None else None
        value, spec = _evaluate_expression(expression, spec, data, formula, "the offset")
        _check_finite(value[:, None], [f"offset({expression})"], rows, frame, formula)
        offset = offset + value
        offset_specs.append(spec)

    fixed_matrix = _materialise(
        template.fixed_spec if template is not None else _pythonise(parsed.fixed), data, "the fixed part", formula
    )
    fixed = np.asarray(fixed_matrix, dtype=np.float64).reshape(len(rows), -1)
    fixed_names = tuple(_lme4_name(str(c)) for c in fixed_matrix.columns)
    _check_finite(fixed, fixed_names, rows, frame, formula)
    if template is None:
        aliased = _aliased(fixed)
        if aliased is not None:
            raise FormulaError(
                f"the fixed-effect column '{fixed_names[aliased]}' of '{formula}' is a linear combination of the "
                "columns before it (rank-deficient design: lme4 would drop it); remove that term from the formula"
            )
    if with_response:
        _check_finite(response[:, None], [parsed.lhs], rows, frame, formula)
        if trials is not None:
            _check_finite(trials[:, None], [parsed.lhs], rows, frame, formula)

    specs = [block.spec for block in template.random] if template is not None else None
    blocks = _random_blocks(parsed, data, kept, specs, formula)
    for block in blocks:
        _check_finite(block.columns, block.terms, rows, frame, formula)

    return MixedDesign(
        formula=formula,
        response_name=parsed.lhs,
        response=response,
        trials=trials,
        offset=offset,
        fixed=fixed,
        fixed_names=fixed_names,
        random=tuple(blocks),
        rows=rows,
        dropped=int(len(frame) - rows.size),
        parsed=parsed,
        fixed_spec=fixed_matrix.model_spec,
        response_specs=tuple(response_specs),
        offset_specs=tuple(offset_specs),
        categories=dict(template.categories) if template is not None else found,
        factors=tuple(factors),
    )


def build_design(formula: str, frame: pd.DataFrame, factors: Sequence[str] = ()) -> MixedDesign:
    """Evaluates an lme4 formula on a table.

    Args:
        formula: such as ``"TICKS ~ YEAR + scale(HEIGHT) + (1|BROOD) + (1|LOCATION)"``.
        frame: the table (``read_frame``); string columns are factors.
        factors: numeric columns to read as factors (YEAR 95/96/97, period 1..4).

    Returns:
        The design on the rows that miss no value in the formula's columns.

    Raises:
        FormulaError: a bad formula, an unknown column, an expression that cannot be evaluated or gives a
            non-finite value, a rank-deficient fixed part, or no rows left.
    """
    return _design(str(formula), frame, tuple(str(f) for f in factors), None)


def design_on_new_data(design: MixedDesign, frame: pd.DataFrame, with_response: bool = True) -> MixedDesign:
    """The same formula on another table with the training design's contrasts, levels and transforms.

    ``scale()`` uses the training mean and sd; factors keep the training levels, and a level the training table
    did not have is refused. Random blocks carry this table's own group labels (the caller matches them to the
    fitted groups); rows missing a value are dropped as in training.

    Args:
        design: the training design (from ``build_design``).
        frame: the new table, with the columns the formula uses.
        with_response: False when the table has no response: ``response`` (and ``trials``) are then NaN.

    Returns:
        The design on the new table.

    Raises:
        FormulaError: a missing column, an unseen level of a factor, a non-finite value, or no rows left.
    """
    if design.parsed is None or design.fixed_spec is None:
        raise ValueError("design_on_new_data needs a design made by build_design")
    return _design(design.formula, frame, design.factors, design, with_response)
