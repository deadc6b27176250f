"""Offline check of infra/terraform against the Google provider's schema (no `terraform init` needed).

`terraform validate` needs the provider binary, which cannot be downloaded here. The provider's schema is
also published, generated, in the npm package @cdktf/provider-google (16.12.1 = hashicorp/google 6.50.0):
each resource's `index.js` maps every argument and nested block to its Terraform name, and `index.d.ts`
marks which are required. This script reads both and reports, for every resource and data source of the
configuration, arguments or blocks the schema does not have, and required ones that are missing.

    npm pack @cdktf/provider-google@16.12.1 && tar xzf cdktf-provider-google-16.12.1.tgz   # once, anywhere
    .venv-tools/bin/python tools/check_tf_schema.py --schema package/lib infra/terraform

It needs python-hcl2 (installed with checkov in .venv-tools). What it does not check: types, values,
references to computed attributes, and anything the provider validates at plan time.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import hcl2

META = {"count", "for_each", "depends_on", "lifecycle", "provider", "provisioner", "connection",
        "__start_line__", "__end_line__"}
_RETURN = re.compile(r"return \{\n(?P<body>.*?)\n\s*\};", re.S)
_ENTRY = re.compile(r"^\s*(?P<key>[a-z_0-9]+): (?P<expr>.+?),?$")
_CONVERTER = re.compile(r"(?<![\w.])([a-z]\w*)ToTerraform\b")
_FIELD = re.compile(r"\((?:struct\.|this\._)(\w+)\)")


@dataclass
class Block:
    arguments: dict[str, str] = field(default_factory=dict)  # terraform name -> camelCase name
    blocks: dict[str, str] = field(default_factory=dict)  # terraform name -> converter (struct) name
    required: set[str] = field(default_factory=set)


class Schema:
    def __init__(self, folder: Path):
        self.js = (folder / "index.js").read_text()
        self.dts = (folder / "index.d.ts").read_text()

    def _entries(self, body: str) -> Block:
        block = Block()
        for line in body.splitlines():
            match = _ENTRY.match(line)
            if not match:
                continue
            key, expr = match["key"], match["expr"]
            converter = _CONVERTER.search(expr)
            camel = _FIELD.search(expr)
            if converter:
                block.blocks[key] = converter.group(1)
            else:
                block.arguments[key] = camel.group(1) if camel else key
            if converter and camel:
                block.arguments.setdefault(f"__camel__{key}", camel.group(1))
        return block

    def _required(self, interface: str, block: Block) -> None:
        match = re.search(rf"export interface {interface}\b[^{{]*\{{(?P<body>.*?)\n\}}", self.dts, re.S)
        if not match:
            return
        required_camel = set(re.findall(r"readonly (\w+): ", match["body"]))
        camel_to_key = {camel: key for key, camel in block.arguments.items() if not key.startswith("__camel__")}
        camel_to_key.update({camel: key[len("__camel__"):] for key, camel in block.arguments.items()
                             if key.startswith("__camel__")})
        block.required = {camel_to_key[c] for c in required_camel if c in camel_to_key}

    @cache  # noqa: B019 - a handful of schemas per run
    def top(self) -> Block:
        match = re.search(r"synthesizeAttributes\(\) \{\n\s*return \{\n(?P<body>.*?)\n\s*\};", self.js, re.S)
        block = self._entries(match["body"])
        config = re.search(r"export interface (\w+Config) extends cdktf\.TerraformMetaArguments", self.dts)
        if config:
            self._required(config.group(1), block)
        return block

    @cache  # noqa: B019
    def nested(self, converter: str) -> Block:
        match = re.search(rf"function {converter}ToTerraform\(struct\) \{{(?P<fn>.*?)\n\}}", self.js, re.S)
        if not match:
            return Block()
        returned = _RETURN.search(match["fn"])
        block = self._entries(returned["body"]) if returned else Block()
        self._required(converter[0].upper() + converter[1:], block)
        return block


def folder_for(kind: str, type_name: str, root: Path) -> Path:
    name = type_name.removeprefix("google_").replace("_", "-")
    return root / (f"data-google-{name}" if kind == "data" else name)


def _bodies(value):
    """hcl2 gives a block as a list of dicts (or one dict); yield each body."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            yield item


def check_body(schema: Schema, block: Block, body: dict, where: str, problems: list[str]) -> None:
    present = set()
    for key, value in body.items():
        if key in META:
            continue
        if key == "dynamic":
            for dynamic in _bodies(value):
                for name, spec in dynamic.items():
                    present.add(name)
                    if name not in block.blocks:
                        problems.append(f"{where}: no block {name!r} (dynamic)")
                        continue
                    for content in _bodies(spec.get("content", [])):
                        check_body(schema, schema.nested(block.blocks[name]), content, f"{where}.{name}", problems)
            continue
        present.add(key)
        if key in block.blocks:
            for nested in _bodies(value):
                check_body(schema, schema.nested(block.blocks[key]), nested, f"{where}.{key}", problems)
        elif key not in block.arguments:
            problems.append(f"{where}: no argument or block {key!r}")
    for missing in sorted(block.required - present):
        problems.append(f"{where}: required {missing!r} is missing")


def check(config_dir: Path, schema_root: Path) -> tuple[list[str], int]:
    problems: list[str] = []
    checked = 0
    schemas: dict[Path, Schema] = {}  # one per folder: a type is often used by several blocks
    for path in sorted(config_dir.glob("*.tf")):
        with path.open() as handle:
            parsed = hcl2.load(handle)
        for kind in ("resource", "data"):
            for entry in parsed.get(kind, []):
                for type_name, instances in entry.items():
                    folder = folder_for(kind, type_name, schema_root)
                    if not folder.is_dir():
                        problems.append(f"{path.name}: unknown {kind} type {type_name}")
                        continue
                    if folder not in schemas:
                        schemas[folder] = Schema(folder)
                    schema = schemas[folder]
                    for name, body in instances.items():
                        checked += 1
                        check_body(schema, schema.top(), body, f"{path.name}: {type_name}.{name}", problems)
    return problems, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="Terraform configuration folder")
    parser.add_argument("--schema", type=Path, required=True, help="@cdktf/provider-google's package/lib folder")
    args = parser.parse_args(argv)
    problems, checked = check(args.config, args.schema)
    for problem in problems:
        print(problem)
    print(f"{checked} resources and data sources checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
