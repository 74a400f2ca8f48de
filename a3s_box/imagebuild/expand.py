"""Variable expansion in Dockerfile words, as Docker does for FROM, COPY, ADD, ENV, LABEL,
ARG, WORKDIR, USER, EXPOSE and STOPSIGNAL (never for RUN, CMD or ENTRYPOINT: their shell
expands those).

    $NAME  ${NAME}           the variable; unset expands to ""
    ${NAME:-word}            word when NAME is unset or empty     ${NAME-word}  when unset
    ${NAME:+word}            word when NAME is set and not empty  ${NAME+word}  when set
    E$                       a literal $ (E: the escape character, \\ or `)
    EE                       one literal escape character
    ${NAME:?word} ${#NAME} ${NAME%word} ...   not supported: ValueError

WORD in a default or alternative is itself expanded; E} there is a literal }. An escape
character before anything else is kept as written, and so is a $ not followed by a name.

Quotes are not handled here: the parser (a3s_box.imagebuild.dockerfile) removes them and writes
each $ they protected as E$, so that its words go through expand() unchanged otherwise.

Pure: no I/O. A malformed word raises ValueError with a short message; the caller knows
where the word is and places it.
"""
from __future__ import annotations

from collections.abc import Mapping

_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_SUPPORTED = "use $NAME, ${NAME}, ${NAME:-default} or ${NAME:+alternative}"


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """WORD with its variables replaced from ENV."""
    if escape not in ("\\", "`"):
        raise ValueError(f"escape character must be \\ or `, not {escape!r}")
    if "$" not in word and escape not in word:
        return word
    out, _ = _Expander(word, env, escape).scan(0, in_braces=False)
    return out


class _Expander:
    def __init__(self, word: str, env: Mapping[str, str], escape: str) -> None:
        self.s = word
        self.env = env
        self.esc = escape

    def scan(self, i: int, in_braces: bool) -> tuple[str, int]:
        """Expand from I up to the end, or (IN_BRACES) up to the `}` closing a ${...}:
        return the text and the index of that `}`."""
        s, out = self.s, []
        while i < len(s):
            ch = s[i]
            if ch == self.esc and i + 1 < len(s) and (
                    s[i + 1] in ("$", self.esc) or (in_braces and s[i + 1] == "}")):
                out.append(s[i + 1])
                i += 2
            elif ch == "$":
                text, i = self.dollar(i)
                out.append(text)
            elif ch == "}" and in_braces:
                return "".join(out), i
            else:
                out.append(ch)
                i += 1
        if in_braces:
            raise ValueError("unterminated ${...}: missing }")
        return "".join(out), i

    def dollar(self, i: int) -> tuple[str, int]:
        """The expansion of the `$` at I, and the index after it."""
        s = self.s
        j = i + 1
        if j < len(s) and s[j] == "{":
            return self.braced(i)
        if j < len(s) and (s[j] in _NAME_START or s[j] in _DIGITS):
            chars = _DIGITS if s[j] in _DIGITS else _NAME_CHARS
            k = j
            while k < len(s) and s[k] in chars:
                k += 1
            return self.env.get(s[j:k], ""), k
        return "$", j  # a $ not followed by a name stays as written

    def braced(self, i: int) -> tuple[str, int]:
        s = self.s
        j = i + 2
        if j >= len(s):
            raise ValueError("unterminated ${: missing a variable name and }")
        if s[j] not in _NAME_START:
            if s[j] == "}":
                raise ValueError("bad substitution ${}: a variable name is missing")
            if s[j] == "#":
                raise ValueError(f"${{#NAME}} (length) is not supported: {_SUPPORTED}")
            raise ValueError(f"bad substitution {self.shown(i)}: a variable name starts with "
                             "a letter or _")
        k = j
        while k < len(s) and s[k] in _NAME_CHARS:
            k += 1
        name = s[j:k]
        if k >= len(s):
            raise ValueError(f"unterminated ${{{name}: missing }}")
        if s[k] == "}":
            return self.env.get(name, ""), k + 1
        op = s[k:k + 2] if s[k] == ":" else s[k]
        if op not in (":-", ":+", "-", "+"):
            if op[:1] == ":" and len(op) == 2 and op[1] in "?=":
                raise ValueError(f"${{{name}{op}...}} is not supported: {_SUPPORTED}")
            if op[:1] in ("?", "=", "#", "%", "/", ":", "^", ","):
                raise ValueError(f"{self.shown(i)} is not supported: {_SUPPORTED}")
            raise ValueError(f"bad substitution {self.shown(i)}: a variable name holds only "
                             "letters, digits and _")
        word, end = self.scan(k + len(op), in_braces=True)
        value = self.env.get(name)
        if op == ":-":
            result = word if not value else value
        elif op == "-":
            result = word if value is None else value
        elif op == ":+":
            result = word if value else ""
        else:
            result = word if value is not None else ""
        return result, end + 1

    def shown(self, i: int) -> str:
        """The ${...} starting at I, as written (cut short when long or unterminated)."""
        end = self.s.find("}", i)
        text = self.s[i:] if end < 0 else self.s[i:end + 1]
        return text if len(text) <= 40 else text[:37] + "..."
