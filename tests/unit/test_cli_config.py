"""The CLI's settings: which source wins, what a missing setting says, the emulator variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embedpipe.config import Config, parse_env_file
from embedpipe.errors import BadArgument, ConfigError
from embedpipe.uploads import content_type_for, object_name, upload_metadata
from shared.domain.options import JobOptions


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_env_file_lines_as_the_local_stack_writes_them():
    text = "# header\n\nINPUT_BUCKET=in\nPOLLER_TOKEN='a b#c'\nexport EVENTS_TOPIC=events # note\nEMPTY=\n"
    assert parse_env_file(text) == {"INPUT_BUCKET": "in", "POLLER_TOKEN": "a b#c", "EVENTS_TOPIC": "events", "EMPTY": ""}


def test_a_malformed_env_file_names_the_line():
    with pytest.raises(ConfigError, match="line 2 is not KEY=VALUE"):
        parse_env_file("A=1\nnot a setting\n")


def test_local_env_in_the_current_directory_wins_over_the_environment(tmp_path):
    write(tmp_path / ".local" / "env", "INPUT_BUCKET=from-file\n")
    config = Config.load(environ={"INPUT_BUCKET": "from-env", "OUTPUT_BUCKET": "out"}, cwd=tmp_path)
    assert config.from_file and config.source.endswith(".local/env")
    assert config.get("INPUT_BUCKET") == "from-file"
    assert config.get("OUTPUT_BUCKET") is None, "a file is authoritative: nothing is mixed in from the environment"


def test_without_a_file_the_environment_is_used(tmp_path):
    config = Config.load(environ={"INPUT_BUCKET": "from-env"}, cwd=tmp_path)
    assert not config.from_file and config.source == "the environment"
    assert config.require("INPUT_BUCKET") == "from-env"


def test_an_explicit_env_file_must_exist(tmp_path):
    write(tmp_path / ".local" / "env", "INPUT_BUCKET=x\n")
    with pytest.raises(ConfigError, match="no env file at .*missing.env"):
        Config.load(tmp_path / "missing.env", environ={}, cwd=tmp_path)
    assert Config.load(write(tmp_path / "other.env", "INPUT_BUCKET=y\n"), cwd=tmp_path).get("INPUT_BUCKET") == "y"


def test_a_missing_setting_names_the_variable_and_the_fix(tmp_path):
    config = Config.load(write(tmp_path / "env", "INPUT_BUCKET=\n"))
    with pytest.raises(ConfigError) as err:
        config.require("INPUT_BUCKET", "where files are uploaded")
    message = err.value.message
    assert "INPUT_BUCKET is not set" in message and "run `make up`" in message and "set INPUT_BUCKET" in message
    assert "\n" not in message


def test_settings_from_a_file_ignore_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OUTPUT_PREFIX", "leaked/")
    monkeypatch.setenv("INPUT_PREFIX", "leaked/")
    config = Config.load(write(tmp_path / "env", "INPUT_PREFIX=mine/\nDEFAULT_OUTPUT_DIMENSIONALITY=256\n"))
    settings = config.settings()
    assert settings.input_prefix == "mine/" and settings.output_prefix == "embeddings/"
    assert settings.default_options().output_dimensionality == 256


def test_an_invalid_setting_is_one_clear_error(tmp_path):
    config = Config.load(write(tmp_path / "env", "MAX_BATCH_ATTEMPTS=many\n"))
    with pytest.raises(ConfigError, match="MAX_BATCH_ATTEMPTS is invalid"):
        config.settings()


def test_client_environment_sets_the_files_emulators_and_restores(tmp_path, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "elsewhere:1")
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    config = Config.load(write(tmp_path / "env", "FIRESTORE_EMULATOR_HOST=127.0.0.1:9\n"))
    with config.client_environment():
        assert os.environ["FIRESTORE_EMULATOR_HOST"] == "127.0.0.1:9"
        assert "PUBSUB_EMULATOR_HOST" not in os.environ, "a cloud env file must not reach a local emulator"
    assert "FIRESTORE_EMULATOR_HOST" not in os.environ
    assert os.environ["PUBSUB_EMULATOR_HOST"] == "elsewhere:1"


# -- upload's pure parts ----------------------------------------------------------------------------------


def test_object_names_under_the_input_prefix():
    assert object_name("incoming/", Path("/x/faq.jsonl"), None, several=True) == "incoming/faq.jsonl"
    assert object_name("incoming/", Path("faq.jsonl"), "kb/v2.jsonl", several=False) == "incoming/kb/v2.jsonl"
    assert object_name("incoming/", Path("faq.jsonl"), "kb/", several=True) == "incoming/kb/faq.jsonl"
    with pytest.raises(BadArgument, match="--name names one object"):
        object_name("incoming/", Path("faq.jsonl"), "kb.jsonl", several=True)


@pytest.mark.parametrize(("name", "content_type"), [
    ("a.jsonl", "application/jsonl"), ("a.JSONL.gz", "application/jsonl"), ("a.md", "text/markdown"),
    ("a.csv", "text/csv"), ("a.txt", "text/plain"), ("a.bin", "application/octet-stream"),
])
def test_content_types(name, content_type):
    assert content_type_for(Path(name)) == content_type


def test_options_become_the_metadata_keys_the_pipeline_reads():
    metadata = upload_metadata(JobOptions(), task_type="semantic-similarity", output_dimensionality=256, priority=None,
                               chunk_size=64, chunk_overlap=8, on_bad_record="fail")
    assert metadata == {"task_type": "semantic-similarity", "output_dimensionality": "256", "chunk_size": "64",
                        "chunk_overlap": "8", "on_bad_record": "fail"}


def test_a_bad_option_is_refused_before_upload_naming_the_flag():
    with pytest.raises(BadArgument, match=r"--dimensions 5: allowed values are integers from 128 to 3072"):
        upload_metadata(JobOptions(), output_dimensionality=5)
    with pytest.raises(BadArgument, match="--chunk-overlap"):
        upload_metadata(JobOptions(chunk_size=512), chunk_size=32, chunk_overlap=40)
