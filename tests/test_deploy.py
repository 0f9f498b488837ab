"""Deploy paths that run here without a network: the Space deploy (--dry-run), the registry push
script (--dry-run), and the linters for the deploy assets (shellcheck, hadolint)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "infra" / "deploy_space.py"
PUSH = ROOT / "infra" / "push_image.sh"
MODEL = "google/vit-base-patch16-224"
REQUIRED_KEYS = {
    "title",
    "emoji",
    "colorFrom",
    "colorTo",
    "sdk",
    "app_port",
    "short_description",
    "license",
    "models",
    "startup_duration_timeout",
    "pinned",
}
HUB_COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}

# Loaded by the deploy subprocess (PYTHONPATH): any attempt to open a network connection fails it.
NO_NETWORK = """
import socket

def _refuse(*args, **kwargs):
    raise SystemExit("network access attempted during a dry run: %r" % (args,))

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def tool(name: str) -> str:
    """A linter installed in the test environment (the venv's bin, else PATH); missing = failure."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        pytest.fail(
            f"{name} is not installed: pip install -e '.[test]' brings it (see pyproject's test extra)"
        )
    return found


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    guard = tmp_path_factory.mktemp("nonet")
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    env = {k: v for k, v in os.environ.items() if k not in {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(guard), HF_ENDPOINT="https://huggingface.co")
    return env


def run_deploy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY), *args], env=env, capture_output=True, text=True, timeout=60
    )


def parse_dry_run(stdout: str) -> tuple[dict, list[str], dict[str, str]]:
    """(front matter, file list, space variables) from the dry run's output."""
    m = re.search(r"^---\n(.*?)^---\n", stdout, re.S | re.M)
    assert m, f"no front matter block in:\n{stdout}"
    front = yaml.safe_load(m.group(1))
    files_m = re.search(r"^# files \((\d+)[^\n]*\n(.*?)^# ", stdout, re.S | re.M)
    assert files_m, f"no file list in:\n{stdout}"
    files = files_m.group(2).split()
    assert len(files) == int(files_m.group(1))
    var_m = re.search(r"^# space variables[^\n]*\n(.*?)^# ", stdout, re.S | re.M)
    assert var_m, f"no space variables in:\n{stdout}"
    variables = dict(line.split("=", 1) for line in var_m.group(1).split())
    return front, files, variables


def git_files(root: Path) -> set[str]:
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    return {f for f in out if f and (root / f).is_file()}


# ------------------------------------------------------------------------------------------------
# Hugging Face Space: --dry-run on this repository
# ------------------------------------------------------------------------------------------------


def test_space_dry_run_front_matter(offline_env: dict[str, str]) -> None:
    res = run_deploy(offline_env, "--space-id", "someone/vit-space", "--dry-run")
    assert res.returncode == 0, res.stderr
    front, _, variables = parse_dry_run(res.stdout)
    assert set(front) >= REQUIRED_KEYS, REQUIRED_KEYS - set(front)
    assert front["sdk"] == "docker"
    assert front["app_port"] == 7860
    assert front["models"] == [MODEL]
    assert front["colorFrom"] in HUB_COLOURS and front["colorTo"] in HUB_COLOURS
    assert 0 < len(front["short_description"]) <= 60
    assert front["license"] == "apache-2.0"
    assert re.fullmatch(r"\d+[mh]", front["startup_duration_timeout"])
    assert front["pinned"] is False
    assert variables == {"MODEL_ID": MODEL}
    assert "https://huggingface.co/spaces/someone/vit-space" in res.stdout


def test_space_dry_run_file_list_is_what_the_build_needs(offline_env: dict[str, str]) -> None:
    res = run_deploy(offline_env, "--space-id", "someone/vit-space", "--dry-run")
    assert res.returncode == 0, res.stderr
    _, files, _ = parse_dry_run(res.stdout)
    assert len(files) == len(set(files)), "duplicates in the file list"
    known = git_files(ROOT)
    # The Dockerfile copies pyproject.toml, README.md (generated here), space/ and examples/
    # (the example images are not in git: the build downloads them from the manifest's URLs).
    expected = {"README.md", "Dockerfile", "pyproject.toml", "examples/manifest.json"}
    expected |= {
        f
        for f in known
        if f.startswith(("space/", "examples/")) and "__pycache__" not in f and not f.endswith(".pyc")
    }
    expected |= {f for f in (".dockerignore", "LICENSE") if f in known}
    assert {f for f in known if f.startswith("space/") and f.endswith(".py")} <= set(files)
    assert set(files) == expected, (
        f"missing: {sorted(expected - set(files))}, unexpected: {sorted(set(files) - expected)}"
    )
    assert "Dockerfile" in files
    assert not [f for f in files if f.startswith(("tests/", "infra/", ".github/", ".venv/"))]
    for f in files:
        if f != "README.md":  # generated
            assert f in known, f"{f} is not a file of the repository"


def test_space_dry_run_model_and_revision(offline_env: dict[str, str]) -> None:
    res = run_deploy(
        offline_env,
        "--space-id", "org/my-space", "--model", "facebook/deit-tiny-patch16-224",
        "--revision", "0123abcd", "--hardware", "cpu-upgrade", "--private", "--dry-run",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    front, _, variables = parse_dry_run(res.stdout)
    assert front["models"] == ["facebook/deit-tiny-patch16-224"]
    assert front["suggested_hardware"] == "cpu-upgrade"
    assert variables == {"MODEL_ID": "facebook/deit-tiny-patch16-224", "MODEL_REVISION": "0123abcd"}
    assert "# private: true" in res.stdout


def test_space_deploy_without_token_fails_clearly(offline_env: dict[str, str]) -> None:
    res = run_deploy(offline_env, "--space-id", "someone/vit-space")
    assert res.returncode == 2
    assert "HF_TOKEN is not set" in res.stderr
    assert "network access attempted" not in res.stderr + res.stdout


@pytest.mark.parametrize("space_id", ["no-owner", "a/b/c", "owner/", "/name", "own er/x"])
def test_space_id_is_validated(offline_env: dict[str, str], space_id: str) -> None:
    res = run_deploy(offline_env, "--space-id", space_id, "--dry-run")
    assert res.returncode == 2
    assert "--space-id" in res.stderr


# ------------------------------------------------------------------------------------------------
# Hugging Face Space: the file list follows the Dockerfile (a scratch repository)
# ------------------------------------------------------------------------------------------------


def make_repo(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


SCRATCH_DOCKERFILE = textwrap.dedent(
    """\
    # syntax=docker/dockerfile:1
    FROM python:3.11-slim AS build
    COPY --chown=1000:1000 pyproject.toml \\
         LICENSE ./
    COPY ["space/", "/app/space/"]
    COPY conf/*.toml /app/conf/
    COPY --from=build /usr/local /usr/local
    ADD https://example.com/x.tar.gz /tmp/
    COPY <<EOF /app/inline.txt
    hello
    EOF
    RUN pip install .
    """
)


def test_file_list_follows_copy_instructions(offline_env: dict[str, str], tmp_path: Path) -> None:
    root = make_repo(
        tmp_path / "repo",
        {
            "Dockerfile": SCRATCH_DOCKERFILE,
            ".dockerignore": "**/__pycache__\n**/*.pyc\nspace/private/\n!space/private/keep.py\n",
            ".gitignore": "*.log\n",
            "pyproject.toml": '[project]\nname = "x"\nlicense = "MIT"\n',
            "LICENSE": "MIT\n",
            "README.md": "# old readme\n",
            "space/__init__.py": "",
            "space/app.py": "",
            "space/static/style.css": "",
            "space/private/secret.py": "",
            "space/private/keep.py": "",
            "space/mod.pyc": "",
            "space/debug.log": "",
            "conf/a.toml": "",
            "conf/b.yaml": "",
            "conf/sub/c.toml": "",
            "tests/test_x.py": "",
            "notes.txt": "",
        },
    )
    res = run_deploy(offline_env, "--space-id", "a/b", "--repo-root", str(root), "--dry-run")
    assert res.returncode == 0, res.stderr
    front, files, _ = parse_dry_run(res.stdout)
    assert front["license"] == "mit"
    assert set(files) == {
        "README.md",
        "Dockerfile",
        ".dockerignore",
        "LICENSE",
        "pyproject.toml",
        "space/__init__.py",
        "space/app.py",
        "space/static/style.css",
        "space/private/keep.py",
        "conf/a.toml",
    }


def test_file_list_rejects_a_copy_source_that_is_missing(offline_env: dict[str, str], tmp_path: Path) -> None:
    root = make_repo(
        tmp_path / "repo",
        {"Dockerfile": "FROM python:3.11-slim\nCOPY models/ /models/\n", "pyproject.toml": ""},
    )
    res = run_deploy(offline_env, "--space-id", "a/b", "--repo-root", str(root), "--dry-run")
    assert res.returncode == 2
    assert "models/" in res.stderr


def test_file_list_for_copy_of_the_whole_context(offline_env: dict[str, str], tmp_path: Path) -> None:
    root = make_repo(
        tmp_path / "repo",
        {
            "Dockerfile": "FROM python:3.11-slim\nCOPY . /app\n",
            ".dockerignore": "tests\n*.md\n",
            "app.py": "",
            "docs/guide.md": "",
            "CHANGES.md": "",
            "tests/test_app.py": "",
        },
    )
    res = run_deploy(offline_env, "--space-id", "a/b", "--repo-root", str(root), "--dry-run")
    assert res.returncode == 0, res.stderr
    _, files, _ = parse_dry_run(res.stdout)
    # '*.md' matches at the top level only, as in Docker's .dockerignore.
    assert set(files) == {"README.md", "Dockerfile", ".dockerignore", "app.py", "docs/guide.md"}


# ------------------------------------------------------------------------------------------------
# Any registry: infra/push_image.sh --dry-run
# ------------------------------------------------------------------------------------------------


def push_dry_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if k not in {"REGISTRY", "ENGINE", "PLATFORMS", "HF_TOKEN"}
    }
    full_env.update(env)
    return subprocess.run(
        ["bash", str(PUSH), *args, "--dry-run"], env=full_env, capture_output=True, text=True, timeout=60
    )


def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


@pytest.fixture(scope="module")
def expected_tags() -> list[str]:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return [version, sha, "latest"]


def test_push_dry_run_docker_tags_and_pushes(expected_tags: list[str]) -> None:
    res = push_dry_run(REGISTRY="ghcr.io/someone/vit-space")
    assert res.returncode == 0, res.stderr
    cmds = commands(res.stdout)
    assert len(cmds) == 1, res.stdout
    build = cmds[0]
    assert build[:3] == ["docker", "buildx", "build"]
    tags = [build[i + 1] for i, a in enumerate(build) if a == "-t"]
    assert tags == [f"ghcr.io/someone/vit-space:{t}" for t in expected_tags]
    assert "--push" in build
    assert build[-1] == str(ROOT)
    for t in expected_tags:
        assert f"would push ghcr.io/someone/vit-space:{t}" in res.stdout


def test_push_dry_run_multi_arch_buildx(expected_tags: list[str]) -> None:
    res = push_dry_run(
        "--registry", "registry.example.com:5000/team/vit-space",
        "--platforms", "linux/amd64,linux/arm64",
        "--model", MODEL, "--revision", "abc123", "--tag", "v9",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    cmds = commands(res.stdout)
    build = next(c for c in cmds if c[:3] == ["docker", "buildx", "build"])
    assert build[build.index("--platform") + 1] == "linux/amd64,linux/arm64"
    assert "--push" in build and "--load" not in build
    assert "--builder" in build  # multi-arch needs a docker-container builder
    args = [build[i + 1] for i, a in enumerate(build) if a == "--build-arg"]
    assert f"MODEL_ID={MODEL}" in args and "MODEL_REVISION=abc123" in args
    tags = [build[i + 1] for i, a in enumerate(build) if a == "-t"]
    assert tags == [f"registry.example.com:5000/team/vit-space:{t}" for t in [*expected_tags, "v9"]]


def test_push_dry_run_podman(expected_tags: list[str]) -> None:
    res = push_dry_run(ENGINE="podman", REGISTRY="quay.io/someone/vit-space", HF_TOKEN="hf_x")
    assert res.returncode == 0, res.stderr
    cmds = commands(res.stdout)
    assert cmds[0][:2] == ["podman", "build"]
    assert "id=HF_TOKEN,env=HF_TOKEN" in cmds[0]  # the token only as a build secret
    assert "hf_x" not in res.stdout
    pushes = [c for c in cmds if c[:2] == ["podman", "push"]]
    assert [p[2] for p in pushes] == [f"quay.io/someone/vit-space:{t}" for t in expected_tags]


def test_push_dry_run_podman_multi_arch_manifest() -> None:
    res = push_dry_run(ENGINE="podman", REGISTRY="quay.io/a/b", PLATFORMS="linux/amd64,linux/arm64")
    assert res.returncode == 0, res.stderr
    cmds = commands(res.stdout)
    assert "--manifest" in cmds[0]
    assert sum(c[:3] == ["podman", "manifest", "push"] for c in cmds) == 3


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "REGISTRY"),
        (("--registry", "GHCR.io/Upper/x"), {}, "lower case"),
        (("--registry", "ghcr.io/a/b:tag"), {}, "without a tag"),
        (("--registry", "ghcr.io/a/b"), {"ENGINE": "rkt"}, "ENGINE"),
        (("--registry", "ghcr.io/a/b", "--bogus"), {}, "unknown argument"),
    ],
)
def test_push_rejects_bad_input(args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    res = push_dry_run(*args, **env)
    assert res.returncode == 2
    assert message in res.stderr


def test_push_image_script_is_shellcheck_clean() -> None:
    res = subprocess.run([tool("shellcheck"), "-x", str(PUSH)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shellcheck_catches_a_defect(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nrm -rf $1/*\n")
    res = subprocess.run([tool("shellcheck"), str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "SC2086" in res.stdout


# ------------------------------------------------------------------------------------------------
# The Dockerfile passes hadolint (the same check as the CI workflow's hadolint step)
# ------------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    dockerfile = ROOT / "Dockerfile"
    assert dockerfile.is_file(), "no Dockerfile"
    res = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_catches_a_defect(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    res = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "DL3007" in res.stdout


def test_the_network_guard_works(offline_env: dict[str, str]) -> None:
    """The dry-run tests rely on the guard: a connection attempt under it must fail the process."""
    res = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)"],
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0 and "network access attempted" in res.stderr


def test_space_dry_run_other_model_without_revision_is_unpinned(offline_env: dict[str, str]) -> None:
    # The Dockerfile's default MODEL_REVISION is the default model's commit: it must not apply to another.
    res = run_deploy(
        offline_env, "--space-id", "a/b", "--model", "facebook/deit-tiny-patch16-224", "--dry-run"
    )
    assert res.returncode == 0, res.stderr
    _, _, variables = parse_dry_run(res.stdout)
    assert variables == {"MODEL_ID": "facebook/deit-tiny-patch16-224", "MODEL_REVISION": "main"}
    res = push_dry_run("--registry", "ghcr.io/a/b", "--model", "facebook/deit-tiny-patch16-224")
    assert "MODEL_REVISION=main" in commands(res.stdout)[0]
