#!/usr/bin/env python3
"""Create or update a Hugging Face Space (Docker SDK) that builds this project's image.

Usage:
    HF_TOKEN=hf_... python infra/deploy_space.py --space-id user/vit-space \
        [--model google/vit-base-patch16-224] [--revision <sha>] [--private] [--hardware cpu-basic]
    python infra/deploy_space.py --space-id user/vit-space --dry-run   # no network, no token

What it uploads, in one commit, is exactly what the Docker build needs: the Dockerfile, the
.dockerignore, every file the Dockerfile COPYs/ADDs from the build context (read from the Dockerfile
itself and matched against the files git knows about, honouring .dockerignore), the LICENSE when
there is one, and a generated README.md whose front matter configures the Space (sdk: docker,
app_port: 7860, ...). Files already in the Space that are not in that set are deleted in the same
commit, so the Space's tree is exactly the set.

The model id and revision are set as Space variables MODEL_ID / MODEL_REVISION: Docker Spaces pass
variables to the build as build args (the Dockerfile declares `ARG MODEL_ID` / `ARG MODEL_REVISION`).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "google/vit-base-patch16-224"
APP_PORT = 7860
HF_ENDPOINT_DEFAULT = "https://huggingface.co"
# Files of the Space itself that this script never deletes.
SPACE_KEEP = frozenset({".gitattributes"})
# Colours the Hub accepts for colorFrom / colorTo.
HUB_COLOURS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
MODEL_ID_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")


class DeployError(Exception):
    """A problem the user can fix; printed without a traceback."""


# --------------------------------------------------------------------------------------------
# Which files the Docker build needs
# --------------------------------------------------------------------------------------------


def repo_files(root: Path) -> list[str]:
    """Files git knows about (tracked, plus untracked ones not ignored), that exist on disk."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DeployError(f"cannot list the files of {root} with git: {exc}") from exc
    names = sorted({n.decode() for n in out.split(b"\0") if n})
    return [n for n in names if (root / n).is_file()]


def _logical_lines(text: str) -> list[str]:
    """Dockerfile instructions with line continuations joined and comments removed."""
    lines: list[str] = []
    current = ""
    escape = "\\"
    for raw in text.splitlines():
        m = re.match(r"^\s*#\s*escape\s*=\s*(\S)\s*$", raw)
        if m and not lines and not current:
            escape = m.group(1)
            continue
        stripped = raw.strip()
        if stripped.startswith("#") and not current:
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith(escape):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def dockerfile_sources(dockerfile_text: str) -> list[str]:
    """Build-context sources of every COPY/ADD in a Dockerfile (COPY --from=... excluded)."""
    sources: list[str] = []
    for line in _logical_lines(dockerfile_text):
        parts = line.split(None, 1)
        if len(parts) < 2 or parts[0].upper() not in {"COPY", "ADD"}:
            continue
        rest = parts[1].strip()
        flags: list[str] = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        if any(f.startswith("--from") for f in flags):
            continue
        if rest.startswith("<<"):
            continue  # heredoc: no files from the context
        if rest.startswith("["):
            try:
                args = [str(a) for a in json.loads(rest)]
            except json.JSONDecodeError as exc:
                raise DeployError(f"cannot parse Dockerfile instruction: {line}") from exc
        else:
            args = shlex.split(rest)
        if len(args) < 2:
            raise DeployError(f"COPY/ADD without a destination: {line}")
        for src in args[:-1]:
            if re.match(r"^[a-z][a-z0-9+.-]*://", src) or src.startswith("git@"):
                continue  # ADD <url>: fetched by the builder, not from the context
            if "$" in src:
                raise DeployError(f"cannot resolve a build variable in COPY source {src!r}: {line}")
            sources.append(src)
    return sources


def _glob_to_regex(pattern: str) -> str:
    """A Docker/Go filepath.Match glob (plus '**') as a regex; '*' does not cross '/'."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(c)
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out += fnmatch.translate("[" + body + "]")[4:-3]
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return out


def _clean(pattern: str) -> str:
    p = os.path.normpath(pattern.strip().lstrip("/")) if pattern.strip() else ""
    return "" if p == "." else p


def _matches_or_under(regex: re.Pattern[str], path: str) -> bool:
    """True when `path` or one of its parent directories matches."""
    parts = path.split("/")
    return any(regex.fullmatch("/".join(parts[:n])) for n in range(len(parts), 0, -1))


def dockerignore_filter(files: Iterable[str], dockerignore_text: str | None) -> list[str]:
    """Drop the files a .dockerignore excludes from the build context (last matching rule wins)."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (dockerignore_text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = _clean(line[1:] if negate else line)
        if not pat:
            continue
        rules.append((negate, re.compile(_glob_to_regex(pat))))
    kept = []
    for f in files:
        excluded = False
        for negate, regex in rules:
            if _matches_or_under(regex, f):
                excluded = not negate
        if not excluded:
            kept.append(f)
    return kept


def files_for_sources(sources: Sequence[str], candidates: Sequence[str]) -> set[str]:
    selected: set[str] = set()
    for src in sources:
        pat = _clean(src)
        if not pat:  # "." or "./": the whole context
            selected.update(candidates)
            continue
        regex = re.compile(_glob_to_regex(pat))
        hits = {f for f in candidates if _matches_or_under(regex, f)}
        if not hits:
            raise DeployError(
                f"the Dockerfile copies {src!r}, but no file in the repository matches it "
                "(is it committed, or excluded by .gitignore/.dockerignore?)"
            )
        selected |= hits
    return selected


def build_file_list(root: Path) -> list[str]:
    """Exactly the repository files the Space's Docker build needs, sorted (README.md is generated)."""
    dockerfile = root / "Dockerfile"
    if not dockerfile.is_file():
        raise DeployError(f"no Dockerfile at {dockerfile}")
    dockerignore = root / ".dockerignore"
    ignore_text = dockerignore.read_text() if dockerignore.is_file() else None
    # README.md is always generated (the Space's card); a COPY of it gets the generated one.
    candidates = [
        "README.md",
        *dockerignore_filter([f for f in repo_files(root) if f != "README.md"], ignore_text),
    ]
    selected = files_for_sources(dockerfile_sources(dockerfile.read_text()), candidates)
    selected.add("Dockerfile")
    if dockerignore.is_file():
        selected.add(".dockerignore")
    for name in ("LICENSE", "LICENSE.md", "LICENSE.txt"):
        if (root / name).is_file():
            selected.add(name)
    selected.discard("README.md")
    return sorted(selected)


# --------------------------------------------------------------------------------------------
# README front matter
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceConfig:
    space_id: str
    model: str
    revision: str | None
    private: bool
    hardware: str | None
    title: str
    emoji: str
    color_from: str
    color_to: str
    short_description: str
    license: str
    startup_duration_timeout: str


def _yaml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid YAML scalar


def front_matter(cfg: SpaceConfig) -> str:
    fields: list[tuple[str, object]] = [
        ("title", cfg.title),
        ("emoji", cfg.emoji),
        ("colorFrom", cfg.color_from),
        ("colorTo", cfg.color_to),
        ("sdk", "docker"),
        ("app_port", APP_PORT),
        ("short_description", cfg.short_description),
        ("license", cfg.license),
        ("models", [cfg.model]),
        ("tags", ["image-classification", "vision-transformer", "gradio", "fastapi"]),
        ("startup_duration_timeout", cfg.startup_duration_timeout),
        ("pinned", False),
    ]
    if cfg.hardware:
        fields.append(("suggested_hardware", cfg.hardware))
    lines = ["---"]
    for key, value in fields:
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"  - {_yaml_scalar(v)}" for v in value)
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    lines.append("---")
    return "\n".join(lines) + "\n"


def readme_text(cfg: SpaceConfig) -> str:
    owner, name = cfg.space_id.split("/")
    app_url = f"https://{app_subdomain(cfg.space_id)}.hf.space"
    revision = f" at revision `{cfg.revision}`" if cfg.revision else ""
    return (
        front_matter(cfg)
        + f"\n# {cfg.title}\n\n"
        + f"Image classification with [`{cfg.model}`](https://huggingface.co/{cfg.model}){revision}, "
        + "served in-process behind a Gradio UI and an HTTP API.\n\n"
        + "## API\n\n"
        + "```bash\n"
        + f"curl -s -X POST --data-binary @cat.jpg {app_url}/predict\n"
        + f"curl -s {app_url}/info\n"
        + "```\n\n"
        + "Routes: `POST /predict`, `GET /info`, `GET /healthz`, `GET /readyz`, `GET /metrics`. "
        + f"This Space ({owner}/{name}) is deployed by `infra/deploy_space.py`.\n"
    )


def app_subdomain(space_id: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", space_id.lower().replace("/", "-"))


def project_license(root: Path) -> str:
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return "apache-2.0"
    lic = data.get("project", {}).get("license", "apache-2.0")
    if isinstance(lic, dict):
        lic = lic.get("text", "apache-2.0")
    return str(lic).lower()


# --------------------------------------------------------------------------------------------
# Deploy
# --------------------------------------------------------------------------------------------


def space_url(space_id: str) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", HF_ENDPOINT_DEFAULT).rstrip("/")
    return f"{endpoint}/spaces/{space_id}"


def deploy(cfg: SpaceConfig, root: Path, files: list[str], token: str) -> str:
    # Imported here so that --dry-run needs neither huggingface_hub nor the network.
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    url = api.create_repo(
        cfg.space_id,
        repo_type="space",
        space_sdk="docker",
        private=cfg.private or None,
        exist_ok=True,
    )
    if cfg.private:  # an existing Space keeps its visibility through create_repo(exist_ok=True)
        api.update_repo_settings(cfg.space_id, private=True, repo_type="space")

    # Variables first: the commit below triggers the build, which gets them as build args.
    api.add_space_variable(cfg.space_id, "MODEL_ID", cfg.model, description="Model baked into the image")
    if cfg.revision:
        api.add_space_variable(
            cfg.space_id, "MODEL_REVISION", cfg.revision, description="Model revision (branch or commit sha)"
        )
    elif "MODEL_REVISION" in api.get_space_variables(cfg.space_id):
        # The Dockerfile's default revision (the pinned sha of the default model) applies.
        api.delete_space_variable(cfg.space_id, "MODEL_REVISION")

    wanted = set(files) | {"README.md"}
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=readme_text(cfg).encode()),
        *(CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(root / f)) for f in files),
    ]
    existing = api.list_repo_files(cfg.space_id, repo_type="space")
    operations += [
        CommitOperationDelete(path_in_repo=f)
        for f in sorted(existing)
        if f not in wanted and f not in SPACE_KEEP
    ]
    sha = git_sha(root)
    info = api.create_commit(
        cfg.space_id,
        operations,
        repo_type="space",
        commit_message=f"Deploy vit-space{f' {sha}' if sha else ''} ({cfg.model})",
    )
    print(f"commit: {info.commit_url}")

    if cfg.hardware:
        runtime = api.request_space_hardware(cfg.space_id, cfg.hardware)
        print(f"hardware requested: {cfg.hardware} (now: {runtime.hardware}, stage: {runtime.stage})")
    return str(getattr(url, "url", url))


def git_sha(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space-id", required=True, help="the Space, as owner/name")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model id baked into the image ({DEFAULT_MODEL})")
    p.add_argument("--revision", default=None, help="model revision (a commit sha pins it)")
    p.add_argument("--private", action="store_true", help="make the Space private")
    p.add_argument("--hardware", default=None, help="hardware to request, e.g. cpu-basic, cpu-upgrade")
    p.add_argument("--title", default="ViT Image Classifier")
    p.add_argument("--emoji", default="🦎")
    p.add_argument("--color-from", default="indigo", choices=HUB_COLOURS)
    p.add_argument("--color-to", default="green", choices=HUB_COLOURS)
    p.add_argument("--short-description", default="Vision Transformer image classifier: UI + HTTP API")
    p.add_argument("--startup-timeout", default="30m", help="startup_duration_timeout (e.g. 30m, 1h)")
    p.add_argument(
        "--repo-root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="the project checkout (default: this script's repository)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the front matter and files; no network")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if not REPO_ID_RE.match(args.space_id):
            raise DeployError(f"--space-id must look like owner/name, got {args.space_id!r}")
        if not MODEL_ID_RE.match(args.model):
            raise DeployError(f"--model must be a Hub model id like org/name, got {args.model!r}")
        if len(args.short_description) > 60:
            raise DeployError("--short-description must be at most 60 characters (a Hub limit)")
        if not re.fullmatch(r"\d+[mh]", args.startup_timeout):
            raise DeployError("--startup-timeout must look like 30m or 1h")
        root: Path = args.repo_root.resolve()
        revision = args.revision
        if revision is None and args.model != DEFAULT_MODEL:
            # The Dockerfile's default MODEL_REVISION pins the default model's commit: another model
            # needs its own revision. Without --revision, follow its main branch (unpinned).
            revision = "main"
            print(
                f"note: --revision not given for {args.model}: using its 'main' branch (unpinned)",
                file=sys.stderr,
            )
        cfg = SpaceConfig(
            space_id=args.space_id,
            model=args.model,
            revision=revision,
            private=args.private,
            hardware=args.hardware,
            title=args.title,
            emoji=args.emoji,
            color_from=args.color_from,
            color_to=args.color_to,
            short_description=args.short_description,
            license=project_license(root),
            startup_duration_timeout=args.startup_timeout,
        )
        files = build_file_list(root)
        if args.dry_run:
            print("# README.md front matter")
            print(front_matter(cfg), end="")
            print(f"# files ({len(files) + 1}, README.md generated)")
            for f in ["README.md", *files]:
                print(f)
            print("# space variables (passed to the Docker build as build args)")
            print(f"MODEL_ID={cfg.model}")
            if cfg.revision:
                print(f"MODEL_REVISION={cfg.revision}")
            if cfg.hardware:
                print(f"# hardware: {cfg.hardware}")
            print(f"# private: {str(cfg.private).lower()}")
            print(f"# dry run: nothing uploaded. Space URL would be {space_url(cfg.space_id)}")
            return 0
        token = os.environ.get("HF_TOKEN", "").strip()
        if not token:
            raise DeployError(
                "HF_TOKEN is not set: create a token with write access at "
                "https://huggingface.co/settings/tokens and export HF_TOKEN=hf_..."
            )
        url = deploy(cfg, root, files, token)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Space URL: {url}")
    print(f"App URL:   https://{app_subdomain(cfg.space_id)}.hf.space")
    return 0


if __name__ == "__main__":
    sys.exit(main())
