"""The cluster definitions start as written: Ray's own launcher validation for cluster/aws-gpu.yaml, the
RayJob CRD's OpenAPI schema and the "restricted" Pod Security Standard for cluster/rayjob.yaml, and a
Dockerfile whose base, installs and paths agree with pyproject.toml and both cluster files."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.docker import docker_start_cmds
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

from rscert.cli import build_parser
from rscert.config.certify import load_config

from .jobutil import ROOT

CLUSTER = ROOT / "cluster"
CRD = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayjobs.yaml"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(path: Path):
    return yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 (a safe loader)


# -- the Dockerfile ------------------------------------------------------------------------------------
def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    kept = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(kept))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip()]


def _image() -> dict:
    """Facts of the image cluster/Dockerfile builds: its base, Ray/Python/CUDA versions, expected tag."""
    steps = _instructions(CLUSTER / "Dockerfile")
    base = next(arg for op, arg in steps if op == "FROM")
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+)", base)
    assert match, f"the base must be an exactly pinned official Ray CUDA image, got {base!r}"
    ray_version, major, minor, cuda = match.groups()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return {"steps": steps, "ray": ray_version, "python": f"{major}.{minor}", "cuda": cuda,
            "tag": f"rscert:{version}-ray{ray_version}-py{major}{minor}-{cuda}"}


def test_dockerfile_base_matches_the_ray_and_python_rscert_runs_on():
    image = _image()
    assert image["ray"] == ray.__version__ == "2.60.0"
    assert image["python"] == "3.11"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pyproject["requires-python"] == ">=3.11"
    assert image["cuda"].startswith("cu1")


# The `ray` image's build matrix in ray-project/ray's ray-images.yaml (read through the search tool's code
# index; Docker Hub was not reachable from here): Python 3.10-3.13 on these CUDA platforms (tagged
# -cu<major><minor>); CUDA 13.0 appears in Ray's CI only as a Python 3.12 variant of other images.
RAY_IMAGE_PYTHONS = {"3.10", "3.11", "3.12", "3.13"}
RAY_IMAGE_CUDAS = {"cu117", "cu118", "cu121", "cu123", "cu124", "cu125", "cu126", "cu128", "cu129"}


def test_dockerfile_base_is_a_tag_ray_builds():
    image = _image()
    assert image["python"] in RAY_IMAGE_PYTHONS and image["cuda"] in RAY_IMAGE_CUDAS, image
    tag = image["tag"].split(":", 1)[1]
    for name in ("cluster/README.md", "cluster/aws-gpu.yaml", "cluster/rayjob.yaml"):
        text = (ROOT / name).read_text()
        assert tag in text and f"{image['ray']}-py{image['python'].replace('.', '')}-{image['cuda']}" in text, name


def test_submit_commands_agree_and_claim_no_unmeasured_speed():
    """README, cluster/README.md and the job files submit the same way, and job files make no speed claim."""
    submit = "ray job submit --address"
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "README.md", ROOT / "cluster" / "README.md",
                                               *sorted((ROOT / "jobs").glob("*"))] if p.is_file()}
    for name, text in texts.items():
        for line in text.splitlines():
            if submit in line:
                assert "--runtime-env cluster/runtime_env.yaml" in line and "--working-dir" not in line, (name, line)
        if name.endswith(".yaml"):
            assert not re.search(r"\d+(\.\d+)?x faster", text), name
    assert "ray start --head" in texts["README.md"] and "source .venv/bin/activate" in texts["README.md"]


def test_job_files_share_the_split_of_the_published_logs():
    """A job file's runs and the imported published logs of the same dataset land in one panel."""
    from rscert.analysis.import_logs import facts_from_path

    for path in sorted((ROOT / "jobs").glob("[!t]*.yaml")):  # certify job files (not train_*)
        job = yaml.safe_load(path.read_text())
        facts = facts_from_path(f"/certify/{job['dataset']}/m/noise_0.25/test/sigma_0.25")
        assert job["split"] == facts.split, path.name


def test_dockerfile_installs_exactly_what_pyproject_and_the_torch_pin_name():
    steps = _image()["steps"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = {src for op, arg in steps if op == "COPY" for src in shlex.split(arg)[1:-1] if not src.startswith("--")}
    # what building rscert needs: its metadata, its readme, its package, the torch pin
    assert {"pyproject.toml", pyproject["readme"], "pipeline", "requirements/torch.txt", "jobs"} <= copied
    installs = [shlex.split(arg) for op, arg in steps if op == "RUN" and "pip install" in arg]
    assert installs, "the Dockerfile installs nothing"
    ray_dep = next(d for d in pyproject["dependencies"] if d.startswith("ray["))
    ray_extras = ray_dep[ray_dep.index("[") : ray_dep.index("]") + 1]
    for args in installs:
        assert args[:4] == ["python", "-m", "pip", "install"], args
        rest = [a for a in args[4:] if a != "--no-cache-dir"]
        while rest:
            arg = rest.pop(0)
            if arg in ("-r", "-c"):
                assert rest.pop(0) == "requirements/torch.txt"  # the one place torch is pinned
            elif arg.startswith("ray["):
                assert arg == f"ray{ray_extras}=={_image()['ray']}"  # pyproject's Ray extras, at the base's version
            else:
                match = re.fullmatch(r"\.(\[([\w,-]+)\])?", arg)
                assert match, f"the Dockerfile installs {arg!r}, which pyproject.toml does not name"
                extras = set((match.group(2) or "").split(",")) - {""}
                assert extras <= set(pyproject.get("optional-dependencies", {})), extras
    installed = " ".join(" ".join(a) for a in installs)
    assert "-r requirements/torch.txt" in installed and re.search(r"(^| )\.(\[|$| )", installed + " ")
    names = {re.split(r"[<>=\[ ;]", d)[0] for d in pyproject["dependencies"]}
    assert "s3fs" in names  # object stores are part of what `pip install .` brings
    torch_pins = (ROOT / "requirements" / "torch.txt").read_text().split()
    assert torch_pins == ["torch==2.14.1", "torchvision==0.29.1"]
    user = [arg for op, arg in steps if op == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0"  # numeric, not root


# -- the Ray cluster launcher config -------------------------------------------------------------------
def test_aws_config_passes_rays_own_preparation_and_validation():
    raw = _yaml(CLUSTER / "aws-gpu.yaml")
    config = prepare_config(copy.deepcopy(raw))  # merges the AWS defaults as `ray up` does
    validate_config(config)  # Ray's JSON schema and its own consistency checks; no AWS call
    assert config["setup_commands"] == []  # the defaults' `pip install ray` wheel must not creep in
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] >= 1  # stated, so the autoscaler knows a new node brings a GPU
    assert config["docker"]["image"].endswith("/" + _image()["tag"])


def test_aws_config_ships_one_token_to_every_node_and_turns_token_auth_on():
    config = prepare_config(copy.deepcopy(_yaml(CLUSTER / "aws-gpu.yaml")))
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in ray_starts)
    # the container Ray starts on each node gets the token file and the mode (Ray's own docker command)
    docker = config["docker"]
    run = docker_start_cmds("ubuntu", docker["image"], config["file_mounts"], docker["container_name"],
                            docker["run_options"] + docker["worker_run_options"], config["cluster_name"],
                            "/home/ray", "docker")
    assert re.search(r"-v \S+/~/\.ray/auth_token:/home/ray/\.ray/auth_token ", run), run
    assert "--env RAY_AUTH_MODE=token" in run and "--gpus all" in run


def test_runtime_env_is_accepted_by_ray_and_installs_nothing():
    env = RuntimeEnv(**_yaml(CLUSTER / "runtime_env.yaml"))
    assert env["working_dir"] == "."
    assert env["env_vars"]["RAY_AUTH_MODE"] == "token"
    assert "pip" not in env and "conda" not in env  # the image has the dependencies


# -- the KubeRay RayJob --------------------------------------------------------------------------------
def _json_schema(node):
    """The CRD's OpenAPI v3 structural schema as JSON Schema: int-or-string, nullable, and unknown fields
    rejected (as `kubectl apply` does with strict field validation) unless x-kubernetes-preserve-unknown-fields."""
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@pytest.fixture(scope="module")
def rayjob_validator():
    crd = _yaml(CRD)
    assert crd["spec"]["names"]["kind"] == "RayJob"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _json_schema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(validator, manifest) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def test_rayjob_is_valid_against_the_crd_schema(rayjob_validator):
    manifest = _yaml(CLUSTER / "rayjob.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    assert _errors(rayjob_validator, manifest) == []


def test_the_schema_check_bites(rayjob_validator):
    manifest = _yaml(CLUSTER / "rayjob.yaml")
    typo = copy.deepcopy(manifest)
    typo["spec"]["rayClusterSpec"]["authOption"] = typo["spec"]["rayClusterSpec"].pop("authOptions")
    assert any("authOption" in e for e in _errors(rayjob_validator, typo))
    bad_mode = copy.deepcopy(manifest)
    bad_mode["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"
    assert any("authOptions.mode" in e for e in _errors(rayjob_validator, bad_mode))
    bad_replicas = copy.deepcopy(manifest)
    bad_replicas["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "sixteen"
    assert _errors(rayjob_validator, bad_replicas)


def test_rayjob_token_auth_reaches_the_whole_cluster():
    spec = _yaml(CLUSTER / "rayjob.yaml")["spec"]
    auth = spec["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    assert tuple(int(p) for p in spec["rayClusterSpec"]["rayVersion"].split(".")) >= (2, 52)  # token auth exists
    assert spec["rayClusterSpec"]["rayVersion"] == _image()["ray"]
    # the Secret the comments tell you to create is the one named, with KubeRay's key
    text = (CLUSTER / "rayjob.yaml").read_text()
    assert f"kubectl create secret generic {auth['secretName']} --from-literal=auth_token=" in text


def _pod_specs(spec: dict) -> dict[str, dict]:
    cluster = spec["rayClusterSpec"]
    pods = {"submitter": spec["submitterPodTemplate"]["spec"], "head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        pods[f"worker {group['groupName']}"] = group["template"]["spec"]
    return pods


def _restricted_violations(pod: dict, extra_containers: list[dict] = ()) -> list[str]:
    """Kubernetes' "restricted" Pod Security Standard, the checks a pod spec can fail."""
    found = []
    pod_sc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(flag)
    found += [f"volume {v['name']} is hostPath" for v in pod.get("volumes", []) if "hostPath" in v]
    if pod_sc.get("runAsUser") == 0:
        found.append("pod runAsUser 0")
    for c in [*pod.get("initContainers", []), *pod["containers"], *extra_containers]:
        sc = c.get("securityContext", {})
        name = c.get("name", "autoscaler")
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities must drop ALL")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) in (0, None):
            found.append(f"{name}: no numeric non-root runAsUser (the image's user is checked by name otherwise)")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile")
    return found


def test_rayjob_pods_meet_the_restricted_pod_security_standard():
    spec = _yaml(CLUSTER / "rayjob.yaml")["spec"]
    pods = _pod_specs(spec)
    assert set(pods) == {"submitter", "head", "worker gpu"}
    for name, pod in pods.items():
        extra = [spec["rayClusterSpec"]["autoscalerOptions"]] if name == "head" else []
        for c in extra:  # the autoscaler sidecar inherits the head pod's securityContext
            c.setdefault("name", "autoscaler")
        assert _restricted_violations(pod, extra) == [], name
    # the check itself catches a root, privileged container
    bad = copy.deepcopy(pods["head"])
    bad["containers"][0]["securityContext"] = {"privileged": True, "runAsUser": 0}
    bad.pop("securityContext")
    assert len(_restricted_violations(bad)) >= 4


def test_rayjob_image_is_the_pinned_rscert_image():
    spec = _yaml(CLUSTER / "rayjob.yaml")["spec"]
    images = {c["image"] for pod in _pod_specs(spec).values() for c in pod["containers"]}
    assert len(images) == 1
    (image,) = images
    assert image.endswith("/" + _image()["tag"]) and not image.endswith(":latest")
    aws = _yaml(CLUSTER / "aws-gpu.yaml")["docker"]["image"]
    assert aws == image  # one image for both paths


def test_rayjob_entrypoint_runs_the_image_job_file_with_object_store_paths():
    spec = _yaml(CLUSTER / "rayjob.yaml")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "/home/ray/rscert/jobs/certify.py"]
    workdir = next(arg for op, arg in _image()["steps"] if op == "WORKDIR")
    assert workdir == "/home/ray/rscert"  # where the Dockerfile puts jobs/
    args = build_parser().parse_args(["certify", *argv[2:]])
    config_path = Path(args.config)
    assert config_path.is_relative_to(workdir)
    local = ROOT / config_path.relative_to(workdir)
    assert local.is_file(), f"{local} is not in the repository"
    overrides = {k: v for k, v in vars(args).items() if k in ("data", "out", "checkpoint", "min_actors")}
    overrides["data"] = overrides["data"][0]
    config = load_config(str(local), overrides)
    for value in (config.data, config.out, config.checkpoint):
        assert str(value).startswith("s3://"), value  # nothing points at a path no pod mounts
    assert config.min_actors == 16 == spec["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]


CERTIFY_JOBS = sorted(p.name for p in (ROOT / "jobs").glob("*.yaml") if not p.name.startswith("train"))


@pytest.mark.parametrize("job", CERTIFY_JOBS)
def test_certify_job_files_read_and_write_only_object_stores(job):
    values = _yaml(ROOT / "jobs" / job)
    for key in ("data", "out", "checkpoint"):
        assert str(values[key]).startswith("s3://"), f"{job}: {key} = {values[key]!r} is not an object-store URL"
