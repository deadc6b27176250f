"""Offline check of infra/terraform against its providers' schemas (no `terraform init` needed).

`terraform validate` needs the provider binaries, which cannot be downloaded here. Their schemas are also
published, generated, in npm packages: @cdktf/provider-google and @cdktf/provider-google-beta 16.12.1
(hashicorp/google and google-beta 6.50.0), @cdktf/provider-time 11.0.1 (hashicorp/time 0.13.1). Each
resource's `index.js` maps every argument and nested block to its Terraform name, and `index.d.ts` marks
which are required. This script reads both and reports, for every resource and data source of the
configuration, arguments or blocks the schema does not have, required ones that are missing, and types no
given provider has. A resource is checked against the provider its `provider` argument names, else the one
its type's prefix names (google_*, time_*).

    make tf-schema        # npm packs the three packages once into .venv-tools/schemas, then runs:
    .venv-tools/bin/python tools/check_tf_schema.py infra/terraform \
        --schema google=cdktf-provider-google-16.12.1.tgz --schema google-beta=... --schema time=...

A schema is the package's .tgz (read without unpacking it) or its unpacked `package/lib` folder. It needs
python-hcl2 (installed with checkov in .venv-tools). What it does not check: types, values, references to
computed attributes, and anything the provider validates at plan time.
"""

from __future__ import annotations

import argparse
import re
import sys
import tarfile
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
    def __init__(self, js: str, dts: str):
        self.js = js
        self.dts = dts

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


def folder_name(kind: str, type_name: str, provider: str) -> str:
    """The package folder of a type. Data sources keep the type's prefix (data-google-project); resources
    drop it (google_storage_bucket -> storage-bucket, time_sleep -> sleep), except in google-beta's package,
    which keeps it (google-storage-bucket)."""
    if kind == "data":
        return "data-" + type_name.replace("_", "-")
    name = type_name if provider == "google-beta" else type_name.split("_", 1)[1]
    return name.replace("_", "-")


def provider_of(type_name: str, body: dict) -> str:
    """The `provider` argument's provider (`google-beta` of `google-beta.alias`), else the type's prefix."""
    given = body.get("provider")
    if isinstance(given, list) and given:  # python-hcl2 gives an argument as a one-item list
        given = given[0]
    if isinstance(given, str) and given:
        return given.strip("${}").split(".")[0]
    return type_name.split("_", 1)[0]


class SchemaSource:
    """One provider's schema: an npm package .tgz (read in one pass) or an unpacked `package/lib` folder."""

    def __init__(self, path: Path):
        self.path = path

    def load(self, folders: set[str]) -> dict[str, Schema]:
        texts: dict[tuple[str, str], str] = {}
        wanted = {f"{folder}/{name}" for folder in folders for name in ("index.js", "index.d.ts")}
        if self.path.is_dir():
            for item in wanted:
                file = self.path / item
                if file.is_file():
                    texts[tuple(item.split("/"))] = file.read_text()
        else:
            with tarfile.open(self.path, "r:gz") as archive:
                for member in archive:
                    item = member.name.removeprefix("package/lib/")
                    if item in wanted:
                        texts[tuple(item.split("/"))] = archive.extractfile(member).read().decode()
        return {folder: Schema(texts[(folder, "index.js")], texts[(folder, "index.d.ts")])
                for folder in folders if (folder, "index.js") in texts and (folder, "index.d.ts") in texts}


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


def _instances(config_dir: Path):
    """(file name, kind, type, name, body) of every resource and data source of the configuration."""
    for path in sorted(config_dir.glob("*.tf")):
        with path.open() as handle:
            parsed = hcl2.load(handle)
        for kind in ("resource", "data"):
            for entry in parsed.get(kind, []):
                for type_name, instances in entry.items():
                    for name, body in instances.items():
                        yield path.name, kind, type_name, name, body


def check(config_dir: Path, schemas: dict[str, Path]) -> tuple[list[str], int]:
    problems: list[str] = []
    found = list(_instances(config_dir))
    needed: dict[str, set[str]] = {}
    for _, kind, type_name, _, body in found:
        provider = provider_of(type_name, body)
        needed.setdefault(provider, set()).add(folder_name(kind, type_name, provider))
    loaded = {provider: SchemaSource(schemas[provider]).load(folders)
              for provider, folders in needed.items() if provider in schemas}
    checked = 0
    for file_name, kind, type_name, name, body in found:
        provider = provider_of(type_name, body)
        if provider not in schemas:
            problems.append(f"{file_name}: {kind} {type_name}.{name}: no schema given for provider {provider!r}")
            continue
        schema = loaded[provider].get(folder_name(kind, type_name, provider))
        if schema is None:
            problems.append(f"{file_name}: unknown {kind} type {type_name} (provider {provider})")
            continue
        checked += 1
        check_body(schema, schema.top(), body, f"{file_name}: {type_name}.{name}", problems)
    return problems, checked


def _schema_argument(value: str) -> tuple[str, Path]:
    provider, sep, path = value.partition("=")
    if not sep or not provider or not path:
        raise argparse.ArgumentTypeError(f"expected PROVIDER=PATH, got {value!r}")
    if not Path(path).exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist (npm pack the schema package first: make tf-schema)")
    return provider, Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="Terraform configuration folder")
    parser.add_argument("--schema", type=_schema_argument, action="append", required=True,
                        help="PROVIDER=PATH: a @cdktf/provider-* .tgz or its package/lib folder (repeat per provider)")
    args = parser.parse_args(argv)
    problems, checked = check(args.config, dict(args.schema))
    for problem in problems:
        print(problem)
    print(f"{checked} resources and data sources checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
