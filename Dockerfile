# vit-space: an image-classification Space, weights baked in at build time, offline at run time.
#
#   docker build -t vit-space .                                   # google/vit-base-patch16-224, pinned
#   docker build --build-arg MODEL_ID=org/model --build-arg MODEL_REVISION=<sha> \
#     --secret id=HF_TOKEN,env=HF_TOKEN -t vit-space .            # gated/private model: token as a secret
#
# A local model folder instead of a Hub id (air-gapped builds; what infra/container-test.sh does):
#   docker build --build-context model-src=path/to/model --build-arg MODEL_ID=/mnt/model-src \
#     --build-arg MODEL_REVISION= \
#     --build-context examples-src=path/to/photos --build-arg EXAMPLES_FROM=/mnt/examples-src .
# (podman/buildah: the same flags.) Mirrors: --build-arg BASE_IMAGE=..., PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_CERT (the CA bundle file must be mounted/available).

ARG BASE_IMAGE=python:3.11-slim
# lean: the runtime carries no torch (and, when another runtime serves, no PyTorch weights);
# torch: the runtime also carries CPU torch and the bake keeps the PyTorch weights (SPACE_BACKEND=torch works).
ARG VARIANT=lean

# Optional local inputs for the bake stage; empty unless replaced with --build-context NAME=DIR.
FROM scratch AS model-src
FROM scratch AS examples-src

# ---- serve-deps: a virtualenv in /opt/venv with what serving imports: no torch, no onnx ---------------
FROM ${BASE_IMAGE} AS serve-deps
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The app's serving dependencies (a layer that survives app-code changes), then the app itself. Trimmed
# (none of it used at run time): the test suites of numpy/pandas, the bytecode of the ~400 transformers
# model packages (only the one served is imported; it compiles in milliseconds), and Gradio's Node SSR
# bundle (no Node here; SSR is off).
COPY pyproject.toml README.md ./
RUN python -m venv /opt/venv \
 && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt \
 && sp="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf "$sp/pandas/tests" "$sp/gradio/templates/node" \
 && find "$sp/numpy" -type d -name tests -prune -exec rm -rf {} + \
 && find "$sp/transformers/models" -mindepth 2 -maxdepth 2 -name __pycache__ ! -path '*/models/auto/*' \
      -exec rm -rf {} +
COPY space/ space/
RUN pip install --no-deps .

# ---- bake-deps: plus CPU-only torch and onnx, which only the bake step (export, quantisation) needs ----
FROM serve-deps AS bake-deps
# (Build args are per stage: the pip settings again, for torch and onnx.)
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS
ARG PIP_CERT
ARG TORCH_VERSION=2.13.0
# From the CPU index (PIP_EXTRA_INDEX_URL), so no CUDA libraries; then the `bake` extra (onnx).
RUN pip install "torch==${TORCH_VERSION}" \
 && python -c "import torch; assert torch.version.cuda is None, 'a CUDA build of torch was installed'" \
 && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bake'], sep='\n')" \
      > /tmp/bake.txt \
 && pip install --requirement /tmp/bake.txt

# ---- bake: fetch the pinned weights and the examples, export, prove they serve, write the manifest -----
FROM bake-deps AS bake
ARG VARIANT
# Hub model id, or a folder path inside this stage (e.g. /mnt/model-src, the `model-src` build context).
ARG MODEL_ID=google/vit-base-patch16-224
# The pinned revision (commit sha) of google/vit-base-patch16-224; set it empty for a local folder.
ARG MODEL_REVISION=3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3
# Copy example images from this folder (e.g. /mnt/examples-src) instead of downloading them.
ARG EXAMPLES_FROM=
# The serving backend, exported and accuracy-checked here (python -m space bake --optimize), so start-up
# converts nothing. Default `auto`: every OpenVINO and ONNX Runtime candidate that passes the accuracy
# guard is measured on the *build* machine's CPU and the fastest is kept; optimized.json in the image
# (and /info) records the figures and why. Every candidate runs on any x86-64 CPU; to pin one, e.g.
# OPTIMIZE=openvino OPTIMIZE_PRECISION=int8. `none` serves PyTorch fp32 (needs VARIANT=torch).
ARG OPTIMIZE=auto
ARG OPTIMIZE_PRECISION=auto
# podman/buildah's layer cache does not see the content of a --build-context bind mount: a digest of the
# local model folder and examples (infra/container-test.sh passes one) makes another folder bake again.
ARG MODEL_SOURCE_DIGEST=
COPY examples/ /src/examples/
# The Hub token exists only during this RUN, as the BuildKit secret `HF_TOKEN`; bake never writes it.
# The lean variant bakes a lean folder: the served file, config.json, preprocessor_config.json, manifests.
RUN --mount=type=secret,id=HF_TOKEN \
    --mount=type=bind,from=model-src,target=/mnt/model-src \
    --mount=type=bind,from=examples-src,target=/mnt/examples-src \
    if [ "$VARIANT" = torch ]; then set -- --keep-pytorch-weights; else set --; fi; \
    python -m space bake --model "$MODEL_ID" --revision "$MODEL_REVISION" \
      --output /opt/space/model \
      --examples-manifest /src/examples/manifest.json --examples-dir /opt/space/examples \
      --optimize "$OPTIMIZE" --precision "$OPTIMIZE_PRECISION" \
      --token-file /run/secrets/HF_TOKEN ${EXAMPLES_FROM:+--examples-from "$EXAMPLES_FROM"} "$@"

# ---- runtime-venv: the serving venv, less what serving never loads; VARIANT=torch adds CPU torch ------
# Removed (what serving never loads): ONNX Runtime's quantisation, transformer-optimiser and tools
# packages and its C-API library (the Python binding does not load it); OpenVINO's GPU, NPU, AUTO, HETERO
# and batching plugins, every model-format frontend but its own IR's, its C API, headers, converter
# tools and telemetry (90 MB of its 180 MB: serving loads an IR file on the CPU plugin, nothing else);
# hf_xet, for Hub downloads; pip.
# The serving process imports none of these (tests/test_backends.py serves with them hidden;
# tests/test_no_torch.py without torch and onnx). VARIANT=torch also installs CPU torch, trimmed
# (~400 MB): its C++ headers and test binaries (torch_shm_manager stays), the symbol tables of its
# libraries (strip --strip-unneeded; binutils only for that, in this stage) and sympy's tests.
# One stage with a condition, not `FROM venv-${VARIANT}`: buildah cannot see that stage dependency.
FROM serve-deps AS runtime-venv
ARG VARIANT
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS
ARG PIP_CERT
ARG TORCH_VERSION=2.13.0
# hadolint ignore=DL3008
RUN sp="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && if [ "$VARIANT" = torch ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends binutils \
      && rm -rf /var/lib/apt/lists/* \
      && pip install "torch==${TORCH_VERSION}" \
      && python -c "import torch; assert torch.version.cuda is None, 'a CUDA build of torch was installed'" \
      && rm -rf "$sp/torch/include" "$sp/torch/test" \
      && strip --strip-unneeded "$sp"/torch/lib/*.so* \
      && find "$sp/torch/bin" -type f ! -name torch_shm_manager -delete \
      && find "$sp/sympy" -type d -name tests -prune -exec rm -rf {} + ; \
    elif [ "$VARIANT" != lean ]; then echo "VARIANT must be lean or torch, not $VARIANT" >&2; exit 1; \
    fi \
 && ov="$sp/openvino" \
 && rm -rf "$ov"/libs/libopenvino_intel_gpu_plugin.so "$ov"/libs/libopenvino_intel_npu_plugin.so \
      "$ov"/libs/libopenvino_auto_plugin.so "$ov"/libs/libopenvino_auto_batch_plugin.so \
      "$ov"/libs/libopenvino_hetero_plugin.so "$ov"/libs/libopenvino_c.so.* "$ov"/libs/cache.json \
      "$ov"/include "$ov"/cmake "$ov"/tools "$ov"/frontend/jax "$ov"/frontend/onnx "$ov"/frontend/paddle \
      "$ov"/frontend/pytorch "$ov"/frontend/tensorflow "$sp"/openvino_telemetry \
 && find "$ov"/libs -name 'libopenvino_*_frontend.so.*' ! -name 'libopenvino_ir_frontend.so.*' -delete \
 && rm -rf "$sp"/hf_xet "$sp"/hf_xet-*.dist-info \
      "$sp"/onnxruntime/quantization "$sp"/onnxruntime/transformers "$sp"/onnxruntime/tools \
      "$sp"/onnxruntime/capi/libonnxruntime.so.* \
 && pip uninstall --yes pip

# ---- runtime: the venv, the baked model and examples; no compilers, pip, caches or tests -------------
FROM ${BASE_IMAGE} AS runtime
# Hugging Face Spaces run the container as uid 1000 and need a writable home.
RUN useradd --create-home --uid 1000 --shell /bin/sh user
COPY --from=runtime-venv /opt/venv /opt/venv
COPY --from=bake /opt/space /opt/space
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/user \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/user/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SSR_MODE=False \
    SPACE_HOST=0.0.0.0 \
    SPACE_MODEL=/opt/space/model \
    SPACE_EXAMPLES_DIR=/opt/space/examples
USER 1000
WORKDIR /home/user/app
EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('SPACE_PORT') or os.environ.get('PORT') or '7860'), timeout=4)"]
ARG MODEL_ID=google/vit-base-patch16-224
ARG MODEL_REVISION=3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3
ARG SOURCE_URL=https://github.com/vit-space/vit-space
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="vit-space" \
      org.opencontainers.image.description="Image classification Space (Gradio + FastAPI), model baked in, offline at run time" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      io.github.vit-space.model.id="${MODEL_ID}" \
      io.github.vit-space.model.revision="${MODEL_REVISION}"
CMD ["python", "-m", "space", "serve"]
