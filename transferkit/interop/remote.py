"""Where bundles are shared: `transferkit push` and `pull` talk to a `BundleRemote`.

Two remotes behind one interface: a folder (local disk, a mounted share; what the tests use) and a
Hugging Face Hub repository (`hf://owner/name`, optionally `@revision`), for users who have the Hub.
A remote holds bundles by name, as `<name>.transferkit.tar.gz`. What comes back is imported like any
other bundle: read in memory, checked, then restored.
"""

from __future__ import annotations

import abc
import re
import shutil
import stat
from pathlib import Path

from transferkit.durable import write_failure
from transferkit.errors import InvalidInputError, NotFoundError, OutputError, RemoteError
from transferkit.interop.bundle import BUNDLE_SUFFIX

HUB_SCHEME = "hf://"
_BUNDLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_bundle_name(name: str) -> str:
    if not _BUNDLE_NAME.match(name) or ".." in name:
        raise InvalidInputError(
            f"bundle name {name!r} must be letters, digits, '.', '_' or '-' (at most 200, no '..'); pass --name"
        )
    return name


class BundleRemote(abc.ABC):
    """A place that stores bundles by name."""

    @abc.abstractmethod
    def push(self, archive: Path, name: str) -> str:
        """Upload the bundle file `archive` as `name`; returns where it now is."""

    @abc.abstractmethod
    def fetch(self, name: str) -> Path:
        """A local, readable copy of the bundle `name` (NotFoundError if the remote has none)."""


class FolderRemote(BundleRemote):
    """Bundles as files in a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser()

    def _path(self, name: str) -> Path:
        return self.root / f"{check_bundle_name(name)}{BUNDLE_SUFFIX}"

    def push(self, archive: Path, name: str) -> str:
        target = self._path(name)
        if target.exists() or target.is_symlink():
            raise OutputError(f"{target} already exists; push under another --name")
        tmp = target.with_name(f".{target.name}.partial")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(archive, tmp)
            tmp.replace(target)
        except OSError as error:
            needed = archive.stat().st_size if archive.is_file() else 0
            raise RemoteError(f"cannot write {target} ({write_failure(error, target, needed)}); free space or pass a "
                              "writable folder") from None
        finally:
            tmp.unlink(missing_ok=True)
        return str(target)

    def fetch(self, name: str) -> Path:
        path = self._path(name)
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            raise NotFoundError(f"{self.root} has no bundle named {name!r} ({path.name})") from None
        if not stat.S_ISREG(mode):
            raise InvalidInputError(f"{path} is not a regular file; refused")
        return path


class HubRemote(BundleRemote):
    """Bundles as files in a Hugging Face Hub model repository (token from HF_TOKEN or `hf auth login`)."""

    def __init__(self, repo_id: str, revision: str | None = None) -> None:
        if not _REPO_ID.match(repo_id):
            raise InvalidInputError(f"{repo_id!r} is not a Hub repository id (owner/name)")
        self.repo_id, self.revision = repo_id, revision

    def push(self, archive: Path, name: str) -> str:
        from huggingface_hub import HfApi

        filename = f"{check_bundle_name(name)}{BUNDLE_SUFFIX}"
        api = HfApi()
        try:
            api.create_repo(self.repo_id, exist_ok=True)
            api.upload_file(
                path_or_fileobj=str(archive), path_in_repo=filename, repo_id=self.repo_id, revision=self.revision,
                commit_message=f"transferkit bundle {name}",
            )
        except Exception as error:  # noqa: BLE001 - the Hub client raises many types; all mean "not uploaded"
            raise RemoteError(f"cannot push to {HUB_SCHEME}{self.repo_id}: {_first_line(error)}") from None
        return f"{HUB_SCHEME}{self.repo_id}/{filename}"

    def fetch(self, name: str) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

        filename = f"{check_bundle_name(name)}{BUNDLE_SUFFIX}"
        try:
            return Path(hf_hub_download(self.repo_id, filename, revision=self.revision))
        except RemoteEntryNotFoundError:
            raise NotFoundError(f"{HUB_SCHEME}{self.repo_id} has no bundle named {name!r} ({filename})") from None
        except RepositoryNotFoundError:
            raise NotFoundError(f"{HUB_SCHEME}{self.repo_id} does not exist or your token cannot read it") from None
        except Exception as error:  # noqa: BLE001 - offline mode, network, auth: all mean "not downloaded"
            raise RemoteError(f"cannot pull from {HUB_SCHEME}{self.repo_id}: {_first_line(error)}") from None


def open_remote(spec: str) -> BundleRemote:
    """`hf://owner/name[@revision]` is a Hub repository; anything else is a folder path."""
    if spec.startswith(HUB_SCHEME):
        repo, _, revision = spec[len(HUB_SCHEME):].partition("@")
        return HubRemote(repo.strip("/"), revision or None)
    if not spec.strip():
        raise InvalidInputError("the remote is empty; pass a folder or hf://owner/name")
    return FolderRemote(Path(spec))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
