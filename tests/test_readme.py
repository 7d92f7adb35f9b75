"""The front page cannot drift from the code.

Every ``dahp`` command shown in a code block of README.md or docs/*.md parses with the real
argparse parser (nothing runs: placeholder paths are never opened), every ``--flag`` shown
inline belongs to the command it is shown with (or, alone, to some dahp command), the set-up
commands are the ones ``.ci/run`` runs, the demo output block has the lines and format
``dahp demo`` prints, and every relative link points at a file (and heading) that exists.
"""

from __future__ import annotations

import argparse
import re
import shlex
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import dahp.demo
from dahp.cli import _shipped_budgets, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
PLACEHOLDERS = {"...", "…"}
# Flags shown inline that belong to other programs (pip, torchrun, pytest).
FOREIGN_FLAGS = {"--index-url", "--nproc_per_node", "--upgrade"}


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced code block."""
    return FENCE.findall(text)


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def shell_lines(body: str) -> list[str]:
    """A shell block's lines, backslash continuations joined."""
    return [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def dahp_argv(tokens: list[str]) -> list[str] | None:
    """The arguments of a dahp invocation (``dahp …``, ``.venv/bin/dahp …``, ``… -m dahp.cli …``)
    in one simple command's tokens, placeholders dropped; None when it does not run dahp."""
    for at, token in enumerate(tokens):
        if token == "dahp" or token.endswith("/bin/dahp"):
            rest = tokens[at + 1 :]
            break
        if token == "dahp.cli" and at > 0 and tokens[at - 1] == "-m":
            rest = tokens[at + 1 :]
            break
    else:
        return None
    return [token for token in rest if token not in PLACEHOLDERS]


def simple_commands(line: str) -> list[list[str]]:
    """A shell line split into its ``&&``-joined commands, each as tokens, comments dropped."""
    commands, current = [], []
    for token in shlex.split(line, comments=True):
        if token == "&&":
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [*commands, current] if current else commands


def script_and_flags(tokens: list[str]) -> tuple[Path, list[str]] | None:
    """``python benchmarks/NAME.py --flag …``: the script and the flags shown with it."""
    for at, token in enumerate(tokens):
        if token.endswith(".py") and at > 0 and Path(tokens[at - 1]).name.startswith("python"):
            return ROOT / token, flags(tokens[at + 1 :])
    return None


def shown_scripts() -> list[tuple[str, str, Path, list[str]]]:
    """(page, command, script, flags) for every Python script run in a shell block or inline."""
    found = []
    for page in PAGES:
        lines = [line for language, body in code_blocks(page.read_text()) if language in ("bash", "sh", "shell")
                 for line in shell_lines(body)] + inline_spans(page)
        for line in lines:
            try:
                commands = simple_commands(line)
            except ValueError:
                continue
            for tokens in commands:
                shown = script_and_flags(tokens)
                if shown is not None:
                    found.append((_rel(page), line, *shown))
    return found


def shown_invocations() -> list[tuple[str, str, list[str]]]:
    """(page, line, argv) for every dahp command in a shell code block."""
    found = []
    for page in PAGES:
        for language, body in code_blocks(page.read_text()):
            if language not in ("bash", "sh", "shell", "console"):
                continue
            for line in shell_lines(body):
                for tokens in simple_commands(line):
                    argv = dahp_argv(tokens)
                    if argv is not None:
                        found.append((_rel(page), line, argv))
    return found


def inline_spans(page: Path) -> list[str]:
    """Inline code spans of the prose, line breaks inside a span read as spaces."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`\n]+(?:\n[^`\n]+)*)`", prose(page.read_text()))]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The (sub)parser a command line reaches through its leading command words, and those words."""
    parser, words = build_parser(), []
    for token in argv:
        children = _subparsers(parser)
        if token not in children:
            break
        parser, words = children[token], [*words, token]
    return parser, words


def all_options(parser: argparse.ArgumentParser) -> set[str]:
    options = {option for action in parser._actions for option in action.option_strings}
    for child in _subparsers(parser).values():
        options |= all_options(child)
    return options


def flags(tokens: list[str]) -> list[str]:
    return [token.split("=", 1)[0] for token in tokens if re.fullmatch(r"--[a-z][\w-]*(=.*)?", token)]


INVOCATIONS = shown_invocations()


def test_the_pages_show_commands():
    """The extraction works: the README shows the demo and the three-command path to a search page."""
    readme = [argv[:2] for page, _, argv in INVOCATIONS if page == "README.md"]
    for expected in (["demo"], ["train", "--data"], ["index", "build"], ["serve"]):
        assert any(argv[: len(expected)] == expected for argv in readme), f"README shows no `dahp {' '.join(expected)}`"


@pytest.mark.parametrize(("page", "line", "argv"), INVOCATIONS, ids=[f"{p}: {' '.join(a)[:60]}" for p, _, a in INVOCATIONS])
def test_shown_command_parses(page, line, argv, capsys):
    """Each command shown parses: its subcommand exists and it takes every flag and value shown."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `{line}` is refused by dahp's parser (exit {exc.code}): {capsys.readouterr().err}")
    budget = getattr(args, "budget", None)
    if budget is not None and not budget.endswith(".json"):
        assert budget in _shipped_budgets(), f"{page}: `{line}` names budget {budget!r}, not a shipped one"
    elif budget is not None:
        assert (ROOT / budget).is_file(), f"{page}: `{line}` names budget file {budget}, which does not exist"


def test_inline_flags_exist():
    """A flag shown inline in the prose belongs to the dahp command it is shown with, or to some dahp command."""
    everything = all_options(build_parser())
    wrong = []
    for page in PAGES:
        for span in inline_spans(page):
            try:
                tokens = shlex.split(span)
            except ValueError:
                tokens = span.split()
            argv = dahp_argv(tokens)
            if script_and_flags(tokens) is not None:
                continue
            if argv:
                parser, words = command_parser(argv)
                if not words:
                    wrong.append(f"{_rel(page)}: `{span}`: no dahp command {argv[:1]}")
                    continue
                known = {option for action in parser._actions for option in action.option_strings}
                wrong += [f"{_rel(page)}: `{span}`: dahp {' '.join(words)} has no {flag}"
                          for flag in flags(argv) if flag not in known]
            elif argv is None:
                wrong += [f"{_rel(page)}: `{span}`: no dahp command has {flag}"
                          for flag in flags(tokens) if flag not in everything | FOREIGN_FLAGS]
    assert not wrong, "\n".join(wrong)


def _script_source(script: Path) -> str:
    """A script's text with that of the sibling modules it imports (where shared options are declared)."""
    source = script.read_text()
    siblings = re.findall(r"^(?:from|import) (\w+)", source, re.M)
    return source + "".join((script.parent / f"{name}.py").read_text() for name in siblings
                            if (script.parent / f"{name}.py").is_file())


def test_shown_scripts_exist_and_take_the_flags_shown():
    """``python benchmarks/…py --flag`` on a page: the script exists and declares each flag."""
    shown = shown_scripts()
    assert shown, "the pages show no benchmark script"
    wrong = []
    for page, line, script, script_flags in shown:
        if not script.is_file():
            wrong.append(f"{page}: `{line}`: {script.relative_to(ROOT)} does not exist")
            continue
        source = _script_source(script)
        wrong += [f"{page}: `{line}`: {script.name} declares no {flag}" for flag in script_flags
                  if f'"{flag}"' not in source and f"'{flag}'" not in source]
    assert not wrong, "\n".join(wrong)


# --- the set-up commands ----------------------------------------------------------------------


def _setup_lines() -> list[str]:
    text = README.read_text()
    first = FENCE.search(text)
    assert first is not None, "README.md has no code block"
    assert text[: first.start()].count("\n") <= 4, "the set-up commands must be the README's first lines"
    return shell_lines(first.group(2))


def _ci_commands() -> list[list[str]]:
    """The commands of .ci/run after its venv is made (the install and the test run)."""
    commands = []
    for line in shell_lines((ROOT / ".ci" / "run").read_text()):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # not a simple command (the Chromium install's conditionals)
            continue
        if tokens and (tokens[0] in ("python3", "python") or tokens[0].startswith(".venv/")):
            commands.append(tokens)
    return commands


def _without_quiet(tokens: list[str]) -> list[str]:
    """pip's --quiet makes no difference to what is installed."""
    return [token for token in tokens if token != "--quiet"]


def test_setup_commands_match_ci():
    """The README's second set-up command is what .ci/run runs: same venv, same install, same test command."""
    demo_line, test_line = _setup_lines()
    ci = [_without_quiet(tokens) for tokens in _ci_commands()]
    shown = [_without_quiet(tokens) for tokens in simple_commands(test_line)]
    venv, install, run_tests = shown
    assert venv in ci, f".ci/run does not make the venv the README makes: {venv}"
    assert install in ci, f".ci/run installs differently from the README: {install} not in {ci}"
    assert run_tests == ci[-1], f"the README's test command {run_tests} is not .ci/run's last command {ci[-1]}"
    demo = simple_commands(demo_line)
    assert demo[0] == venv
    assert dahp_argv(demo[-1]) == ["demo"], "the first set-up command must end by running `dahp demo`"
    pins = [token for token in install if "==" in token]
    assert pins and [token for token in demo[1] if "==" in token] == pins, "both set-up commands pin the same torch"
    assert "-e" in demo[1] and demo[1][demo[1].index("-e") + 1] == "."


def test_pinned_torch_is_allowed_by_pyproject():
    packaging = pytest.importorskip("packaging.requirements")
    import tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {packaging.Requirement(text).name: packaging.Requirement(text).specifier for text in dependencies}
    install = simple_commands(_setup_lines()[1])[1]
    for pin in (token for token in install if "==" in token):
        name, version = pin.split("==")
        assert version in wanted[name], f"{pin} is outside pyproject's {name}{wanted[name]}"


# --- the demo's output --------------------------------------------------------------------------


def _readme_demo_block() -> list[str]:
    text = README.read_text()
    heading = re.search(r"^#+ What `dahp demo` prints.*$", text, re.M)
    assert heading is not None, "README.md has no 'What `dahp demo` prints' section"
    block = FENCE.search(text, heading.end())
    assert block is not None and block.group(1) == "", "the demo's output must be a plain code block"
    return block.group(2).rstrip("\n").split("\n")


@pytest.fixture
def demo_output(monkeypatch, capsys) -> list[str]:
    """What `dahp demo --quiet` prints, through the real command and formatting, with training and
    encoding replaced by random codes: the lines and their format, not the figures."""
    rng = np.random.default_rng(0)

    def fake_train_and_score(name, hasher, data, split):
        bytes_per_code = hasher.bits // 8
        query = rng.integers(0, 256, (len(split.query), bytes_per_code), dtype=np.uint8)
        database = rng.integers(0, 256, (len(split.database), bytes_per_code), dtype=np.uint8)
        return dahp.demo.DemoRun(name, 0.5, 30.0, 300.0, 2000.0, hasher), query, database

    monkeypatch.setattr(dahp.demo, "_train_and_score", fake_train_and_score)
    assert main(["demo", "--quiet"]) == 0
    return capsys.readouterr().out.rstrip("\n").split("\n")


def _shape(line: str) -> str:
    return " ".join(re.sub(r"\d+(?:\.\d+)?", "9", line).split())


def test_demo_block_has_the_demos_lines(demo_output):
    shown = _readme_demo_block()
    assert [_shape(line) for line in shown] == [_shape(line) for line in demo_output]
    for readme_line, printed in zip(shown, demo_output):
        if not re.search(r"\d+\.\d", printed) and "->" not in printed:  # no measured figure in it: verbatim
            assert readme_line == printed
        if "->" in printed:  # the same queries: they depend on the split, not on training
            assert readme_line.split("->")[0] == printed.split("->")[0]


def test_demo_example_results_are_real_database_images():
    """Each result shown is a database image of the split, with its true digit, in rank order
    (distance, then database order)."""
    data = dahp.demo.load_digits()
    split = dahp.demo.PROTOCOL.split(data)
    classes = data.labels.argmax(axis=1)
    position = {int(index): at for at, index in enumerate(split.database)}
    lines = [line for line in _readme_demo_block() if "->" in line]
    assert len(lines) == 3
    for line in lines:
        query, results = line.split("->")
        number, digit = map(int, re.fullmatch(r"\s*query #(\d+) digit (\d)\s*", query).groups())
        assert classes[number] == digit and number in set(split.query.tolist())
        hits = [tuple(map(int, hit)) for hit in re.findall(r"#(\d+) digit (\d) \(d=(\d+)\)", results)]
        assert len(hits) == 5
        for index, label, _ in hits:
            assert index in position, f"#{index} is not a database image"
            assert classes[index] == label, f"#{index} is digit {classes[index]}, not {label}"
        order = [(distance, position[index]) for index, _, distance in hits]
        assert order == sorted(order)


# --- links ----------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "").strip().lower()
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(page.read_text()), re.M):
        slug = _slug(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def test_slug_matches_github():
    assert _slug("What `dahp demo` prints (measured)") == "what-dahp-demo-prints-measured"
    assert _slug("Budget `cpu-transfer`") == "budget-cpu-transfer"
    assert _slug("Search: index, command line, web page, ONNX") == "search-index-command-line-web-page-onnx"
    assert _slug("1. `efficientnet_lite0` × 2") == "1-efficientnet_lite0--2"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: {file} does not exist")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: {_rel(file)} has no heading #{fragment}")
    assert not broken, f"{_rel(page)}:\n" + "\n".join(broken)
