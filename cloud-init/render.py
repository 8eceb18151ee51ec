"""Build spotguard's user-data from its parts, and render it the way Terraform would.

`build` inlines every ``@include FILE`` line of user-data.in.yaml (indented like the line,
``${`` and ``%{`` escaped for templatefile) into user-data.yaml, so the unit and the scripts
have one source each and stay testable on their own; ``build --check`` fails when the
committed file is stale. `render` does what Terraform's templatefile() does with this
template: ``${name}`` and ``${jsonencode(name)}``, ``$${``/``%%{`` unescaped, anything else an
error. Tests and the guest run use it; Terraform itself renders the real thing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SOURCE = HERE / "user-data.in.yaml"
TARGET = HERE / "user-data.yaml"
VARIABLES = (
    "spotguard_source",
    "spotguard_lock",
    "hibernate_mode",
    "imds_url",
    "swap_mb",
    "config_toml",
)
INCLUDE = re.compile(r"^(?P<indent> *)@include (?P<path>\S+)\n", re.MULTILINE)
TOKEN = re.compile(r"\$\$\{|%%\{|%\{|\$\{(?P<expr>[^}]*)\}")
EXPR = re.compile(r"(?P<name>\w+)|jsonencode\((?P<encoded>\w+)\)")


class TemplateError(ValueError):
    """The template uses something this renderer (and the variable list) does not know."""


def build(source: Path = SOURCE, repo: Path = REPO) -> str:
    def include(match: re.Match[str]) -> str:
        text = (repo / match["path"]).read_text(encoding="utf-8")
        escaped = text.replace("${", "$${").replace("%{", "%%{")
        indent = match["indent"]
        return "".join(indent + line if line.strip() else line for line in escaped.splitlines(True))

    return INCLUDE.sub(include, source.read_text(encoding="utf-8"))


def render(template: str, variables: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        found = match[0]
        if found in ("$${", "%%{"):
            return found[1:]
        if found == "%{":
            raise TemplateError("template directives (%{...}) are not supported")
        expr = EXPR.fullmatch(match["expr"].strip())
        if expr is None:
            raise TemplateError(f"unsupported expression ${{{match['expr']}}}")
        name = expr["name"] or expr["encoded"]
        if name not in variables:
            raise TemplateError(f"no value for template variable {name!r}")
        return _jsonencode(variables[name]) if expr["encoded"] else variables[name]

    return TOKEN.sub(substitute, template)


def used_variables(template: str) -> set[str]:
    names = set()
    for match in TOKEN.finditer(template):
        expr = EXPR.fullmatch((match["expr"] or "").strip())
        if expr is not None:
            names.add(expr["name"] or expr["encoded"])
    return names


def _jsonencode(value: str) -> str:
    """Terraform's jsonencode of a string: JSON, with <, > and & escaped as Go does."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build or render spotguard's user-data.")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help=f"write {TARGET.name} from {SOURCE.name}")
    build_cmd.add_argument("--check", action="store_true", help="only say whether it is stale")
    render_cmd = commands.add_parser("render", help="render the template to stdout")
    render_cmd.add_argument("--template", type=Path, default=TARGET)
    render_cmd.add_argument(
        "--var", action="append", default=[], metavar="NAME=VALUE", help="one per variable"
    )
    render_cmd.add_argument(
        "--var-file", action="append", default=[], metavar="NAME=PATH", help="value from a file"
    )
    args = parser.parse_args(argv)
    if args.command == "build":
        built = build()
        if args.check:
            stale = not TARGET.exists() or TARGET.read_text(encoding="utf-8") != built
            if stale:
                print(
                    f"{TARGET} is stale: run python3 {Path(__file__).name} build", file=sys.stderr
                )
            return int(stale)
        TARGET.write_text(built, encoding="utf-8")
        return 0
    variables = {name: value for name, _, value in (v.partition("=") for v in args.var)}
    for name, _, path in (v.partition("=") for v in args.var_file):
        variables[name] = Path(path).read_text(encoding="utf-8")
    try:
        sys.stdout.write(render(args.template.read_text(encoding="utf-8"), variables))
    except TemplateError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
