"""Render a kustomization of deploy/k8s/ without kubectl: the subset of kustomize these files use.

    python -m deploy.k8s.render deploy/k8s/overlays/cpu     # YAML documents on stdout

`kubectl apply -k` (kustomize built into kubectl) is how a cluster applies the overlays; this
renderer exists so the project's own set-up, which has no kustomize binary (no PyPI or Debian
package ships one), can render and schema-check them in CI. It implements what deploy/k8s uses
and refuses anything else by name, so a kustomization that grows a feature fails loudly here:
  resources  files (one or more YAML documents) and folders holding a kustomization.yaml
  images     name -> newName / newTag / digest, in every (init) container of a pod template
  patches    `path:` strategic-merge patches, matched to one resource by apiVersion, kind, name;
             lists merge by the Kubernetes merge key of their field (containers by name,
             container ports by containerPort, ...), other lists are replaced, maps merge
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

from contract.cli import run_guarded
from contract.errors import UserError

SUPPORTED = {"apiVersion", "kind", "resources", "images", "patches"}
# list fields that Kubernetes' strategic merge patch merges by a key (the rest are replaced)
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "imagePullSecrets": "name"}
PORT_KEYS = ("containerPort", "port")   # container ports, then Service ports


class KustomizeError(UserError):
    """A kustomization this renderer cannot render; the message names the file and field."""


def _documents(path: Path) -> list[dict]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        raise KustomizeError(f"{path}: {e}") from None


def _identity(resource: dict) -> tuple:
    return resource.get("apiVersion"), resource.get("kind"), resource.get("metadata", {}).get("name")


def merge(base, patch, field: str | None = None):
    """Strategic merge of `patch` into `base` (a new object; neither argument changes)."""
    if isinstance(patch, dict) and isinstance(base, dict):
        if any(k.startswith("$") for k in patch):
            raise KustomizeError(f"patch directive {sorted(k for k in patch if k.startswith('$'))} "
                                 "is not supported by this renderer")
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)          # null deletes a field, as in kustomize
            else:
                out[key] = merge(base[key], value, key) if key in base else copy.deepcopy(value)
        return out
    if isinstance(patch, list) and isinstance(base, list):
        key = MERGE_KEYS.get(field)
        if field == "ports":
            key = next((k for k in PORT_KEYS if all(isinstance(i, dict) and k in i for i in base + patch)), None)
        if key is None:
            return copy.deepcopy(patch)
        out = copy.deepcopy(base)
        index = {item[key]: i for i, item in enumerate(out)}
        for item in patch:
            if item[key] in index:
                out[index[item[key]]] = merge(out[index[item[key]]], item, None)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def split_image(ref: str) -> tuple[str, str | None]:
    """'registry:5000/repo/name:tag' -> ('registry:5000/repo/name', 'tag'); a digest is dropped."""
    ref = ref.split("@")[0]
    name, sep, tag = ref.rpartition(":")
    return (ref, None) if not sep or "/" in tag else (name, tag)


def _set_images(resource: dict, images: list[dict], where: Path) -> None:
    pod = resource.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, tag = split_image(container.get("image", ""))
        for image in images:
            unknown = set(image) - {"name", "newName", "newTag", "digest"}
            if unknown:
                raise KustomizeError(f"{where}: images entry {image.get('name')!r} has {sorted(unknown)}")
            if image["name"] == name:
                new = image.get("newName", name)
                if image.get("digest"):
                    container["image"] = f"{new}@{image['digest']}"
                else:
                    container["image"] = f"{new}:{image['newTag']}" if image.get("newTag") else \
                        (f"{new}:{tag}" if tag else new)


def render(folder: str | Path) -> list[dict]:
    """The resources a kustomization folder produces, in the order its resources list them."""
    folder = Path(folder)
    path = folder / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    documents = _documents(path)
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise KustomizeError(f"{path}: expected one YAML mapping")
    kustomization = documents[0]
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: {sorted(unknown)} not supported by deploy/k8s/render.py "
                             f"(it renders {sorted(SUPPORTED)}); use kubectl kustomize")
    resources = []
    for entry in kustomization.get("resources", []):
        target = (folder / entry).resolve()
        resources += render(target) if target.is_dir() else _documents(target)
    seen = [_identity(r) for r in resources]
    if len(seen) != len(set(seen)):
        raise KustomizeError(f"{path}: a resource is listed twice: {seen}")
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise KustomizeError(f"{path}: patches entry {entry}: only `path:` is supported")
        for patch in _documents(folder / entry["path"]):
            matches = [i for i, r in enumerate(resources) if _identity(r) == _identity(patch)]
            if len(matches) != 1:
                raise KustomizeError(f"{folder / entry['path']}: {_identity(patch)} matches "
                                     f"{len(matches)} resources, expected one")
            resources[matches[0]] = merge(resources[matches[0]], patch)
    for resource in resources:
        _set_images(resource, kustomization.get("images", []), path)
    return resources


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return run_guarded(lambda: print(yaml.safe_dump_all(render(argv[0]), sort_keys=False), end=""))


if __name__ == "__main__":
    sys.exit(main())
