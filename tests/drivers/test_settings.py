"""Every option of every driver survives ``describe()`` -> ``driver_from_config``, pickling,
and the public constructors: checked field by field, the fields read from the settings
dataclasses (a new option is covered without touching this file)."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import json
import os
import pickle
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import aicechunk as aic
from aicechunk.drivers import driver_from_config
from aicechunk.drivers.base import ConfiguredDriver
from aicechunk.drivers.gcs import GCSDriver, GCSSettings
from aicechunk.drivers.http import HTTPDriver, HTTPSettings
from aicechunk.drivers.local import LocalDriver, LocalSettings
from aicechunk.drivers.memory import MemoryDriver, MemorySettings
from aicechunk.drivers.s3 import S3Credentials, S3Driver, S3Settings
from aicechunk.drivers.settings import SECRET, DriverSettings
from aicechunk.storage import storage_from_url

DRIVERS: list[type[ConfiguredDriver[Any]]] = [
    GCSDriver,
    HTTPDriver,
    LocalDriver,
    MemoryDriver,
    S3Driver,
]

# values a field of this name must have to be valid at all
VALID = {
    "bucket": "some-bucket",
    "endpoint_url": "http://127.0.0.1:9000",
    "base_url": "https://data.example/published/repo",
    "root": "/srv/aicechunk-test-root",
    "name": "memory-settings-test",
}


def fresh_keys() -> tuple[str, str, None, datetime]:
    """A ``get_credentials`` callable (module-level: it pickles)."""
    return ("refreshed-key", "refreshed-secret", None, datetime(2030, 1, 1, tzinfo=UTC))


def travels_by_pickle_only(hint: Any) -> bool:
    """Refreshable credentials (a callable, an expiry) are not JSON: they travel by pickle
    (and in fork payloads), as icechunk's do; so does a dataclass that requires one."""
    union = typing.get_origin(hint) in (typing.Union, type(int | None))
    for arg in typing.get_args(hint) if union else (hint,):
        origin = typing.get_origin(arg) or arg
        if origin in (collections.abc.Callable, datetime):
            return True
        if isinstance(origin, type) and dataclasses.is_dataclass(origin):
            hints = typing.get_type_hints(origin)
            if any(
                _default(f) is dataclasses.MISSING and travels_by_pickle_only(hints[f.name])
                for f in dataclasses.fields(origin)
            ):
                return True
    return False


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def other_value(f: dataclasses.Field[Any], hint: Any, json_ready: bool = False) -> Any:
    """A valid value for the field that is not its default."""
    if f.name in VALID:
        return VALID[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, type(int | None)):
        (hint,) = args
    origin = typing.get_origin(hint) or hint
    default = _default(f)
    if isinstance(origin, type) and dataclasses.is_dataclass(origin):
        return non_default(origin, json_ready)
    if origin is collections.abc.Callable:
        return fresh_keys
    if origin is datetime:
        return datetime(2030, 1, 1, tzinfo=UTC)
    if origin is bool:
        return not default
    if origin is int:
        return (default or 0) + 7
    if origin is float:
        return (default or 0.0) + 1.5
    if origin is str:
        return f"value-of-{f.name}"
    if origin is tuple:
        return ("/elsewhere/a", "/elsewhere/b")
    if origin in (dict, Mapping):
        return {"X-Api-Key": f"value-of-{f.name}"}
    raise AssertionError(f"no test value for {f.name}: {hint!r}")


def non_default(cls: type[Any], json_ready: bool = False) -> Any:
    """An instance of the settings dataclass ``cls`` with every field off its default
    (``json_ready``: but those that travel by pickle only)."""
    hints = typing.get_type_hints(cls)
    values = {
        f.name: other_value(f, hints[f.name], json_ready)
        for f in dataclasses.fields(cls)
        if not (json_ready and travels_by_pickle_only(hints[f.name]))
    }
    made = cls(**values)
    for f in dataclasses.fields(cls):
        if f.name in values:
            assert getattr(made, f.name) != _default(f), f"{cls.__name__}.{f.name} is default"
    return made


def secrets_of(obj: Any) -> list[str]:
    """The secret values inside settings (fields marked ``SECRET``, nested too)."""
    found: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found += secrets_of(value)
        elif f.metadata.get("wrap") is SECRET["wrap"] and value is not None:
            found += list(value.values()) if isinstance(value, Mapping) else [value]
    return found


def assert_same(rebuilt: DriverSettings, settings: DriverSettings) -> None:
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]
        assert getattr(rebuilt, f.name) == getattr(settings, f.name), f.name
    assert rebuilt == settings


@pytest.mark.parametrize("cls", DRIVERS, ids=lambda c: c.type_name)
def test_every_setting_survives_describe_and_rebuild(cls: type[ConfiguredDriver[Any]]) -> None:
    settings = non_default(cls.settings_type, json_ready=True)
    driver = cls.from_settings(settings)
    config = driver.describe()
    assert config["type"] == cls.type_name == settings.type_name
    assert json.loads(json.dumps(config)) == config
    rebuilt = driver_from_config(json.loads(json.dumps(config)))
    assert type(rebuilt) is cls
    assert_same(rebuilt.settings, settings)


@pytest.mark.parametrize("cls", DRIVERS, ids=lambda c: c.type_name)
def test_every_setting_survives_pickling(cls: type[ConfiguredDriver[Any]]) -> None:
    settings = non_default(cls.settings_type)
    clone = pickle.loads(pickle.dumps(cls.from_settings(settings)))
    assert type(clone) is cls
    assert_same(clone.settings, settings)


@pytest.mark.parametrize("cls", DRIVERS, ids=lambda c: c.type_name)
def test_defaults_rebuild_from_a_bare_config(cls: type[ConfiguredDriver[Any]]) -> None:
    settings = non_default(cls.settings_type)
    required = {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if _default(f) is dataclasses.MISSING
    }
    rebuilt = driver_from_config({"type": cls.type_name, **required})
    for f in dataclasses.fields(settings):
        if f.name not in required and f.default_factory is dataclasses.MISSING:
            assert getattr(rebuilt.settings, f.name) == f.default, f.name  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", DRIVERS, ids=lambda c: c.type_name)
def test_secrets_are_never_shown(cls: type[ConfiguredDriver[Any]]) -> None:
    settings = non_default(cls.settings_type)
    driver = cls.from_settings(settings)
    shown = [repr(settings), repr(driver), repr(driver.describe()), str(driver.describe())]
    for secret in secrets_of(settings):
        for text in shown:
            assert secret not in text


# --- constructors ------------------------------------------------------------------------

CONSTRUCTED = [S3Driver, GCSDriver, HTTPDriver, LocalDriver]


def _parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


@pytest.mark.parametrize("cls", CONSTRUCTED, ids=lambda c: c.type_name)
def test_driver_constructors_take_every_setting_with_its_default(
    cls: type[ConfiguredDriver[Any]],
) -> None:
    params = _parameters(cls)
    settings = non_default(cls.settings_type)
    kwargs = {}
    for f in dataclasses.fields(settings):
        assert f.name in params, f"{cls.__name__}() has no {f.name!r}"
        default = params[f.name].default
        if default is not inspect.Parameter.empty and default is not None:
            assert default == _default(f), f.name
        kwargs[f.name] = getattr(settings, f.name)
    assert_same(cls(**kwargs).settings, settings)


def _s3_kwargs(settings: S3Settings) -> dict[str, Any]:
    kwargs = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    creds = kwargs.pop("credentials")
    kwargs.update(dataclasses.asdict(creds))
    return kwargs


STORAGES: list[tuple[Callable[..., aic.Storage], type[DriverSettings]]] = [
    (aic.s3_storage, S3Settings),
    (aic.gcs_storage, GCSSettings),
    (aic.http_storage, HTTPSettings),
]


@pytest.mark.parametrize(("make", "settings_type"), STORAGES, ids=[m.__name__ for m, _ in STORAGES])
def test_storage_constructors_take_every_setting_with_its_default(
    make: Callable[..., aic.Storage], settings_type: type[DriverSettings]
) -> None:
    settings: Any = non_default(settings_type)
    if isinstance(settings, S3Settings):
        # keys, anonymous access and get_credentials exclude each other in s3_storage
        # (refreshable credentials: tests/test_icechunk_api.py)
        settings = dataclasses.replace(
            settings,
            credentials=dataclasses.replace(
                settings.credentials, anonymous=False, get_credentials=None
            ),
        )
        kwargs = _s3_kwargs(settings)
        fields = [*dataclasses.fields(S3Credentials), *dataclasses.fields(settings)]
    else:
        if isinstance(settings, GCSSettings):
            # refreshable credentials exclude the other kinds in gcs_storage (the driver
            # itself lets anonymous win; refreshable ones: tests/test_gcs_credentials.py)
            settings = dataclasses.replace(settings, credentials=None)
        kwargs = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        fields = list(dataclasses.fields(settings))
    params = _parameters(make)
    for f in fields:
        if f.name == "credentials":
            continue
        assert f.name in params, f"{make.__name__}() has no {f.name!r}"
        default = params[f.name].default
        if default is not inspect.Parameter.empty and default is not None:
            assert default == _default(f), f.name
    storage = make(**kwargs)
    assert_same(settings_type.from_config(storage.config), settings)
    assert_same(
        settings_type.from_config(pickle.loads(pickle.dumps(storage)).driver().describe()),
        settings,
    )


def test_memory_settings_name_the_live_driver() -> None:
    driver = MemoryDriver()
    assert driver.settings == MemorySettings(driver.label, os.getpid())
    assert driver_from_config(driver.describe()) is driver
    assert pickle.loads(pickle.dumps(driver)) is driver


def test_local_settings_keep_the_root_absolute(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    assert LocalSettings("repo").root == str(tmp_path / "repo")
    assert LocalDriver("repo").describe()["root"] == str(tmp_path / "repo")


def test_bad_configs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="local driver config needs 'root'"):
        driver_from_config({"type": "local"})
    with pytest.raises(ValueError, match="'max_workers'"):
        driver_from_config({"type": "local", "root": "/x", "max_workers": "many"})
    with pytest.raises(ValueError, match="bare bucket name"):
        driver_from_config({"type": "s3", "bucket": "a/b"})


# --- storage URLs --------------------------------------------------------------------


def test_storage_from_url(tmp_path: Path) -> None:
    assert storage_from_url(str(tmp_path)).config["root"] == str(tmp_path)
    assert storage_from_url(f"file://{tmp_path}/a%20b").config["root"] == f"{tmp_path}/a b"
    s3 = storage_from_url("s3://bucket/some/prefix/", region="eu-west-1").config
    assert (s3["type"], s3["bucket"], s3["prefix"], s3["region"]) == (
        "s3",
        "bucket",
        "some/prefix",
        "eu-west-1",
    )
    for url in ("gs://bucket/p", "gcs://bucket/p"):
        gcs = storage_from_url(url, timeout=5.0).config
        assert (gcs["type"], gcs["bucket"], gcs["prefix"], gcs["timeout"]) == (
            "gcs",
            "bucket",
            "p",
            5.0,
        )
    http = storage_from_url("https://user:pw@data.example/repo").config
    assert http["base_url"] == "https://data.example/repo" and "Authorization" in http["headers"]
    with pytest.raises(aic.AicechunkError, match="unsupported storage URL"):
        storage_from_url("ftp://host/repo")
    with pytest.raises(ValueError, match=r"\.\."):
        storage_from_url("s3://bucket/a/../b")
