"""Reading an expert's artifact: only after its bytes match the sha256 the registry recorded for it."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from transferkit.errors import ArtifactCorruptError
from transferkit.registry.artifacts import ArtifactStore, safetensors_metadata
from transferkit.registry.engines import first_line
from transferkit.registry.entities import ExpertRecord

if TYPE_CHECKING:  # torch is imported lazily: `transferkit list` should not pay for it
    import torch


class VerifiedArtifacts:
    """The artifact reads of `RegistryStore` (mixed into `SqlAlchemyStore`)."""

    artifacts: ArtifactStore

    def load_expert_tensors(self, expert: ExpertRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        import safetensors.torch

        data = self._verified_bytes(expert)
        try:  # the digest matched, so a parse failure means the stored blob was never valid
            return safetensors.torch.load(data), safetensors_metadata(data)
        except Exception as error:  # noqa: BLE001 - safetensors raises several unrelated types
            raise ArtifactCorruptError(
                f"artifact of expert {expert.name} ({expert.id}) at {self.artifacts.location(expert.artifact_uri)} "
                f"is not a readable safetensors file ({error}); re-train the expert"
            ) from error

    def verify_artifact(self, expert: ExpertRecord) -> None:
        self._verified_bytes(expert)

    def read_artifact(self, expert: ExpertRecord) -> bytes:
        return self._verified_bytes(expert)

    def _verified_bytes(self, expert: ExpertRecord) -> bytes:
        path = self.artifacts.location(expert.artifact_uri)
        expected = expert.artifact_sha256
        try:
            data = self.artifacts.get(expert.artifact_uri)
        except ArtifactCorruptError:
            raise
        except Exception as error:  # noqa: BLE001 - OSError locally; fsspec backends add their own error types
            reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
            raise ArtifactCorruptError(
                f"artifact of expert {expert.name} ({expert.id}) is missing or unreadable at {path} "
                f"({reason}; expected sha256 {expected[:12]}); "
                "restore the file from a backup or re-train the expert"
            ) from error
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ArtifactCorruptError(
                f"artifact of expert {expert.name} ({expert.id}) at {path} is corrupt: "
                f"expected sha256 {expected[:12]}, found {actual[:12]}; "
                "restore the file from a backup or re-train the expert"
            )
        return data
