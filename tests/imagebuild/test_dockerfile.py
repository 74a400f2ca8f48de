"""The Dockerfile parser, expansion and .dockerignore (pure): structure of a realistic
multi-stage file, every problem located at once, and no crash on arbitrary text."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_box.imagebuild.dockerfile import parse
from a3s_box.imagebuild.expand import expand
from a3s_box.imagebuild.ignore import IgnoreRules
from a3s_box.errors import DockerfileError

TEXT = """\
ARG BASE=busybox
FROM ${BASE} AS Build
RUN echo a \\
    # a comment inside a continuation
    && echo b
RUN ["/bin/sh", "-c", "echo exec"]
ENV A="a b" B=c\\ d
COPY --from=tools:1 --chown=1:1 --chmod=755 /x /y
HEALTHCHECK --interval=5s CMD ["true"]
CMD echo shell form
"""


def test_a_multi_stage_file_parses_to_its_structure() -> None:
    df = parse(TEXT, "Dockerfile")
    assert [a.pairs for a in df.global_args] == [(("BASE", "busybox"),)]
    (stage,) = df.stages
    assert (stage.name, stage.base, stage.index) == ("build", "${BASE}", 0)
    assert df.stage("build") is stage and df.stage("0") is stage
    run, run_exec, env, copy, hc, cmd = stage.instructions
    assert (run.kind, run.line, run.column, run.exec_form) == ("RUN", 3, 1, False)
    assert "echo a" in run.text and "echo b" in run.text and "comment" not in run.text
    assert (run_exec.exec_form, run_exec.words) == (True, ("/bin/sh", "-c", "echo exec"))
    assert env.pairs == (("A", "a b"), ("B", "c d"))
    assert (copy.flag("from"), copy.flag("chown"), copy.flag("chmod"), copy.words) == ("tools:1", "1:1", "755",
                                                                                         ("/x", "/y"))
    assert (hc.flag("interval"), hc.exec_form, hc.words) == ("5s", True, ("true",))
    assert (cmd.exec_form, cmd.text.strip()) == (False, "echo shell form")


def test_every_problem_is_located_at_once() -> None:
    with pytest.raises(DockerfileError) as e:
        parse("FROM x\nVOLUME /d\nFORM y\nADD https://example.com/a /a\n", "Dockerfile")
    text = str(e.value).splitlines()
    assert [t.split(": ", 1)[0] for t in text] == ["Dockerfile:2:1", "Dockerfile:3:1", "Dockerfile:4:5"]
    assert "VOLUME is not supported" in text[0] and "did you mean FROM?" in text[1]
    assert "ADD from a URL is not supported" in text[2]
    with pytest.raises(DockerfileError, match="Dockerfile:2:1"):
        parse("ARG X\nRUN echo before any FROM\nFROM x\n", "Dockerfile")
    with pytest.raises(DockerfileError, match="has no FROM instruction"):
        parse("RUN echo\n", "Dockerfile")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_gives_a_dockerfile_or_a_dockerfile_error(text: str) -> None:
    try:
        parse(text, "Dockerfile")
    except DockerfileError:
        pass


def test_expansion_forms() -> None:
    env = {"A": "x", "E": ""}
    assert expand("$A-${A}-${B:-d${A}}-${A:+alt}-${E:+no}", env) == "x-x-dx-alt-"
    assert expand("\\$A", env) == "$A"
    with pytest.raises(ValueError):
        expand("${A", env)


def test_dockerignore_rules() -> None:
    rules = IgnoreRules.parse("# comment\n\n/build\n**/*.log\n!keep.log\n./tmp?\n")
    assert rules.ignored("build/x/y") and rules.ignored("a/b/c.log") and not rules.ignored("keep.log")
    assert rules.ignored("tmp1") and not rules.ignored("src/main.py")


def test_heredocs_are_read_with_their_instruction() -> None:
    text = ("FROM x\n"
            "RUN <<EOF\necho one\n  echo two\nEOF\n"
            "RUN python3 <<-'PY' > /out\n\tprint('x')\n\tPY\n"
            "COPY <<A << \"B\" /etc/\na $X\nA\nb\nB\n"
            "CMD echo after\n")
    run, run_py, copy, cmd = parse(text, "Dockerfile").stages[0].instructions
    (h,) = run.heredocs
    assert (h.name, h.lines, h.content) == ("EOF", ("echo one", "  echo two"), "echo one\n  echo two\n")
    (py,) = run_py.heredocs
    assert (py.strip_tabs, py.quoted, py.content, py.written) == (True, True, "print('x')\n", "\tprint('x')\nPY\n")
    assert copy.words == ("<<A", "<<B", "/etc/")
    assert [(d.name, d.quoted, d.content) for d in copy.heredocs] == [("A", False, "a $X\n"), ("B", True, "b\n")]
    assert (cmd.kind, cmd.line) == ("CMD", 14)  # the bodies are not read as instructions


def test_heredoc_problems_are_located() -> None:
    with pytest.raises(DockerfileError) as e:
        parse("FROM x\nRUN <<EOF\necho never ended\n", "Dockerfile")
    assert str(e.value).startswith("Dockerfile:2:5: ") and "<<EOF has no end" in str(e.value)
    with pytest.raises(DockerfileError) as e:
        parse("FROM x\nCOPY --from=y <<EOF /a\nx\nEOF\n", "Dockerfile")
    assert "Dockerfile:2:15" in str(e.value) and "not a heredoc" in str(e.value)
    with pytest.raises(DockerfileError, match="Dockerfile:2:6: .*destination after the heredoc"):
        parse("FROM x\nCOPY <<EOF\nx\nEOF\n", "Dockerfile")
