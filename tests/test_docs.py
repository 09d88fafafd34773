"""The commands the docs tell a user to type still work: every ``srum-ray``, ``python -m``,
``python script.py`` and ``bash script`` line in a fenced block of the README files, docs/
and the model card names a module or file that exists, its flags parse with that program's
own argument parser, and its ``key.path=value`` overrides load with the config it names; and
every repository file the prose names exists. Nothing is run: each program's parser is caught
as its ``main`` builds it."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from srum_ray.cli import build_parser
from srum_ray.config.load import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [ROOT / "README.md", ROOT / "cluster/README.md", ROOT / "weights/shapes-umm/MODEL_CARD.md", *(ROOT / "docs").glob("*.md")]
)
PYTHONS = {"python", "python3", ".venv/bin/python"}
#: tokens a doc writes for "fill in your own": dropped before parsing
PLACEHOLDERS = {"...", "[overrides]"}
#: flags whose value is a path the command writes (need not exist)
OUTPUT_FLAGS = {"--out", "--doc"}
REPO_PATH = re.compile(r"(?<![\w/.-])((?:configs|scripts|bench|cluster|weights|docs|srum_ray|actors|tests)/[\w./-]*\w\.(?:yaml|py|sh|md|json|safetensors))")


def fenced_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for each shell line in the file's fenced blocks: continuation
    lines joined, heredoc bodies skipped."""
    out: list[tuple[int, str]] = []
    in_block, heredoc, pending, start = False, None, "", 0
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if line.startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        start = start or no
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        cmd, pending, first = pending + line, "", start
        start = 0
        marker = re.search(r"<<-?\s*'?(\w+)'?", cmd)
        if marker:
            heredoc = marker.group(1)
        out.append((first, cmd))
    return out


def split(cmd: str) -> list[list[str]]:
    """The simple commands of a line (split at ``&&``, ``;``, ``|``, ``&``), comments removed,
    placeholders and optional ``[...]`` groups dropped, ``$PWD`` expanded."""
    lexer = shlex.shlex(cmd.replace("$PWD", str(ROOT)), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # not shell (an output listing); nothing to check
        return []
    cmds, cur, optional = [], [], False
    for tok in tokens:
        if set(tok) <= set(";&|"):
            cmds.append(cur)
            cur = []
            continue
        if tok.startswith("["):
            optional = not tok.endswith("]")
            continue
        if optional:
            optional = not tok.endswith("]")
            continue
        if tok not in PLACEHOLDERS:
            cur.append(tok)
    return [c for c in cmds + [cur] if c]


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


#: the parsing methods a program may call; the one it calls is the one its commands are checked with
_PARSE_METHODS = ("parse_args", "parse_intermixed_args")


def program_parser(target: str) -> argparse.ArgumentParser:
    """The argument parser ``target`` (a module name or a .py path) builds in its ``main``,
    caught at its first ``parse_args`` before anything runs."""
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_doc_{Path(target).stem}", ROOT / target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    real = {name: getattr(argparse.ArgumentParser, name) for name in _PARSE_METHODS}

    def catcher(name: str):
        def catch(self, *a, **k):
            self._doc_parse_method = name
            raise _Parsed(self)
        return catch

    for name in _PARSE_METHODS:
        setattr(argparse.ArgumentParser, name, catcher(name))
    try:
        module.main([])
    except _Parsed as caught:
        return caught.parser
    finally:
        for name, method in real.items():
            setattr(argparse.ArgumentParser, name, method)
    raise AssertionError(f"{target}.main() returned without parsing arguments")


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def strict_parse(parser: argparse.ArgumentParser, target: str, args: list[str]) -> argparse.Namespace:
    """``parser.parse_args(args)`` (or the method its program calls), its error raised as an
    AssertionError naming the problem."""

    def error(message: str):
        raise AssertionError(f"{target} rejects {args}: {message}")

    for p in [parser, *(a.choices[c] for a in parser._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices)]:
        p.error = error
    return getattr(parser, getattr(parser, "_doc_parse_method", "parse_args"))(args)


def parse(target: str, args: list[str]) -> argparse.Namespace:
    if target not in _PARSERS:
        _PARSERS[target] = program_parser(target)
    return strict_parse(_PARSERS[target], target, args)


def check_command(tokens: list[str]) -> str | None:
    """Check one simple command; returns what it checked (None: not a command we know)."""
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if not tokens:
        return None
    head = tokens[0]
    if head == "ray":  # ray job submit ... [--] python -m ...: check the entrypoint
        at = next((i for i, t in enumerate(tokens) if t in PYTHONS), None)
        return None if at is None else check_command(tokens[at:])
    if head == "bash":
        assert (ROOT / tokens[1]).is_file(), f"no script {tokens[1]}"
        return tokens[1]
    if head == "srum-ray" or (head in PYTHONS and tokens[1:3] == ["-m", "srum_ray.train"]):
        args = tokens[1:] if head == "srum-ray" else ["run", *tokens[3:]]
        target = "srum-ray"
        ns = strict_parse(build_parser(), target, args)
    elif head in PYTHONS and len(tokens) > 1:
        if tokens[1] == "-":  # a heredoc script
            return None
        if tokens[1] == "-m":
            target, args = tokens[2], tokens[3:]
            assert importlib.util.find_spec(target) is not None, f"no module {target}"
        else:
            target, args = tokens[1], tokens[2:]
            assert (ROOT / target).is_file(), f"no script {target}"
        ns = parse(target, args)
    else:
        return None
    overrides = getattr(ns, "overrides", None) or []
    if overrides:
        config = getattr(ns, "config", None) or "configs/tiny.yaml"
        if getattr(ns, "resume", None):  # a resumed run's own config: only the keys are checked
            config = "configs/tiny.yaml"
        load_config(ROOT / config, list(overrides))
    for i, tok in enumerate(args):
        after_output_flag = i > 0 and args[i - 1] in OUTPUT_FLAGS
        if not after_output_flag and REPO_PATH.fullmatch(tok):
            assert (ROOT / tok).exists(), f"{target}: no {tok}"
    return target


DOC_IDS = [str(p.relative_to(ROOT)) for p in DOCS]


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_documented_commands_parse(doc):
    failures = []
    for no, cmd in fenced_commands(doc):
        for tokens in split(cmd):
            try:
                check_command(tokens)
            except Exception as e:  # noqa: BLE001 - every failing line is reported together
                failures.append(f"{doc.relative_to(ROOT)}:{no}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def test_the_docs_have_commands_to_check():
    checked = {check_command(t) for doc in DOCS for _, cmd in fenced_commands(doc) for t in split(cmd)} - {None}
    # the README's two commands, the CLI, the job entrypoint and the shapes tools at least
    assert {"scripts/quickstart.sh", "scripts/test.sh", "srum-ray", "srum_ray.shapes.budget", "scripts/shapes_scan.py"} <= checked


@pytest.mark.parametrize("doc", DOCS, ids=DOC_IDS)
def test_files_the_docs_name_exist(doc):
    text = doc.read_text()
    missing = sorted({m for m in REPO_PATH.findall(text) if not (ROOT / m).exists() and not m.startswith("bench/results/")})
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: {missing}"


def test_a_wrong_flag_or_key_is_caught():
    with pytest.raises(AssertionError, match="rejects"):
        check_command(shlex.split("python -m srum_ray.shapes.budget --no-such-flag 1"))
    with pytest.raises(Exception, match="no_such_key"):
        check_command(shlex.split("srum-ray run --config configs/tiny.yaml train.no_such_key=1"))
    with pytest.raises(AssertionError, match="no module"):
        check_command(shlex.split("python -m srum_ray.no_such_module"))
    assert split("a [--seed S] b ... # c") == [["a", "b"]]


def test_the_architecture_module_map_names_files_that_exist():
    """docs/ARCHITECTURE.md's module map: every entry under srum_ray/, actors/ and bench/ is
    a file (or folder) at that place, e.g. ``models/diffusers_gen.py, _families.py``."""
    text = (ROOT / "docs/ARCHITECTURE.md").read_text()
    block = text.split("## Modules", 1)[1].split("```", 2)[1]
    top, checked, missing = None, 0, []
    for line in block.splitlines():
        if re.fullmatch(r"[\w]+/\s.*|[\w]+/", line):  # a top folder, maybe with a note
            top = line.split()[0]
            continue
        entry = re.match(r"  (\S[^ ]*(?:, \S+)*)  ", line + "  ")
        if top is None or entry is None or line.startswith("   "):
            continue  # a continuation line of a description
        names = entry.group(1).split(", ")
        first = Path(top) / names[0]
        for name in names:
            path = first if name == names[0] else first.parent / name
            checked += 1
            if not (ROOT / path).exists():
                missing.append(str(path))
    assert checked > 50 and not missing, f"module map names files that do not exist: {missing}"
