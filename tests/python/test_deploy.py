"""deploy/: the manifests validate against their schemas and every spin.toml variable is set.

* Kubernetes core objects (Namespace, Secret, StatefulSet, Service, HorizontalPodAutoscaler) are
  validated with the strict (no unknown fields) JSON schemas of Kubernetes that the
  ``kubernetes-validate`` package ships.
* The SpinApp is validated against the openAPIV3Schema of SpinKube's CRD
  (deploy/schemas/spinapps.core.spinkube.dev.yaml, vendored from spin-operator), made strict the
  way the API server's pruning is (an unknown field is an error here), and its metadata against
  Kubernetes' ObjectMeta.
* Each deployment form — SpinKube, Fermyon Cloud, self-hosted systemd — sets every variable that
  spin.toml declares (names are read from spin.toml, so a new variable fails this test until
  every form has it), and their references hold (Secret names and keys, the runtime config on
  Redis, the HPA's target).

These tests start no server and need no network.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from importlib_resources import files
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.33.0"
CRD = DEPLOY / "schemas" / "spinapps.core.spinkube.dev.yaml"


def spin_variables() -> list[str]:
    manifest = tomllib.loads((REPO / "spin.toml").read_text())
    names = list(manifest.get("variables", {}))
    assert names, "spin.toml declares no [variables]"
    return names


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_docs() if d["kind"] == kind]


# --- schemas -------------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """The CRD's structural schema as strict JSON Schema: an object schema with `properties` and
    no `additionalProperties` (nor x-kubernetes-preserve-unknown-fields) admits no other field,
    as the API server prunes them; `x-kubernetes-*` markers and `format` hints are dropped."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: strict(v)
        for k, v in schema.items()
        if not k.startswith("x-kubernetes-") and k != "format"
    }
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def spinapp_validator() -> jsonschema.Draft7Validator:
    crds = [d for d in yaml.safe_load_all(CRD.read_text()) if d]
    assert len(crds) == 1 and crds[0]["kind"] == "CustomResourceDefinition"
    spec = crds[0]["spec"]
    assert (spec["group"], spec["names"]["kind"]) == ("core.spinkube.dev", "SpinApp")
    (version,) = [v for v in spec["versions"] if v["name"] == "v1alpha1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def object_meta_validator() -> jsonschema.Validator:
    base = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    meta = json.loads((base / "objectmeta-meta-v1.json").read_text())
    defs = json.loads((base / "_definitions.json").read_text())
    registry = Resource.from_contents(defs) @ (Resource.from_contents(meta) @ Registry())
    return jsonschema.Draft202012Validator(meta, registry=registry)


def spinapp_errors(doc: dict[str, Any]) -> list[str]:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in spinapp_validator().iter_errors(doc)
    ]
    errors += [
        f"metadata/{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in object_meta_validator().iter_errors(doc.get("metadata", {}))
    ]
    if doc["apiVersion"] != "core.spinkube.dev/v1alpha1":
        errors.append(f"apiVersion: {doc['apiVersion']!r} is not core.spinkube.dev/v1alpha1")
    spec = doc.get("spec", {})
    if spec.get("enableAutoscaling") and "replicas" in spec:
        errors.append("spec: replicas cannot be set with enableAutoscaling: true (CRD rule)")
    return errors


def test_every_manifest_validates_against_its_schema():
    docs = k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"SpinApp", "Secret", "HorizontalPodAutoscaler", "StatefulSet", "Service"} <= kinds, kinds
    for name, doc in docs:
        where = f"{name}: {doc['kind']} {doc.get('metadata', {}).get('name')}"
        if doc["kind"] == "SpinApp":
            errors = spinapp_errors(doc)
            assert not errors, f"{where}: {errors}"
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                pytest.fail(f"{where}: no Kubernetes {K8S_VERSION} schema: {e}")


def test_the_validators_reject_broken_manifests():
    (app,) = by_kind("SpinApp")
    bad = copy.deepcopy(app)
    bad["spec"]["replicaCount"] = 2  # a typo the API server would silently prune
    assert any("replicaCount" in e for e in spinapp_errors(bad))
    bad = copy.deepcopy(app)
    bad["spec"]["variables"][0]["valueFrom"]["secretKeyRef"].pop("key")
    assert any("'key' is a required property" in e for e in spinapp_errors(bad))
    bad = copy.deepcopy(app)
    del bad["spec"]["image"]
    assert any("'image' is a required property" in e for e in spinapp_errors(bad))
    bad = copy.deepcopy(app)
    bad["spec"]["replicas"] = 3
    bad["metadata"]["labelz"] = {}
    errors = spinapp_errors(bad)
    assert any("replicas cannot be set" in e for e in errors) == bool(app["spec"].get("enableAutoscaling"))
    assert any(e.startswith("metadata/") and "labelz" in e for e in errors), errors
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    bad = copy.deepcopy(hpa)
    bad["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# --- SpinKube ------------------------------------------------------------------------------------


def secret_keys() -> dict[str, dict[str, str]]:
    out = {}
    for s in by_kind("Secret"):
        data = dict(s.get("stringData", {}))
        data.update({k: "(base64)" for k in s.get("data", {})})
        out[s["metadata"]["name"]] = data
    return out


def test_spinkube_binds_every_spin_variable_to_a_secret_key_that_exists():
    (app,) = by_kind("SpinApp")
    bound = [v["name"] for v in app["spec"]["variables"]]
    assert sorted(bound) == sorted(set(bound)), "a variable is bound twice"
    missing = [n for n in spin_variables() if n not in bound]
    assert missing == [], f"spinapp.yaml does not set {missing}"
    unknown = [n for n in bound if n not in spin_variables()]
    assert unknown == [], f"spinapp.yaml sets variables spin.toml does not declare: {unknown}"
    secrets = secret_keys()
    for v in app["spec"]["variables"]:
        ref = v.get("valueFrom", {}).get("secretKeyRef")
        assert ref or "value" in v, v
        if ref:
            assert ref["name"] in secrets, f"{v['name']}: no Secret {ref['name']!r}"
            assert ref["key"] in secrets[ref["name"]], f"{v['name']}: Secret {ref['name']} has no key {ref['key']!r}"
    for s in by_kind("Secret"):
        assert s["metadata"]["namespace"] == app["metadata"]["namespace"]


def test_spinkube_runtime_config_puts_the_default_store_on_the_redis_service():
    (app,) = by_kind("SpinApp")
    name = app["spec"]["runtimeConfig"]["loadFromSecret"]
    secrets = secret_keys()
    assert list(secrets[name]) == ["runtime-config.toml"], "SpinKube reads exactly this key"
    rc = tomllib.loads(secrets[name]["runtime-config.toml"])
    store = rc["key_value_store"]["default"]
    assert store["type"] == "redis"
    host = re.match(r"redis://(?:[^@]*@)?([^:/]+)", store["url"]).group(1)
    services = {
        f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc.cluster.local"
        for s in by_kind("Service")
    }
    assert host in services, f"{host} is not a Service of deploy/kubernetes ({services})"
    (redis,) = [s for s in by_kind("Service") if host.startswith(s["metadata"]["name"] + ".")]
    assert store["url"].split(":")[-1].split("/")[0] == str(redis["spec"]["ports"][0]["port"])


def test_the_hpa_scales_the_spinapps_deployment():
    (app,) = by_kind("SpinApp")
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert app["spec"]["enableAutoscaling"] is True and "replicas" not in app["spec"]
    target = hpa["spec"]["scaleTargetRef"]
    # The Spin operator names the Deployment after the SpinApp.
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", app["metadata"]["name"])
    assert hpa["metadata"]["namespace"] == app["metadata"]["namespace"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # A CPU utilisation target needs CPU requests on the pods.
    assert app["spec"]["resources"]["requests"]["cpu"]


# --- Fermyon Cloud and self-hosted ---------------------------------------------------------------


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=VALUE: {line!r}"
            assert name not in out, f"{path.name}: {name} twice"
            out[name] = value
    return out


def test_fermyon_cloud_variables_file_sets_every_variable():
    names = env_file(DEPLOY / "fermyon-cloud" / "variables.env.example")
    assert sorted(names) == sorted(spin_variables())
    script = (DEPLOY / "fermyon-cloud" / "deploy.sh").read_text()
    assert "spin cloud deploy" in script and "--variable" in script


def test_self_hosted_env_file_sets_every_variable_and_the_unit_uses_redis():
    env = env_file(DEPLOY / "self-hosted" / "lumen.env.example")
    expected = {f"SPIN_VARIABLE_{n.upper()}" for n in spin_variables()}
    assert set(env) == expected, (expected - set(env), set(env) - expected)
    rc = tomllib.loads((DEPLOY / "self-hosted" / "runtime-config.toml").read_text())
    assert rc["key_value_store"]["default"]["type"] == "redis"
    unit = (DEPLOY / "self-hosted" / "lumen@.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()
    assert exec_start[:2] == ["/usr/local/bin/spin", "up"]
    assert exec_start[exec_start.index("--runtime-config-file") + 1] == "/etc/lumen/runtime-config.toml"
    assert "EnvironmentFile=/etc/lumen/lumen.env" in unit.splitlines()
    assert "--listen" in exec_start and "127.0.0.1:%i" in exec_start
