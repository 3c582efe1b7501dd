"""Render a Kustomize directory without the kubectl binary: the subset deploy/k8s uses.

Supported: `resources` (files, and directories holding a kustomization.yaml, rendered
recursively), `namespace` (set on every namespaced object), `images` (newName/newTag of
matching container images) and `patches` whose patch is a `$patch: delete` of one object.
Anything else in a kustomization raises UnsupportedKustomization, so a manifest change
that this renderer would get wrong fails loudly instead of validating the wrong objects.
When `kubectl` is installed the tests also compare this rendering with `kubectl kustomize`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole",
                  "ClusterRoleBinding", "CustomResourceDefinition"}


class UnsupportedKustomization(ValueError):
    """A kustomization uses a feature this renderer does not implement."""


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize directory` would print (in resource order)."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(render(target))
        else:
            objects.extend(copy.deepcopy(load_documents(target)))
    for patch in spec.get("patches", []):
        objects = _apply_delete(objects, patch, directory)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for container in _containers(objects):
            _retag(container, image)
    return objects


def object_id(obj: dict[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name): what identifies an object in a rendering."""
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _apply_delete(objects: list[dict[str, Any]], patch: dict[str, Any],
                  directory: Path) -> list[dict[str, Any]]:
    if set(patch) != {"patch"}:
        raise UnsupportedKustomization(f"{directory}: only inline patches: {patch}")
    body = yaml.safe_load(patch["patch"])
    if body.get("$patch") != "delete":
        raise UnsupportedKustomization(f"{directory}: only `$patch: delete` patches")
    key = (body["apiVersion"], body["kind"], body["metadata"]["name"])
    kept = [o for o in objects
            if (o["apiVersion"], o["kind"], o["metadata"]["name"]) != key]
    if len(kept) != len(objects) - 1:
        raise UnsupportedKustomization(f"{directory}: the patch matches no object: {key}")
    return kept


def _containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        out.extend(pod.get("containers", []) + pod.get("initContainers", []))
    return out


def _retag(container: dict[str, Any], image: dict[str, str]) -> None:
    name, _, tag = container["image"].partition(":")
    wanted_name, _, wanted_tag = image["name"].partition(":")
    if name != wanted_name or (wanted_tag and tag != wanted_tag):
        return
    new_name = image.get("newName", name)
    new_tag = image.get("newTag", tag)
    container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
