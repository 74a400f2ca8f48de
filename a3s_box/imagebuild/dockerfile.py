"""The Dockerfile parser: text in, a frozen Dockerfile out, or every problem at once.

    lines (BOM, CRLF) -> parser directives (# escape=, # syntax=) -> logical instructions
    (comments and blank lines dropped, also inside continuations) -> one Instruction each
    (keyword, flags, exec or shell form, words, ENV/LABEL/ARG pairs) -> stages -> checks
    across instructions (stage names, COPY --from)

Pure: no I/O, no expansion. Problems are collected as FILE:LINE:COL (path: the keyword)
and raised together as one DockerfileError.

Words of the instructions that are not shell commands (FROM, COPY, ADD, WORKDIR, USER,
EXPOSE, STOPSIGNAL, flag values, ENV/LABEL/ARG pairs) have their quotes removed and
escapes applied, as Docker does before expanding them; a `$` that quotes or an escape made
literal is written E$ (E: the escape character), and an E before a `$` or another E is
doubled, so that a3s_box.imagebuild.expand.expand() gives exactly Docker's value. Shell-form
words of RUN, CMD, ENTRYPOINT and HEALTHCHECK CMD are kept as written: the shell reads
`text`.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace

from a3s_box.errors import DockerfileError, Problem

KINDS = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "ENTRYPOINT", "CMD",
         "LABEL", "EXPOSE", "SHELL", "HEALTHCHECK", "STOPSIGNAL")

# Flags each instruction takes, with the value they expect ("" for a bare flag).
FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": "OS/ARCH"},
    "COPY": {"from": "STAGE", "chown": "USER[:GROUP]", "chmod": "MODE", "link": ""},
    "ADD": {"chown": "USER[:GROUP]", "chmod": "MODE"},
    "HEALTHCHECK": {"interval": "DURATION", "timeout": "DURATION", "start-period": "DURATION",
                    "retries": "N"},
}
_UNSUPPORTED = {
    "ONBUILD": "ONBUILD is not supported: write the instructions in the Dockerfile that "
               "builds FROM this image",
    "VOLUME": "VOLUME is not supported: declare volumes in the Boxfile (volumes:)",
    "MAINTAINER": "MAINTAINER is deprecated: use LABEL org.opencontainers.image.authors=...",
}
_USAGE = {
    "FROM": "FROM [--platform=OS/ARCH] IMAGE [AS NAME]",
    "COPY": "COPY [--from=STAGE] [--chown=USER[:GROUP]] [--chmod=MODE] SRC... DEST",
    "ADD": "ADD [--chown=USER[:GROUP]] [--chmod=MODE] SRC... DEST",
    "WORKDIR": "WORKDIR PATH",
    "USER": "USER NAME[:GROUP]",
    "EXPOSE": "EXPOSE PORT[/PROTOCOL]...",
    "STOPSIGNAL": "STOPSIGNAL SIGNAL",
    "ENV": "ENV NAME=VALUE...",
    "LABEL": "LABEL KEY=VALUE...",
    "ARG": "ARG NAME[=DEFAULT]...",
    "RUN": "RUN COMMAND or RUN [\"EXECUTABLE\", \"ARG\"...]",
    "CMD": "CMD COMMAND or CMD [\"EXECUTABLE\", \"ARG\"...]",
    "ENTRYPOINT": "ENTRYPOINT COMMAND or ENTRYPOINT [\"EXECUTABLE\", \"ARG\"...]",
    "SHELL": "SHELL [\"EXECUTABLE\", \"PARAMETERS\"...]",
    "HEALTHCHECK": "HEALTHCHECK [--interval=DURATION] [--timeout=DURATION] "
                   "[--start-period=DURATION] [--retries=N] CMD COMMAND, or HEALTHCHECK NONE",
}
_WS = " \t\r\f\v"
_DIRECTIVE = re.compile(r"#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.*?)[ \t]*\Z")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*\Z")
_DURATION = re.compile(r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|ms|s|m|h))+\Z|0\Z")
_HEREDOC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REMOTE = ("http://", "https://", "git@", "git://")


@dataclass(frozen=True)
class Heredoc:
    """`<<NAME` (or `<<-NAME`, `<<'NAME'`) in RUN, COPY or ADD and the lines up to NAME."""

    name: str
    lines: tuple[str, ...]  # as written (the shell strips a <<- heredoc's tabs itself)
    strip_tabs: bool  # <<-NAME
    quoted: bool  # <<'NAME' or <<"NAME": no $ expansion in the content

    @property
    def content(self) -> str:
        """What a file made from it holds (and a script run from it reads)."""
        return "".join((ln.lstrip("\t") if self.strip_tabs else ln) + "\n" for ln in self.lines)

    @property
    def written(self) -> str:
        """The body and its end line as the shell reads them after the command line."""
        return "".join(ln + "\n" for ln in self.lines) + self.name + "\n"


@dataclass(frozen=True)
class Instruction:
    kind: str
    flags: tuple[tuple[str, str], ...]
    words: tuple[str, ...]  # COPY/ADD: a heredoc source is the word "<<NAME"
    text: str
    exec_form: bool
    pairs: tuple[tuple[str, str | None], ...]
    source: str
    file: str
    line: int
    column: int
    heredocs: tuple[Heredoc, ...] = ()  # in the order they are written

    def flag(self, name: str) -> str | None:
        """The value of --NAME ("" for a bare flag), or None when it is not given."""
        for key, value in self.flags:
            if key == name:
                return value
        return None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Stage:
    index: int
    name: str | None
    base: str
    platform: str | None
    from_: Instruction
    instructions: tuple[Instruction, ...]


@dataclass(frozen=True)
class Dockerfile:
    file: str
    global_args: tuple[Instruction, ...]
    stages: tuple[Stage, ...]
    escape: str = "\\"  # the escape character (# escape=): pass it to expand()

    def stage(self, name_or_index: str) -> Stage | None:
        """The stage named so (AS NAME, any case), or with this decimal index."""
        if re.fullmatch(r"[0-9]+", name_or_index):
            i = int(name_or_index)
            return self.stages[i] if i < len(self.stages) else None
        wanted = name_or_index.lower()
        return next((s for s in self.stages if s.name == wanted), None)


def parse(text: str, file: str) -> Dockerfile:
    """The Dockerfile in TEXT (FILE names it in problems and Instruction.file)."""
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.removeprefix("\ufeff").split("\n")]
    problems: list[Problem] = []
    escape = _directives(lines, file, problems)
    parsed: list[tuple[Instruction, dict[str, tuple[int, int]]]] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip(_WS)
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        logical, i = _join(lines, i, escape)
        if logical is None:
            continue
        p = _InstructionParser(logical, file, escape, problems)
        instr = p.parse()
        heredocs = []
        for found in p.heredocs:
            body, i, ended = _read_heredoc(lines, i, found.name, found.strip_tabs)
            if not ended:
                p.problem(found.offset, f"the heredoc <<{found.name} has no end: no line holds "
                                        f"just {found.name} after it")
            heredocs.append(Heredoc(found.name, body, found.strip_tabs, found.quoted))
        if instr is not None:
            parsed.append((replace(instr, heredocs=tuple(heredocs)), p.marks))
    dockerfile = _assemble(parsed, file, escape, problems)
    if problems:
        raise DockerfileError(problems)
    return dockerfile


# -- lines ---------------------------------------------------------------------------------

def _directives(lines: list[str], file: str, problems: list[Problem]) -> str:
    """The escape character set by the parser directives at the top of the file."""
    escape, seen = "\\", set()
    for n, line in enumerate(lines, 1):
        m = _DIRECTIVE.match(line)
        if m is None or m.group(1).lower() not in ("escape", "syntax", "check"):
            break  # anything else ends the directives (they are then plain comments)
        key, value = m.group(1).lower(), m.group(2)
        if key in seen:
            problems.append(Problem(file, n, 1, "", f"# {key}= is given twice: only one {key} "
                                                    "directive is allowed"))
        seen.add(key)
        if key == "escape":
            if value in ("\\", "`"):
                escape = value
            else:
                problems.append(Problem(file, n, 1, "", f"# escape={value}: the escape "
                                                        "character must be \\ or `"))
    return escape


@dataclass
class _Logical:
    """One instruction's text with its continuation lines joined, and where each character
    was written."""

    text: str
    pos: list[tuple[int, int]]
    source: str

    def where(self, offset: int) -> tuple[int, int]:
        if not self.pos:
            return (1, 1)
        if offset < len(self.pos):
            return self.pos[offset]
        line, col = self.pos[-1]
        return (line, col + 1)


def _join(lines: list[str], i: int, escape: str) -> tuple[_Logical | None, int]:
    """The instruction starting at line index I, and the index of the line after it."""
    chars: list[str] = []
    pos: list[tuple[int, int]] = []
    pieces: list[str] = []
    first = True
    more = True
    while more and i < len(lines):
        line = lines[i]
        i += 1
        stripped = line.lstrip(_WS)
        if not first and (not stripped or stripped.startswith("#")):
            continue  # comments and blank lines inside a continuation are dropped
        start = len(line) - len(stripped) if first else 0
        first = False
        body = line.rstrip(" \t")
        more = body.endswith(escape)
        piece = body[:-1] if more else line
        for col in range(start, len(piece)):
            chars.append(piece[col])
            pos.append((i, col + 1))
        if piece[start:].strip(_WS):
            pieces.append(piece[start:].strip(_WS))
    text = "".join(chars)
    if not text.strip(_WS):
        return None, i
    return _Logical(text, pos, " ".join(pieces)), i


def _read_heredoc(lines: list[str], i: int, terminator: str,
                  strip_tabs: bool) -> tuple[tuple[str, ...], int, bool]:
    """The body of a heredoc starting at line index I, the index after its end line, and
    whether that line was there."""
    body: list[str] = []
    while i < len(lines):
        line = lines[i]
        i += 1
        if (line.lstrip("\t") if strip_tabs else line) == terminator:
            return tuple(body), i, True
        body.append(line)
    return tuple(body), i, False


# -- words ---------------------------------------------------------------------------------

class _Unterminated(Exception):
    def __init__(self, offset: int, quote: str) -> None:
        self.offset = offset
        self.quote = quote


def _split(text: str, start: int, escape: str) -> list[tuple[str, int]]:
    """The words of TEXT from START, as written (quotes kept), with their offsets. Quoted
    whitespace and an escaped character stay inside a word."""
    words: list[tuple[str, int]] = []
    i = start
    n = len(text)
    while i < n:
        while i < n and text[i] in _WS:
            i += 1
        if i >= n:
            break
        begin, quote = i, ""
        while i < n and (quote or text[i] not in _WS):
            i, quote = _scan(text, i, quote, escape)
        words.append((text[begin:min(i, n)], begin))
    return words


def _scan(text: str, i: int, quote: str, escape: str) -> tuple[int, str]:
    """Past one character (and what an escape makes literal): the next offset and the
    quote still open ("" for none). Single quotes take escapes literally, as sh does."""
    ch = text[i]
    if quote:
        if ch == quote:
            quote = ""
        elif ch == escape and quote == '"':
            i += 1
    elif ch in "'\"":
        quote = ch
    elif ch == escape:
        i += 1
    return i + 1, quote


def _unquote(raw: str, escape: str) -> str:
    """RAW with quotes removed and escapes applied, encoded for expand() (module docstring).
    Raises _Unterminated for a quote left open."""
    chars: list[tuple[str, bool]] = []  # (character, made literal by quotes or an escape)
    quote, opened, i = "", 0, 0
    while i < len(raw):
        ch = raw[i]
        if quote == "'":
            if ch == "'":
                quote = ""
            else:
                chars.append((ch, True))
        elif quote == '"':
            if ch == '"':
                quote = ""
            elif ch == escape and i + 1 < len(raw) and raw[i + 1] in ('"', "$", escape):
                chars.append((raw[i + 1], True))
                i += 1
            else:
                chars.append((ch, ch == escape))
        elif ch in "'\"":
            quote, opened = ch, i
        elif ch == escape:
            if i + 1 < len(raw):
                chars.append((raw[i + 1], True))
                i += 1
        else:
            chars.append((ch, False))
        i += 1
    if quote:
        raise _Unterminated(opened, quote)
    out: list[str] = []
    for k, (ch, literal) in enumerate(chars):
        if literal and ch == "$":
            out.append(escape + "$")
        elif ch == escape and k + 1 < len(chars) and chars[k + 1][0] in ("$", escape):
            out.append(escape + escape)
        else:
            out.append(ch)
    return "".join(out)


def _json_array(text: str) -> list[str] | None:
    """TEXT as a JSON array of strings, or None (then it is shell form, as Docker does)."""
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


@dataclass(frozen=True)
class _Found:
    offset: int  # of the <<
    end: int  # after the name (and its closing quote)
    name: str
    strip_tabs: bool
    quoted: bool


def _find_heredocs(text: str, start: int, escape: str) -> list[_Found]:
    """Each `<<WORD` / `<<-WORD` / `<<'WORD'` outside quotes."""
    found: list[_Found] = []
    i, quote = start, ""
    while i < len(text):
        ch = text[i]
        if quote or ch in "'\"" or ch == escape:
            i, quote = _scan(text, i, quote, escape)
            continue
        if text.startswith("<<", i) and (i == 0 or text[i - 1] != "<") and text[i + 2:i + 3] != "<":
            j = i + 2
            dash = text[j:j + 1] == "-"
            j += dash
            while j < len(text) and text[j] in " \t":
                j += 1
            q = text[j] if j < len(text) and text[j] in "'\"" else ""
            m = _HEREDOC_NAME.match(text, j + len(q))
            if m and (not q or text[m.end():m.end() + 1] == q):
                found.append(_Found(i, m.end() + len(q), m.group(0), dash, bool(q)))
                i = m.end() + len(q)
                continue
            i += 1
        i += 1
    return found


# -- one instruction -----------------------------------------------------------------------

@dataclass
class _Flag:
    name: str
    value: str
    has_value: bool
    offset: int


@dataclass
class _InstructionParser:
    logical: _Logical
    file: str
    escape: str
    problems: list[Problem]
    heredocs: list[_Found] = field(default_factory=list)
    marks: dict[str, tuple[int, int]] = field(default_factory=dict)  # "name", "from": (line, col)
    kind: str = ""
    kw_at: int = 0

    def problem(self, offset: int, message: str) -> None:
        line, col = self.logical.where(offset)
        self.problems.append(Problem(self.file, line, col, self.kind, message))

    def parse(self) -> Instruction | None:
        text = self.logical.text
        kw_at = len(text) - len(text.lstrip(_WS))
        end = kw_at
        while end < len(text) and text[end] not in _WS:
            end += 1
        self.kind = kind = text[kw_at:end].upper()
        self.kw_at = kw_at
        if kind in _UNSUPPORTED:
            self.problem(kw_at, _UNSUPPORTED[kind])
            return None
        if kind not in KINDS:
            self.problem(kw_at, _unknown(kind))
            return None
        flags, args_at = self.flags(end)
        args = text[args_at:].strip(_WS)
        args_at += len(text[args_at:]) - len(text[args_at:].lstrip(_WS))
        words: tuple[str, ...] = ()
        exec_form = False
        pairs: tuple[tuple[str, str | None], ...] = ()
        if kind in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
            words, exec_form = self.command(args, args_at)
        elif kind == "HEALTHCHECK":
            words, exec_form, args = self.healthcheck(args, args_at, flags)
        elif kind in ("COPY", "ADD"):
            words, exec_form = self.copy(args, args_at)
            if self.heredocs and any(f.name == "from" for f in flags):
                self.problem(self.heredocs[0].offset, f"{kind} --from takes paths of the stage or "
                                                      "image, not a heredoc")
        elif kind in ("ENV", "LABEL"):
            pairs = self.key_values(args, args_at)
        elif kind == "ARG":
            pairs = self.arg(args_at)
        elif kind in ("WORKDIR", "USER", "STOPSIGNAL"):
            words = self.single(args, args_at)
        elif kind == "FROM":
            words = self.from_(args_at)
        else:  # EXPOSE
            words = tuple(self.unquoted(_split(text, args_at, self.escape)))
            if not words:
                self.problem(kw_at, f"EXPOSE needs a port: {_USAGE[kind]}")
        line, col = self.logical.where(kw_at)
        return Instruction(kind, tuple((f.name, f.value) for f in flags), words, args, exec_form,
                           pairs, self.logical.source, self.file, line, col)

    def flags(self, i: int) -> tuple[list[_Flag], int]:
        """The --flags from offset I, checked against what the instruction takes, and the
        offset after them."""
        text = self.logical.text
        flags: list[_Flag] = []
        allowed = FLAGS.get(self.kind, {})
        for raw, at in _split(text, i, self.escape):
            if not raw.startswith("--"):
                return flags, at
            if raw == "--":
                return flags, at + 2
            name, eq, value = raw[2:].partition("=")
            try:
                value = _unquote(value, self.escape)
            except _Unterminated as e:
                self.problem(at + 3 + len(name) + e.offset, f"unterminated {e.quote} quote")
            flag = _Flag(name, value, bool(eq), at)
            self.marks.setdefault(name, self.logical.where(at))
            if name not in allowed:
                self.problem(at, _unknown_flag(self.kind, raw.partition("=")[0], allowed))
            elif any(f.name == name for f in flags):
                self.problem(at, f"--{name} is given twice")
            elif allowed[name] and not value:
                self.problem(at, f"--{name} needs a value: --{name}={allowed[name]}")
            elif name in ("interval", "timeout", "start-period") and not _DURATION.match(value):
                self.problem(at, f"--{name}={value}: not a duration (such as 30s, 1m30s or 500ms)")
            elif name == "retries" and not re.fullmatch(r"[0-9]+", value):
                self.problem(at, f"--retries={value}: not a whole number")
            flags.append(flag)
        return flags, len(text)

    def from_(self, at: int) -> tuple[str, ...]:
        """FROM IMAGE [AS NAME]: the words, the stage name's position kept in marks."""
        split = _split(self.logical.text, at, self.escape)
        words = tuple(self.unquoted(split))
        if not words:
            self.problem(self.kw_at, f"FROM needs an image: {_USAGE['FROM']}")
        elif len(words) == 2 and words[1].lower() == "as":
            self.problem(split[1][1], f"FROM {words[0]} {words[1]} needs a stage name after "
                                      f"{words[1]}: {_USAGE['FROM']}")
        elif len(words) > 1 and (len(words) != 3 or words[1].lower() != "as"):
            self.problem(split[1][1], f"FROM takes one image and an optional AS NAME, not "
                                      f"{' '.join(words)!r}: {_USAGE['FROM']}")
        elif len(words) == 3:
            if _STAGE_NAME.match(words[2].lower()):
                self.marks["name"] = self.logical.where(split[2][1])
            else:
                self.problem(split[2][1], f"stage name {words[2]!r} is not valid: it starts with "
                                          "a letter and holds only letters, digits, -, _ and .")
        return words

    def command(self, args: str, at: int) -> tuple[tuple[str, ...], bool]:
        """RUN, CMD, ENTRYPOINT, SHELL: exec form (a JSON array) or shell form."""
        array = _json_array(args)
        if self.kind == "SHELL":
            if array is None:
                self.problem(at, f"SHELL needs a JSON array: {_USAGE['SHELL']}")
            elif not array:
                self.problem(at, "SHELL needs at least the shell executable: "
                                 "SHELL [\"/bin/sh\", \"-c\"]")
            return tuple(array or ()), True
        if array is not None:
            if not array and self.kind == "RUN":
                self.problem(at, "RUN needs a command: the JSON array is empty")
            return tuple(array), True
        if not args:
            self.problem(self.kw_at, f"{self.kind} needs a command: {_USAGE[self.kind]}")
            return (), False
        if self.kind == "RUN":
            self.heredocs = _find_heredocs(self.logical.text, at, self.escape)
        return tuple(w for w, _ in _split(self.logical.text, at, self.escape)), False

    def healthcheck(self, args: str, at: int,
                    flags: list[_Flag]) -> tuple[tuple[str, ...], bool, str]:
        """HEALTHCHECK NONE, or [flags] CMD COMMAND: the command's words, form and text."""
        words = _split(self.logical.text, at, self.escape)
        first = words[0][0].upper() if words else ""
        if first == "NONE":
            if len(words) > 1 or flags:
                self.problem(at, "HEALTHCHECK NONE takes no flags or arguments")
            return ("NONE",), False, "NONE"
        if not words:
            self.problem(self.kw_at, f"HEALTHCHECK needs a command or NONE: {_USAGE['HEALTHCHECK']}")
            return (), False, args
        if first != "CMD":
            self.problem(at, f"HEALTHCHECK needs CMD before the command: {_USAGE['HEALTHCHECK']}")
            return (), False, args
        rest_at = words[1][1] if len(words) > 1 else len(self.logical.text)
        rest = self.logical.text[rest_at:].strip(_WS)
        array = _json_array(rest)
        if array is not None:
            if not array:
                self.problem(rest_at, "HEALTHCHECK CMD needs a command: the JSON array is empty")
            return tuple(array), True, rest
        if not rest:
            self.problem(words[0][1], f"HEALTHCHECK CMD needs a command: {_USAGE['HEALTHCHECK']}")
        return tuple(w for w, _ in words[1:]), False, rest

    def copy(self, args: str, at: int) -> tuple[tuple[str, ...], bool]:
        array = _json_array(args)
        if array is not None:
            words, exec_form = tuple(array), True
            offsets = [at] * len(words)
        else:
            self.heredocs = _find_heredocs(self.logical.text, at, self.escape)
            split = self.heredoc_words(_split(self.logical.text, at, self.escape))
            words, exec_form = tuple(self.unquoted(split)), False
            offsets = [o for _, o in split]
            if self.heredocs and words and words[-1].startswith("<<"):
                self.problem(offsets[-1], f"{self.kind} needs a destination after the heredoc: "
                                          f"{self.kind} <<NAME /path")
        if len(words) < 2:
            self.problem(self.kw_at,
                         f"{self.kind} needs at least one source and a destination: "
                         f"{_USAGE[self.kind]}")
        elif self.kind == "ADD":
            for word, offset in zip(words[:-1], offsets):
                if word.lower().startswith(_REMOTE):
                    self.problem(offset, "ADD from a URL is not supported: use RUN with curl or "
                                         "wget (the build's network policy applies)")
        return words, exec_form

    def heredoc_words(self, split: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """COPY/ADD words with each heredoc as one word `<<NAME` (`<< 'NAME'` is two words
        as split)."""
        out: list[tuple[str, int]] = []
        for word, at in split:
            h = next((h for h in self.heredocs if h.offset <= at < h.end), None)
            if h is None:
                out.append((word, at))
            elif h.offset == at or not out or out[-1][1] != h.offset:
                out.append((f"<<{h.name}", h.offset))
        return out

    def key_values(self, args: str, at: int) -> tuple[tuple[str, str | None], ...]:
        """ENV and LABEL: NAME=VALUE..., or the legacy NAME VALUE (the rest of the line)."""
        words = _split(self.logical.text, at, self.escape)
        if not words:
            self.problem(self.kw_at, f"{self.kind} needs a name and a value: {_USAGE[self.kind]}")
            return ()
        if _equals(words[0][0]) < 0:
            name_raw, name_at = words[0]
            value_at = words[1][1] if len(words) > 1 else len(self.logical.text)
            value_raw = self.logical.text[value_at:].strip(_WS)
            name = self.text_of(name_raw, name_at)
            if not value_raw:
                self.problem(name_at, f"{self.kind} {name} has no value: write "
                                      f"{self.kind} {name}=VALUE")
                return ()
            return ((name, self.text_of(value_raw, value_at)),)
        pairs: list[tuple[str, str | None]] = []
        for raw, offset in words:
            eq = _equals(raw)
            if eq < 0:
                self.problem(offset, f"{self.text_of(raw, offset)} has no value: write NAME=VALUE "
                                     f"({_USAGE[self.kind]})")
                continue
            name = self.text_of(raw[:eq], offset)
            if not name:
                self.problem(offset, f"{raw} has no name: write NAME=VALUE")
                continue
            pairs.append((name, self.text_of(raw[eq + 1:], offset + eq + 1)))
        return tuple(pairs)

    def arg(self, at: int) -> tuple[tuple[str, str | None], ...]:
        words = _split(self.logical.text, at, self.escape)
        if not words:
            self.problem(self.kw_at, f"ARG needs a name: {_USAGE['ARG']}")
        pairs: list[tuple[str, str | None]] = []
        for raw, offset in words:
            eq = _equals(raw)
            name = self.text_of(raw if eq < 0 else raw[:eq], offset)
            if not name:
                self.problem(offset, f"{raw} has no name: write ARG NAME[=DEFAULT]")
                continue
            pairs.append((name, None if eq < 0 else self.text_of(raw[eq + 1:], offset + eq + 1)))
        return tuple(pairs)

    def single(self, args: str, at: int) -> tuple[str, ...]:
        """WORKDIR, USER, STOPSIGNAL: the whole argument text is one word."""
        if not args:
            what = {"WORKDIR": "a path", "USER": "a user", "STOPSIGNAL": "a signal"}[self.kind]
            self.problem(self.kw_at, f"{self.kind} needs {what}: {_USAGE[self.kind]}")
            return ()
        return (self.text_of(args, at),)

    def unquoted(self, words: list[tuple[str, int]]) -> list[str]:
        return [self.text_of(raw, offset) for raw, offset in words]

    def text_of(self, raw: str, offset: int) -> str:
        """RAW (written at OFFSET) unquoted; an open quote is a problem there."""
        try:
            return _unquote(raw, self.escape)
        except _Unterminated as e:
            self.problem(offset + e.offset, f"unterminated {e.quote} quote")
            return raw


def _equals(raw: str) -> int:
    """The offset of the first `=` outside quotes in RAW, or -1."""
    quote = ""
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "=":
            return i
    return -1


def _unknown(kind: str) -> str:
    close = difflib.get_close_matches(kind, KINDS, n=1, cutoff=0.6)
    hint = f": did you mean {close[0]}?" if close else ""
    return f"unknown instruction {kind}{hint} (supported: {', '.join(KINDS)})"


def _unknown_flag(kind: str, flag: str, allowed: dict[str, str]) -> str:
    if allowed:
        return f"flag {flag} is not supported ({kind} takes {', '.join('--' + f for f in allowed)})"
    hint = {"RUN": "; --mount, --network and --security are BuildKit features a3s-box does not "
                   "support",
            "CMD": f"; for an argument that starts with --, use the exec form: CMD [\"{flag}\"]",
            "ENTRYPOINT": "; for an argument that starts with --, use the exec form: "
                          f"ENTRYPOINT [\"...\", \"{flag}\"]"}.get(kind, "")
    return f"flag {flag} is not supported ({kind} takes no flags{hint})"


# -- stages --------------------------------------------------------------------------------

def _assemble(parsed: list[tuple[Instruction, dict[str, tuple[int, int]]]], file: str,
              escape: str, problems: list[Problem]) -> Dockerfile:
    has_from = any(i.kind == "FROM" for i, _ in parsed)
    if not has_from:
        problems.append(Problem(file, 0, 0, "", "has no FROM instruction: a Dockerfile starts "
                                                "with FROM IMAGE (only ARG may come before it)"))
    global_args: list[Instruction] = []
    groups: list[list[tuple[Instruction, dict[str, tuple[int, int]]]]] = []
    for instr, marks in parsed:
        if instr.kind == "FROM":
            groups.append([(instr, marks)])
        elif groups:
            groups[-1].append((instr, marks))
        elif instr.kind == "ARG":
            global_args.append(instr)
        elif has_from:
            problems.append(Problem(file, instr.line, instr.column, instr.kind,
                                    f"{instr.kind} before the first FROM: only ARG may come "
                                    "before FROM"))
    names: dict[str, tuple[int, Instruction]] = {}  # stage name -> (index, its FROM)
    stages: list[Stage] = []
    for index, group in enumerate(groups):
        from_, marks = group[0]
        name = from_.words[2].lower() if "name" in marks else None
        if name is not None and name in names:
            line, col = marks["name"]
            problems.append(Problem(file, line, col, "FROM", f"stage name {name} is already used "
                                                             f"by the stage at {names[name][1].where}"))
        elif name is not None:
            names[name] = (index, from_)
        base = from_.words[0] if from_.words else ""
        stages.append(Stage(index, name, base, from_.flag("platform"), from_,
                            tuple(i for i, _ in group[1:])))
    for index, group in enumerate(groups):
        for instr, marks in group[1:]:
            ref = instr.flag("from") if instr.kind == "COPY" else None
            if ref:
                line, col = marks["from"]
                message = _copy_from_problem(ref, index, names, len(groups))
                if message:
                    problems.append(Problem(file, line, col, "COPY", message))
    return Dockerfile(file, tuple(global_args), tuple(stages), escape)


def _copy_from_problem(ref: str, current: int, names: dict[str, tuple[int, Instruction]],
                       count: int) -> str | None:
    """What is wrong with COPY --from=REF in stage CURRENT, if anything."""
    if "$" in ref:
        return None  # known once ARGs are expanded
    if re.fullmatch(r"[0-9]+", ref):
        target = int(ref)
        if target >= count:
            return (f"--from={ref}: there is no stage {target} (stages are numbered from 0 and "
                    f"this Dockerfile has {count})")
    elif ref.lower() in names:
        target = names[ref.lower()][0]
    else:
        return None  # not a stage: an image
    if target == current:
        return (f"--from={ref} is the stage this COPY is in: a stage can only copy from the "
                "stages before it")
    if target > current:
        return (f"--from={ref} is a later stage (defined at {names[ref.lower()][1].where})"
                if ref.lower() in names else f"--from={ref} is a later stage") + \
            ": a stage can only copy from the stages before it"
    return None
