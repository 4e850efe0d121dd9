"""The docs show commands that run: every command in a code block or an inline code span of the
README and docs/ parses. A study's flags through its own parser, `emosweep`'s through the CLI's,
a bench's and the other programs' through their `--help`; the files a command names (its script,
a repository path) exist; the README stays a five-minute read."""
from __future__ import annotations

import functools
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("python", "emosweep", "mlflow", "optuna-dashboard", "ray", "pip")
REPO_PATH = re.compile(r"^(sweeps|bench|workloads|tests|docs)/\S+\.(py|md|png|json)$|^[\w.-]+\.yaml$")


def commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) for each command shown: the lines of fenced blocks (continuations joined,
    comments dropped) and inline code spans, that start with one of PROGRAMS."""
    found, block, held = [], False, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            block = not block
            continue
        if block:
            text = "" if line.lstrip().startswith("#") else re.split(r"\s#\s", line)[0].rstrip()
            if held:
                text, held = held + " " + text.strip(), ""
            if text.endswith("\\"):
                held = text[:-1]
                continue
            candidates = [text.strip()]
        else:
            candidates = [span.strip() for span in re.findall(r"`([^`]+)`", line)]
        for text in candidates:
            text = re.sub(r"^([A-Z_]+=\S+\s+)+", "", text)  # VAR=value prefixes
            text = re.split(r"\s(?:&&|\||;|>|2>)\s", text)[0]
            placeholder = re.search(r"…|<|\.\.\.", text.split(" ")[1] if " " in text else "")
            if text.split(" ", 1)[0] in PROGRAMS and " " in text and not placeholder:
                found.append((number, text))
    return found


SHOWN = [(f"{p.relative_to(ROOT)}:{n}", c) for p in DOCS for n, c in commands(p)]


@functools.cache
def help_text(*program: str) -> str:
    """`program --help`'s output; a Python script or module runs in this process (what it imports
    is imported already: a second each instead of a fresh interpreter's five)."""
    if program[0] == sys.executable:
        import contextlib
        import io
        import runpy

        shown, argv = io.StringIO(), sys.argv
        sys.argv = [program[-1], "--help"]
        try:
            with contextlib.redirect_stdout(shown), pytest.raises(SystemExit) as done:
                if program[1] == "-m":
                    runpy.run_module(program[2], run_name="__main__", alter_sys=False)
                else:  # as `python SCRIPT` runs it: its folder first on the path (bench/smallest.py)
                    sys.path.insert(0, str((ROOT / program[1]).parent))
                    runpy.run_path(str(ROOT / program[1]), run_name="__main__")
        finally:
            sys.argv = argv
            if program[1] != "-m" and sys.path[0] == str((ROOT / program[1]).parent):
                sys.path.pop(0)
        assert done.value.code in (0, None), f"{' '.join(program)} --help failed (exit {done.value.code})"
        return shown.getvalue()
    out = subprocess.run([*program, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, f"{' '.join(program)} --help failed:\n{out.stderr[-2000:]}"
    return out.stdout


def flags_in(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--") and a != "--"]


def check_study(script: str, args: list[str]) -> None:
    from sweeps.study import build_parser

    assert (ROOT / script).is_file(), f"{script}: no such file"
    study = importlib.import_module(script[:-3].replace("/", ".")).STUDY
    try:
        build_parser(study).parse_args(args)
    except SystemExit as e:
        pytest.fail(f"{script} {' '.join(args)}: its parser refused it (exit {e.code})")


def check(command: str) -> None:
    words = shlex.split(command)
    program, args = words[0], words[1:]
    for arg in args:
        value = arg.split("=", 1)[-1]
        if REPO_PATH.match(value) and not re.search(r"[<|…]", value):
            assert (ROOT / value).exists(), f"{value}: no such file in the repository"
    if program == "python":
        if args[:2] == ["-m", "pytest"] or args[:1] == ["-c"]:
            return
        if args[:2] == ["-m", "cProfile"]:  # the profiler's options, then the command it runs
            rest = args[2:]
            while rest and rest[0].startswith("-"):
                rest = rest[2:] if rest[0] in ("-o", "-s") else rest[1:]
            return check(shlex.join(["python", *rest]))
        if args[0] == "-m":
            text = help_text(sys.executable, "-m", args[1])
            rest = args[2:]
        elif args[0].startswith("sweeps/"):
            return check_study(args[0], args[1:])
        else:
            assert (ROOT / args[0]).is_file(), f"{args[0]}: no such file"
            text, rest = help_text(sys.executable, args[0]), args[1:]
        missing = [f for f in flags_in(rest) if f not in text]
        assert not missing, f"{command}: {missing} not in its --help"
        return
    if program == "emosweep":
        from sweeps.cli import build_parser

        if args[0] == "run":
            study = importlib.import_module(f"sweeps.{args[1]}")
            return check_study(f"sweeps/{args[1]}.py", args[2:]) if study else None
        # `--help` succeeds for it (a required argument is the user's to give), and its flags exist
        import contextlib
        import io

        words = [a for a in args if not a.startswith("-")]
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown), contextlib.redirect_stderr(io.StringIO()) as said:
            try:
                build_parser().parse_args([*words[:3], "--help"])
            except SystemExit as e:
                if e.code != 0:
                    pytest.fail(f"{command}: `emosweep {' '.join(words[:3])} --help` failed: {said.getvalue()[-300:]}")
        missing = [f for f in flags_in(args) if f not in shown.getvalue()]
        assert not missing, f"{command}: {missing} not in its --help"
        return
    if program == "pip":
        extras = re.findall(r"\[([a-z,]+)\]", command)
        declared = (ROOT / "pyproject.toml").read_text()
        for extra in ",".join(extras).split(",") if extras else []:
            assert re.search(rf"^{extra} = \[", declared, re.M), f"{command}: no extra {extra!r} in pyproject.toml"
        return
    exe = shutil.which(program)
    assert exe, f"{command}: {program} is not installed by the project's install"
    if program == "ray":
        if args[0] == "submit" and "--" in args:  # the study's flags after `--`
            check_study(args[2], args[args.index("--") + 1:])
        args = args[:1]  # `ray up`, `ray attach`, ...: the subcommand exists
        assert args[0] in help_text(exe), f"{command}: ray has no {args[0]!r}"
        return
    subcommand = []
    for arg in args:  # `mlflow models serve`: the words before the first flag or value
        if arg.startswith("-") or "://" in arg or "/" in arg or ":" in arg:
            break
        subcommand.append(arg)
    text = help_text(exe, *subcommand)
    missing = [f for f in flags_in(args) if f not in text]
    assert not missing, f"{command}: {missing} not in its --help"


def test_the_docs_show_commands():
    assert len(SHOWN) > 40  # the parser above finds them: a rewrite of the docs that hid them fails here
    assert any(c.startswith("python sweeps/bert_freezing.py") for _, c in SHOWN)


@pytest.mark.parametrize("where, command", SHOWN, ids=[w for w, _ in SHOWN])
def test_every_command_the_docs_show_parses(where, command):
    check(command)


def test_the_readme_is_a_five_minute_read_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"docs/{page.name} is not linked from the README"
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme + "".join(p.read_text() for p in DOCS[1:])):
        if not link.startswith("http"):
            assert any((base / link).exists() for base in (ROOT, ROOT / "docs")), f"broken link: {link}"
