"""The README's command table and docs/cli.md, generated from the CLI's parser so that they cannot drift from it:
`python -m legokit.cli.doc` rewrites both; `python -m legokit.cli.doc --check` (and the tests) fail when they differ."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

from legokit.cli.commands import build_parser

START = "<!-- commands: generated from the parser by `python -m legokit.cli.doc`; do not edit by hand -->"
END = "<!-- end of commands -->"
SHARED = {"--json", "-q", "--quiet", "-v", "--verbose", "-h", "--help"}


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the order `legokit --help` lists them."""
    (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {action.dest: action.help or "" for action in group._choices_actions}
    return [(name, helps[name], sub) for name, sub in group.choices.items()]


def _flag(action: argparse.Action) -> str:
    """An option's first long name (`--train-head`, not `--no-train-head`)."""
    return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])


def _usage_name(action: argparse.Action) -> str:
    if action.option_strings:
        flag = _flag(action)
        takes = action.nargs != 0
        return (
            f"{flag} {action.metavar or action.dest.upper()}"
            if takes and not action.choices
            else (f"{flag} {{{','.join(map(str, action.choices))}}}" if action.choices else flag)
        )
    metavar = cast("str | None", action.metavar)  # legokit's positionals name no tuple metavar
    return metavar or action.dest.upper() + ("..." if action.nargs == "+" else "")


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    return text.replace("|", "\\|")


def commands_table(parser: argparse.ArgumentParser | None = None) -> str:
    """One row per command: how it is called, what it does, its own options."""
    parser = parser or build_parser()
    rows = ["| command | what it does | options |", "| --- | --- | --- |"]
    for name, text, sub in _commands(parser):
        positionals = " ".join(_usage_name(a) for a in sub._actions if not a.option_strings)
        options = ", ".join(
            f"`{_flag(a)}`"
            for a in sub._actions
            if a.option_strings and not SHARED & set(a.option_strings) and a.help != argparse.SUPPRESS
        )
        call = f"legokit {name} {positionals}".rstrip()
        rows.append(f"| `{call}` | {text} | {options} |")
    rows += [
        "",
        "Every command takes `--json PATH` (its result as JSON; `-` for standard output) and `-q/--quiet`, "
        "`-v/--verbose`. Full options: [docs/cli.md](docs/cli.md).",
    ]
    return "\n".join(rows)


def reference(parser: argparse.ArgumentParser | None = None) -> str:
    """docs/cli.md: every command's options with their help text and defaults."""
    parser = parser or build_parser()
    lines = [
        "# legokit commands",
        "",
        f"{START}",
        "",
        "Generated from the parser (`python -m legokit.cli.doc`); `legokit COMMAND --help` prints the same.",
        "",
    ]
    for name, text, sub in _commands(parser):
        lines += [
            f"## legokit {name}",
            "",
            text[:1].upper() + text[1:] + ".",
            "",
            "| argument | meaning |",
            "| --- | --- |",
        ]
        lines += [
            f"| `{_usage_name(a)}` | {_help(sub, a)} |"
            for a in sub._actions
            if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS
        ]
        lines.append("")
    return "\n".join(lines + [END, ""])


def with_commands(readme: str, table: str) -> str:
    """The README with its generated section replaced by `table`."""
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no generated section ({START} ... {END})")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__).parse_known_args(argv)[1]
    check = "--check" in args
    root = Path(__file__).resolve().parents[2]
    targets = {
        root / "README.md": with_commands((root / "README.md").read_text(), commands_table()),
        root / "docs" / "cli.md": reference(),
    }
    stale = [path for path, text in targets.items() if not path.is_file() or path.read_text() != text]
    if check:
        for path in stale:
            print(f"{path} differs from the parser: run python -m legokit.cli.doc", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(targets[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
