"""Does the output an answer shows match what its code printed when it ran?

Small models write "Output:" blocks with invented numbers. What is compared is the values: every
number (and TRUE/FALSE/NA) the answer shows must be one the code printed, allowing the shown value to
be the printed one rounded to the digits shown. Labels, spacing and elisions ("...") are free.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["compare_output", "values"]

# A number not glued to a name (`x2`, `df1`) and not a vector index (`[1]`, `[2,]`).
_NUMBER = re.compile(r"(?<![\w.\[])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?%?(?![\w\]])")
_WORD = re.compile(r"\b(TRUE|FALSE|NA|NaN|Inf)\b")
_INDEX = re.compile(r"\[\d*,?\d*\]")
MAX_REPORTED = 6


def values(text: str) -> list[str]:
    """The numbers and logical words of a text, in order, without vector indices like `[1]`."""
    text = _INDEX.sub(" ", text)
    found = [(m.start(), m.group(0)) for m in _NUMBER.finditer(text)]
    found += [(m.start(), m.group(0)) for m in _WORD.finditer(text)]
    return [v for _, v in sorted(found)]


def _decimal(token: str) -> Decimal | None:
    try:
        return Decimal(token.rstrip("%").lstrip("+"))
    except InvalidOperation:
        return None


def _matches(shown: str, printed: list[str], printed_set: set[str]) -> bool:
    if shown in printed_set:
        return True
    value = _decimal(shown)
    if value is None:
        return False
    exponent = value.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    half = Decimal(5) * Decimal(10) ** (-(places + 1))
    for token in printed:
        other = _decimal(token)
        if other is None:
            continue
        # The shown value may be the printed one rounded to the digits shown (0.05 for 0.0512),
        # or the same value written another way (5 for 5.0, 1e-04 for 0.0001).
        if other == value or abs(other - value) <= half:
            return True
    return False


def compare_output(shown: str, printed: str) -> tuple[bool, str]:
    """(passed, evidence). Passes when every value shown was printed; the evidence names the ones
    that were not and quotes the start of the real output."""
    wanted = values(shown)
    if not wanted:
        return True, "the shown output has no values to compare"
    got = values(printed)
    got_set = set(got)
    missing = [v for v in wanted if not _matches(v, got, got_set)]
    if not missing:
        return True, f"all {len(wanted)} values shown were printed"
    real = printed.strip() or "(nothing)"
    if len(real) > 400:
        real = real[:400] + "…"
    listed = ", ".join(missing[:MAX_REPORTED]) + (" …" if len(missing) > MAX_REPORTED else "")
    return False, (
        f"{len(missing)} of {len(wanted)} values shown were never printed by the code: {listed}. "
        f"The code really printed:\n{real}"
    )
