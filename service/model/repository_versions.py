"""Which version a build writes, what it may not change, and how it is published.

`build-repo` writes version N of every model of its target under staging names and
publishes them together once every export passed its check (`Staging`): a failed build
leaves no version behind, and a finished one appears in one rename per model
(`service.versions`). Shared per model, and so fixed once a model has versions: its
`spec.json` (classes, input, tensor names) and its labels.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import TracebackType

from service.spec import ModelSpec, SpecError, load_labels
from service.versions import is_version_name, numbered_versions, publish, staging_dir


class RepositoryError(ValueError):
    """The build would overwrite a version or change what a model's versions share."""


def choose_version(output: Path, names: list[str], version: str | None, force: bool) -> str:
    """The version this build writes for the models `names`: `version`, or the number
    after the highest any of them has (1 in a new repository). Raises `RepositoryError`
    for a version that is not a positive number, or one that exists (unless `force`)."""
    present = {name: numbered_versions(output / name) for name in names}
    if version is None:
        highest = max((int(v) for found in present.values() for v in found), default=0)
        return str(highest + 1)
    if not is_version_name(version):
        raise RepositoryError(f"--version must be a positive number, got {version!r}")
    taken = [name for name, found in present.items() if version in found]
    if taken and not force:
        raise RepositoryError(
            f"version {version} exists for {', '.join(taken)} under {output}: pick another "
            "--version (or none: the next free number), or pass --force to replace it"
        )
    return version


def check_shared_files(
    output: Path, spec: ModelSpec, labels: list[str], replacing: str | None = None
) -> None:
    """Refuse (`RepositoryError`) a build whose spec or labels differ from those the
    model's other versions (all but `replacing`, the one this build overwrites) share:
    Triton and the gateway read one config, spec and labels file per model, so new weights
    with other classes are another model."""
    model_dir = output / spec.name
    versions = [v for v in numbered_versions(model_dir) if v != replacing]
    if not versions:
        return
    try:
        current = ModelSpec.load(model_dir)
    except SpecError as exc:
        raise RepositoryError(f"{model_dir} has versions {versions} but {exc}") from exc
    if current != spec:
        changed = sorted(
            name for name in spec.__dataclass_fields__
            if getattr(current, name) != getattr(spec, name)
        )
        details = ", ".join(
            f"{name} {getattr(current, name)!r} -> {getattr(spec, name)!r}" for name in changed
        )
        raise RepositoryError(
            f"these weights would change the spec that versions {', '.join(versions)} of "
            f"{spec.name} share ({details}): build them into another repository (--output), "
            "as another model"
        )
    try:
        present = load_labels(model_dir / spec.labels_file)
    except SpecError:
        return  # a missing labels file is rewritten: nothing is served without one
    if present != labels:
        raise RepositoryError(
            f"{model_dir / spec.labels_file} (shared by versions {', '.join(versions)}) "
            "differs from the labels of this build; pass the same --labels, or build another "
            "model"
        )


class Staging:
    """The staging directories of one version of several models; a context manager that
    publishes them all on a clean exit (replacing existing ones only with `replace`) and
    deletes them all on an error."""

    def __init__(self, output: Path, version: str, *, replace: bool = False) -> None:
        self.output = output
        self.version = version
        self.replace = replace
        self._dirs: dict[str, Path] = {}

    def dir_for(self, model: str) -> Path:
        """A fresh, empty staging directory for `model`'s version."""
        path = staging_dir(self.output / model, self.version)
        shutil.rmtree(path, ignore_errors=True)  # left by a build that was killed
        path.mkdir(parents=True)
        self._dirs[model] = path
        return path

    def version_dir(self, model: str) -> Path:
        """Where `model`'s version will be once published."""
        return self.output / model / self.version

    def __enter__(self) -> Staging:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            for path in self._dirs.values():
                shutil.rmtree(path, ignore_errors=True)
            return
        for model, path in self._dirs.items():
            publish(path, self.version_dir(model), replace=self.replace)
