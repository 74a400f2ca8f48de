"""`.dockerignore`: which context paths COPY and ADD never see (Docker's rules: the
last matching pattern wins, `!` re-includes, a folder's pattern covers what is below it,
`**` spans any number of folders). Pure."""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):  # **/ : any folders, or none
                    i += 1
                    out.append("(?:.*/)?")
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + "(?:/.*)?$")  # a folder's pattern covers its contents


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    exclude: bool  # False: a `!` exception


class IgnoreRules:
    def __init__(self, rules: tuple[_Rule, ...] = ()) -> None:
        self.rules = rules

    @classmethod
    def parse(cls, text: str) -> "IgnoreRules":
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            if not exclude:
                line = line[1:].strip()
            line = posixpath.normpath(line).lstrip("/")
            if line in ("", "."):
                continue
            rules.append(_Rule(_regex(line), exclude))
        return cls(tuple(rules))

    @classmethod
    def load(cls, context: Path) -> "IgnoreRules":
        try:
            return cls.parse((context / ".dockerignore").read_text(errors="replace"))
        except FileNotFoundError:
            return cls()

    def ignored(self, rel_path: str) -> bool:
        path = posixpath.normpath(rel_path).lstrip("/")
        verdict = False
        for r in self.rules:
            if r.regex.match(path):
                verdict = r.exclude
        return verdict
