"""Where `open_registry` puts the database and artifacts, and how it reports a registry it cannot open."""

from __future__ import annotations

import platformdirs
import pytest

from transferkit.errors import RegistryError
from transferkit.registry import FsspecArtifactStore, open_registry


def _paths(store):
    return store.engine.url.database, store.artifacts.root


def test_artifacts_live_beside_a_sqlite_file(tmp_path):
    store = open_registry(f"sqlite:///{tmp_path}/team/x.db")
    assert _paths(store) == (str(tmp_path / "team" / "x.db"), tmp_path / "team" / "x-artifacts")
    assert (tmp_path / "team" / "x.db").is_file()
    store.close()


def test_relative_sqlite_path_is_resolved_at_open(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_registry("sqlite:///rel.db")
    assert _paths(store) == (str(tmp_path / "rel.db"), tmp_path / "rel-artifacts")
    store.close()


def test_default_location_is_the_user_data_dir():
    store = open_registry()
    data_dir = platformdirs.user_data_dir("transferkit")
    assert _paths(store) == (f"{data_dir}/registry.db", store.artifacts.root)
    assert str(store.artifacts.root) == f"{data_dir}/registry-artifacts"
    store.close()


def test_environment_variables_are_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_REGISTRY", f"sqlite:///{tmp_path}/env.db")
    monkeypatch.setenv("TRANSFERKIT_ARTIFACT_ROOT", str(tmp_path / "legacy"))  # the older name still works ...
    store = open_registry()
    assert _paths(store) == (str(tmp_path / "env.db"), tmp_path / "legacy")
    store.close()
    monkeypatch.setenv("TRANSFERKIT_ARTIFACTS", f"file://{tmp_path}/blobs")  # ... and the new one wins
    store = open_registry()
    assert _paths(store) == (str(tmp_path / "env.db"), tmp_path / "blobs")
    store.close()
    monkeypatch.setenv("TRANSFERKIT_ARTIFACTS", "memory://team/blobs")
    store = open_registry()
    assert isinstance(store.artifacts, FsspecArtifactStore) and store.artifacts.url == "memory://team/blobs"
    store.close()
    explicit = open_registry(f"sqlite:///{tmp_path}/arg.db", tmp_path / "arg-blobs")
    assert _paths(explicit) == (str(tmp_path / "arg.db"), tmp_path / "arg-blobs")
    explicit.close()


def test_non_file_url_keeps_artifacts_in_the_user_data_dir():
    store = open_registry("sqlite://")
    assert str(store.artifacts.root) == f"{platformdirs.user_data_dir('transferkit')}/artifacts"
    assert store.count_experts() == 0  # migrated in memory
    store.close()


@pytest.mark.parametrize(
    "url",
    ["not a url", "nosuchdb://host/db", "sqlite:///{tmp}/a-file/x.db", "postgresql+nosuchdriver://user:secret@host/db"],
)
def test_unusable_url_is_a_registry_error(tmp_path, url):
    (tmp_path / "a-file").write_text("occupies the folder name")
    with pytest.raises(RegistryError, match="cannot open the registry") as caught:
        open_registry(url.format(tmp=tmp_path))
    message = str(caught.value)
    assert "secret" not in message and "\n" not in message
    assert ("not a url" in message) or ("//" in message)


def test_postgresql_url_uses_psycopg_and_keeps_artifacts_in_the_user_data_dir(postgres_server):
    url = postgres_server.create_database()
    store = open_registry(url.replace("postgresql+psycopg://", "postgresql://"))
    assert store.engine.dialect.driver == "psycopg"
    assert str(store.artifacts.root) == f"{platformdirs.user_data_dir('transferkit')}/artifacts"
    assert store.count_experts() == 0
    store.close()


def test_unreachable_postgresql_is_a_one_line_registry_error(postgres_server):
    with pytest.raises(RegistryError, match="cannot open the registry postgresql") as caught:
        open_registry(f"postgresql://alice:secret@127.0.0.1:{postgres_server.port}/no_such_database")
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)
