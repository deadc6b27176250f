"""Where the CLI's settings come from: one env file, or else the process environment.

The names are those of `shared.config.Settings` (INPUT_BUCKET, EVENTS_TOPIC, ...) plus where things run
(STATUS_URL, *_EMULATOR_HOST). The file is `--env-file`, else `$EMBEDPIPE_ENV_FILE`, else `.local/env` in
the current directory when present (`make up` writes it). A file is authoritative: the process
environment adds nothing to it, so a stray variable of another project cannot send a local command to
the cloud or the other way round. Without a file, the process environment is used as it is.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from embedpipe.errors import ConfigError
from shared.config import Settings

__all__ = ["DEFAULT_ENV_FILE", "EMULATOR_HOSTS", "Config", "parse_env_file"]

DEFAULT_ENV_FILE = Path(".local") / "env"
#: The variables the Google client libraries read themselves to talk to an emulator.
EMULATOR_HOSTS = ("FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")


def parse_env_file(text: str) -> dict[str, str]:
    """`KEY=VALUE` lines as `infra/local/stack.py` writes them (shell-quoted values, `#` comments)."""
    import shlex

    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, raw = stripped.removeprefix("export ").partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"line {number} is not KEY=VALUE")
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise ConfigError(f"line {number}: {exc}") from None
        values[key.strip()] = words[0] if words else ""
    return values


class _FileSettings(Settings):
    """Settings from the given values only (the env file's), never from the process environment."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings,)


@dataclass(frozen=True)
class Config:
    values: Mapping[str, str]
    source: str  # the env file's path, or "the environment"
    from_file: bool = False

    @classmethod
    def load(cls, env_file: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
             cwd: Path | None = None) -> Config:
        """The settings of this invocation. `env_file` given but missing is an error; `.local/env` is
        used only if it exists."""
        environ = os.environ if environ is None else environ
        path = Path(env_file) if env_file else None
        if path is None:
            default = (cwd or Path.cwd()) / DEFAULT_ENV_FILE
            path = default if default.is_file() else None
        elif not path.is_file():
            raise ConfigError(f"no env file at {path} (start the local stack with `make up`, or leave --env-file "
                              "out to use the environment)")
        if path is None:
            return cls(dict(environ), "the environment")
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return cls(parse_env_file(text), str(path), from_file=True)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.message}") from None

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        return value if value else default

    def require(self, name: str, why: str = "") -> str:
        """The value of `name`; a `ConfigError` naming it and the fix when it is unset or empty."""
        value = self.get(name)
        if value is None:
            where = f" in {self.source}" if self.from_file else ""
            purpose = f" ({why})" if why else ""
            raise ConfigError(f"{name} is not set{where}{purpose}: run `make up` for the local stack, or set {name} "
                              "(and the other settings of your project)")
        return value

    @property
    def project(self) -> str:
        return self.require("GOOGLE_CLOUD_PROJECT", "the Google Cloud project")

    def settings(self) -> Settings:
        """The pipeline's `Settings` over these values (defaults for what they leave out)."""
        names = Settings.model_fields
        given = {key.lower(): value for key, value in self.values.items() if key.lower() in names}
        try:
            return _FileSettings(**given) if self.from_file else Settings(**given)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = str(first["loc"][0]).upper() if first["loc"] else "a setting"
            raise ConfigError(f"{name} is invalid in {self.source}: {first['msg']}") from None

    @contextlib.contextmanager
    def client_environment(self) -> Iterator[None]:
        """The emulator variables of these settings in `os.environ` while the block runs (the Google
        clients read them there); from a file, also unset those the file does not name."""
        if not self.from_file:
            yield
            return
        with environment({key: self.values[key] if self.get(key) else None for key in EMULATOR_HOSTS}):
            yield


@contextlib.contextmanager
def environment(changes: dict[str, str | None]) -> Iterator[None]:
    """`os.environ` with `changes` (None unsets) while the block runs, restored as it was afterwards."""
    saved = {key: os.environ.get(key) for key in changes}
    try:
        _set_environment(changes)
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
