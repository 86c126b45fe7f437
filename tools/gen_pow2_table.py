"""Generates the threshold tables of csrc/core/pow2.h (the exact 2^round(log2 m) of Libra-PB).

For a compute type T (float: 23 fraction bits, double: 52) and a gap g = 2^-j between
h = e + 1/2 and its T neighbour, the tables hold the T values in [1, 2)

    FA(j) = ceil_T(2^(1/2 - g/2))   (f >= FA: RN_T(e + log2 f) >= h)
    FB(j) = ceil_T(2^(1/2 + g/2))   (f >= FB: RN_T(e + log2 f) >  h)

computed with 80-digit decimal arithmetic (Python's decimal: exp and ln correctly
rounded), far more than the 2^-53 resolution needed; every value is checked to lie at
least 1e-30 (in units of the T grid) away from a grid point, so the ceiling is certain.

    python tools/gen_pow2_table.py            # print the block
    python tools/gen_pow2_table.py --write    # rewrite it in csrc/core/pow2.h
    python tools/gen_pow2_table.py --check    # exit 1 if the header differs
"""
from __future__ import annotations

import pathlib
import sys
from decimal import ROUND_CEILING, Decimal, getcontext
from fractions import Fraction

HEADER = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "core" / "pow2.h"
BEGIN, END = "// BEGIN GENERATED POW2 TABLES\n", "// END GENERATED POW2 TABLES\n"

# (C++ type, fraction bits, literal suffix, gap exponents j that occur): the gap below or
# above h = e + 1/2 for every frexp exponent e of a positive finite T value.
TYPES = (("float", 23, "f", range(16, 26)), ("double", 52, "", range(42, 55)))


def _ceil_on_grid(x: Decimal, frac_bits: int) -> int:
    y = x * (Decimal(2) ** frac_bits)
    c = y.to_integral_value(rounding=ROUND_CEILING)
    if c - y < Decimal(10) ** -30:
        raise ArithmeticError(f"{x} is too close to a grid point to round with certainty")
    return int(c)


def thresholds(frac_bits: int, j: int) -> tuple[int, int]:
    """(FA, FB) of gap 2^-j as integers on the grid 2^-frac_bits."""
    getcontext().prec = 80
    ln2 = Decimal(2).ln()
    half_gap = Decimal(2) ** (-j - 1)
    fa = ((Decimal("0.5") - half_gap) * ln2).exp()
    fb = ((Decimal("0.5") + half_gap) * ln2).exp()
    return _ceil_on_grid(fa, frac_bits), _ceil_on_grid(fb, frac_bits)


def _literal(grid: int, frac_bits: int, suffix: str) -> str:
    text = float(Fraction(grid, 2 ** frac_bits)).hex()  # exact: grid < 2^53
    mant, exp = text.split("p")
    return f"{mant.rstrip('0').rstrip('.')}p{exp}{suffix}"


def _used_gap_exponents(frac_bits: int, exp_min: int, exp_max: int) -> set[int]:
    """Gap exponents j of h = e + 1/2, both sides, for every frexp exponent e (exact)."""
    used = set()
    for e in range(exp_min, exp_max + 1):
        h = Fraction(2 * e + 1, 2)
        mag = abs(h)
        k = mag.numerator.bit_length() - mag.denominator.bit_length()  # floor(log2 |h|)
        if Fraction(2) ** k > mag:
            k -= 1
        ulp = Fraction(2) ** (k - frac_bits)
        # toward zero from an exact power of two the spacing halves
        toward_zero = ulp / 2 if mag == Fraction(2) ** k else ulp
        for gap in (ulp, toward_zero):
            used.add(-(gap.numerator.bit_length() - gap.denominator.bit_length()))
    return used


def block() -> str:
    lines = [BEGIN,
             "template <typename T>\nIRNET_HD T pow2_tie_start(int j);\n",
             "template <typename T>\nIRNET_HD T pow2_round_up(int j);\n"]
    for ctype, frac_bits, suffix, js in TYPES:
        exp_range = (-149, 127) if ctype == "float" else (-1074, 1023)  # f * 2^e, f in [1, 2)
        used = _used_gap_exponents(frac_bits, *exp_range)
        assert used == set(js), (ctype, sorted(used))
        table = {j: thresholds(frac_bits, j) for j in js}
        for name, idx in (("pow2_tie_start", 0), ("pow2_round_up", 1)):
            lines.append(f"template <>\nIRNET_HD inline {ctype} {name}<{ctype}>(int j) {{\n  switch (j) {{\n")
            for j in js:
                lines.append(f"    case {j}: return {_literal(table[j][idx], frac_bits, suffix)};\n")
            lines.append(f"    default: return quiet_nan<{ctype}>();\n  }}\n}}\n")
    lines.append(END)
    return "".join(lines)


def main(argv: list[str]) -> int:
    text = HEADER.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    new = block()
    if "--write" in argv:
        HEADER.write_text(text[:start] + new + text[stop:])
    elif "--check" in argv:
        if text[start:stop] != new:
            print(f"{HEADER}: the generated tables differ from tools/gen_pow2_table.py's output")
            return 1
    else:
        sys.stdout.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
