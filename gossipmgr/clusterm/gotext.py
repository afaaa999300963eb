"""Go's printing, as clusterctl's output and the Go client's bodies need it, byte for byte:
``fmt.Sprint`` of JSON values, ``strconv.Quote``, encoding/json's compact form and
``json.Indent``, and logrus' fatal line."""

import datetime as _dt
import json
import time
from collections.abc import Mapping
from typing import Any, Final

_START = time.monotonic()


def go_float(f: float) -> str:
    """``fmt.Sprint(float64)``: %g with the shortest digits, exponent when < -4 or >= 6
    (e.g. 1e+06, 1.764437123456e+12, 0.0001, 1e-05)."""
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if str(f).startswith("-") else "0"
    sign = "-" if f < 0 else ""
    r = repr(abs(f))  # shortest round-trip digits, as Go's
    mant, _, exp_s = r.partition("e")
    whole, _, frac = mant.partition(".")
    digits = (whole + frac).lstrip("0")
    lead_zeros = len(whole + frac) - len((whole + frac).lstrip("0"))
    dp = len(whole) - lead_zeros + (int(exp_s) if exp_s else 0)
    digits = digits.rstrip("0") or "0"
    x = dp - 1
    if x < -4 or x >= 6:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{m}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def go_sorted(m: Mapping[str, Any]) -> list[str]:
    # text/template ranges over a map's keys in sorted (byte) order
    return sorted(m, key=lambda k: k.encode("utf-8", "surrogatepass"))


def go_fmt(v: Any) -> str:
    """``fmt.Sprint`` of a value decoded from JSON into ``interface{}``."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return go_float(float(v))
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_fmt(v[k])}" for k in go_sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_fmt(x) for x in v) + "]"
    return str(v)


def go_json_indent(src: str, indent: str = "    ") -> str:
    """``json.Indent(dst, src, "", indent)``: strings copied as they are, ``{}``/``[]``
    kept compact, leading whitespace dropped, trailing whitespace kept."""
    out: list[str] = []
    depth = 0
    need_indent = False  # an opening bracket waits to see whether it is empty
    i, n = 0, len(src)
    stripped = src.lstrip(" \t\r\n")
    i = n - len(stripped)
    end = len(src.rstrip(" \t\r\n"))
    while i < end:
        c = src[i]
        if c in " \t\r\n":
            i += 1
            continue
        if need_indent and c not in "]}":
            need_indent = False
            depth += 1
            out.append("\n" + indent * depth)
        if c == '"':
            j = i + 1
            while j < end and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
            continue
        if c in "[{":
            out.append(c)
            need_indent = True
        elif c in "]}":
            if need_indent:
                need_indent = False  # empty: "[]" / "{}"
            else:
                depth -= 1
                out.append("\n" + indent * depth)
            out.append(c)
        elif c == ",":
            out.append(",\n" + indent * depth)
        elif c == ":":
            out.append(": ")
        else:
            out.append(c)
        i += 1
    return "".join(out) + src[end:]


#: strconv.Quote's backslash escapes: the quote, the backslash and the C escapes.
_GO_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\t": "\\t",
    "\r": "\\r",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\v": "\\v",
}


def go_quote(s: str) -> str:
    """``strconv.Quote`` (``%q``)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif not ch.isprintable() and o > 0x7F:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _needs_no_quoting(text: str) -> bool:
    # logrus' (misnamed) needsQuoting: True when the text is plain
    return all(c.isascii() and (c.isalnum() or c in "-.") for c in text)


def fatal_line(msg: str, *, tty: bool) -> str:
    """logrus' TextFormatter line for ``logrus.Fatalf(msg)``."""
    if tty:
        return f"\x1b[31mFATA\x1b[0m[{int(time.monotonic() - _START):04d}] {msg:<44} \n"
    now = _dt.datetime.now().astimezone().replace(microsecond=0).isoformat()
    now = now.replace("+00:00", "Z")
    m = msg if _needs_no_quoting(msg) else go_quote(msg)
    return f"time={go_quote(now)} level=fatal msg={m} \n"


def go_json(v: Any) -> str:
    """encoding/json's compact form: ``<``, ``>``, ``&`` escaped, key order kept."""
    s = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    s = s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
