#!/usr/bin/env bash
# Build the vit-space image and push it to any container registry (GHCR, Docker Hub, ECR, ...).
#
#   REGISTRY=ghcr.io/OWNER/vit-space infra/push_image.sh
#   infra/push_image.sh --registry ghcr.io/OWNER/vit-space --platforms linux/amd64,linux/arm64
#   ENGINE=podman infra/push_image.sh --registry quay.io/OWNER/vit-space
#   infra/push_image.sh --registry ghcr.io/OWNER/vit-space --dry-run    # print the commands only
#
# Tags: <version from pyproject.toml>, <git sha (12)>, latest (plus any --tag).
# Engines: docker buildx (default; multi-arch builds push straight from the builder) or podman
# (multi-arch through a manifest list). Log in first (`docker login ghcr.io` / `podman login`).
# Build args: MODEL_ID, MODEL_REVISION (env or flags). A Hub token for gated/private models is
# passed only as the BuildKit secret `HF_TOKEN`, from the HF_TOKEN environment variable.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: infra/push_image.sh [--registry REPO] [--platforms P1,P2] [--engine docker|podman]
                           [--model ID] [--revision REV] [--tag TAG]... [--builder NAME]
                           [--cache-ref REF] [--no-push] [--dry-run]

  --registry REPO    image repository to push to, e.g. ghcr.io/owner/vit-space (env REGISTRY)
  --platforms LIST   target platforms, e.g. linux/amd64,linux/arm64 (env PLATFORMS; default: host)
  --engine NAME      docker (buildx, default) or podman (env ENGINE)
  --model ID         MODEL_ID build arg (env MODEL_ID; default: the Dockerfile's)
  --revision REV     MODEL_REVISION build arg (env MODEL_REVISION)
  --tag TAG          an extra tag (repeatable)
  --builder NAME     buildx builder to use (env BUILDER; default: the current one, or a
                     docker-container builder "vit-space-builder" made for multi-arch/cache)
  --cache-ref REF    buildx registry cache, e.g. ghcr.io/owner/vit-space:buildcache (env CACHE_REF)
  --no-push          build and tag only (single platform)
  --dry-run          print the commands instead of running them
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REGISTRY="${REGISTRY:-}"
PLATFORMS="${PLATFORMS:-}"
ENGINE="${ENGINE:-docker}"
MODEL_ID="${MODEL_ID:-}"
MODEL_REVISION="${MODEL_REVISION:-}"
BUILDER="${BUILDER:-}"
CACHE_REF="${CACHE_REF:-}"
DRY_RUN=0
PUSH=1
EXTRA_TAGS=()

die() { echo "push_image.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --registry) REGISTRY="${2:?--registry needs a value}"; shift 2 ;;
    --registry=*) REGISTRY="${1#*=}"; shift ;;
    --platforms) PLATFORMS="${2:?--platforms needs a value}"; shift 2 ;;
    --platforms=*) PLATFORMS="${1#*=}"; shift ;;
    --engine) ENGINE="${2:?--engine needs a value}"; shift 2 ;;
    --engine=*) ENGINE="${1#*=}"; shift ;;
    --model) MODEL_ID="${2:?--model needs a value}"; shift 2 ;;
    --model=*) MODEL_ID="${1#*=}"; shift ;;
    --revision) MODEL_REVISION="${2:?--revision needs a value}"; shift 2 ;;
    --revision=*) MODEL_REVISION="${1#*=}"; shift ;;
    --tag) EXTRA_TAGS+=("${2:?--tag needs a value}"); shift 2 ;;
    --tag=*) EXTRA_TAGS+=("${1#*=}"); shift ;;
    --builder) BUILDER="${2:?--builder needs a value}"; shift 2 ;;
    --builder=*) BUILDER="${1#*=}"; shift ;;
    --cache-ref) CACHE_REF="${2:?--cache-ref needs a value}"; shift 2 ;;
    --cache-ref=*) CACHE_REF="${1#*=}"; shift ;;
    --no-push) PUSH=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n "$REGISTRY" ]] || die "set --registry or REGISTRY (e.g. ghcr.io/owner/vit-space)"
REGISTRY="${REGISTRY%/}"
[[ "$REGISTRY" =~ ^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?$ ]] \
  || die "registry repository must be lower case, without a tag: $REGISTRY"
[[ "${REGISTRY##*/}" != *:* ]] || die "give the repository without a tag: $REGISTRY"
case "$ENGINE" in docker|podman) ;; *) die "ENGINE must be docker or podman, not $ENGINE" ;; esac
if [[ "$ENGINE" == podman && ( -n "$BUILDER" || -n "$CACHE_REF" ) ]]; then
  die "--builder and --cache-ref are docker buildx options"
fi

VERSION="$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n 1)"
[[ -n "$VERSION" ]] || die "no version in $ROOT/pyproject.toml"
SHA="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || true)"
[[ -n "$SHA" ]] || die "not a git checkout: $ROOT (the sha tag needs git)"
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  echo "push_image.sh: warning: uncommitted changes; the $SHA tag will not match the image" >&2
fi

TAGS=("$VERSION" "$SHA" "latest" "${EXTRA_TAGS[@]}")
MULTI=0
[[ "$PLATFORMS" == *,* ]] && MULTI=1
if [[ $PUSH -eq 0 && $MULTI -eq 1 ]]; then
  die "--no-push builds one platform only (a multi-platform image can only be pushed)"
fi

# The Dockerfile's default MODEL_REVISION pins the default model's commit: another model without
# --revision follows its main branch.
if [[ -n "$MODEL_ID" && -z "$MODEL_REVISION" && "$MODEL_ID" != "google/vit-base-patch16-224" ]]; then
  echo "push_image.sh: note: no --revision for $MODEL_ID: using its 'main' branch (unpinned)" >&2
  MODEL_REVISION=main
fi

BUILD_ARGS=()
[[ -n "$MODEL_ID" ]] && BUILD_ARGS+=(--build-arg "MODEL_ID=$MODEL_ID")
[[ -n "$MODEL_REVISION" ]] && BUILD_ARGS+=(--build-arg "MODEL_REVISION=$MODEL_REVISION")
# Pass the build's proxy/index settings through, as the Dockerfile's PIP_* args.
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do
  [[ -n "${!var:-}" ]] && BUILD_ARGS+=(--build-arg "$var=${!var}")
done
[[ -n "${HF_TOKEN:-}" ]] && BUILD_ARGS+=(--secret "id=HF_TOKEN,env=HF_TOKEN")
CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
# VCS_REF / SOURCE_URL: the Dockerfile's OCI labels (revision, source).
BUILD_ARGS+=(
  --build-arg "VCS_REF=$(git -C "$ROOT" rev-parse HEAD)"
  --label "org.opencontainers.image.version=$VERSION"
  --label "org.opencontainers.image.created=$CREATED"
)
[[ -n "${SOURCE_URL:-}" ]] && BUILD_ARGS+=(--build-arg "SOURCE_URL=$SOURCE_URL")

run() {
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

TAG_ARGS=()
for t in "${TAGS[@]}"; do TAG_ARGS+=(-t "$REGISTRY:$t"); done

if [[ "$ENGINE" == docker ]]; then
  cmd=(docker buildx build "${BUILD_ARGS[@]}" "${TAG_ARGS[@]}")
  [[ -n "$PLATFORMS" ]] && cmd+=(--platform "$PLATFORMS")
  if [[ $PUSH -eq 1 ]]; then cmd+=(--push); else cmd+=(--load); fi
  if [[ -n "$CACHE_REF" ]]; then
    cmd+=(--cache-from "type=registry,ref=$CACHE_REF")
    [[ $PUSH -eq 1 ]] && cmd+=(--cache-to "type=registry,ref=$CACHE_REF,mode=max")
  fi
  # Multi-platform builds and cache export need BuildKit in a container (+ QEMU for foreign arches).
  if [[ -z "$BUILDER" && ( $MULTI -eq 1 || -n "$CACHE_REF" ) ]]; then
    BUILDER=vit-space-builder
    if [[ $DRY_RUN -eq 1 ]] || ! docker buildx inspect "$BUILDER" >/dev/null 2>&1; then
      run docker buildx create --name "$BUILDER" --driver docker-container
    fi
  fi
  [[ -n "$BUILDER" ]] && cmd+=(--builder "$BUILDER")
  run "${cmd[@]}" "$ROOT"
else
  if [[ $MULTI -eq 1 ]]; then
    # One manifest list holding an image per platform, pushed with every tag.
    manifest="$REGISTRY:$VERSION"
    [[ $DRY_RUN -eq 1 ]] || podman manifest rm "$manifest" >/dev/null 2>&1 || true
    run podman build "${BUILD_ARGS[@]}" --platform "$PLATFORMS" --manifest "$manifest" "$ROOT"
    if [[ $PUSH -eq 1 ]]; then
      for t in "${TAGS[@]}"; do
        run podman manifest push --all "$manifest" "docker://$REGISTRY:$t"
      done
    fi
  else
    cmd=(podman build "${BUILD_ARGS[@]}" "${TAG_ARGS[@]}")
    [[ -n "$PLATFORMS" ]] && cmd+=(--platform "$PLATFORMS")
    run "${cmd[@]}" "$ROOT"
    if [[ $PUSH -eq 1 ]]; then
      for t in "${TAGS[@]}"; do run podman push "$REGISTRY:$t"; done
    fi
  fi
fi

if [[ $PUSH -eq 1 ]]; then
  verb="pushed"
  [[ $DRY_RUN -eq 1 ]] && verb="would push"
  for t in "${TAGS[@]}"; do echo "$verb $REGISTRY:$t"; done
fi
