#!/usr/bin/env bash
# `make image-test`: build the CPU image (Dockerfile.cpu) with podman and run it for real, as the README's
# "Containers" section says (the demo models mounted at /models, the ports published), then checks TF Serving
# REST, KServe V2, gRPC (a health Check and a Predict), /readyz, the image's HEALTHCHECK, that every framework
# imports, the user it runs as, a SIGTERM that drains and exits 0, and prints the image size.
#
# No registry is needed: the base is Debian bookworm (minbase + python3, python3-venv) made by debootstrap from
# Debian's packages and kept as $BASE_IMAGE, so a second run skips it (REBUILD_BASE=1 makes it again).
# Settings (environment): PYTHON (the client side: a venv with the project, xgboost and lightgbm; default
# .venv/bin/python), IMAGE, BASE_IMAGE, REST_PORT and GRPC_PORT (the host ports published), IMAGE_EXTRAS (the
# image's EXTRAS; default Dockerfile.cpu's), TORCH_CPU_INDEX (or TORCH_INDEX_PORT, of the one served here),
# DEBIAN_MIRROR, KEEP=1 (leave the container and the work folder).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
IMAGE=${IMAGE:-localhost/serving-engine:cpu-test}
BASE_IMAGE=${BASE_IMAGE:-localhost/serving-engine-base:bookworm-python3}
REST_PORT=${REST_PORT:-18580}
GRPC_PORT=${GRPC_PORT:-18590}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
NAME=serving-image-test-$$
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
# Every podman build and run on these machines: runc (crun refuses the hybrid cgroup layout) and limits the
# machine allows (podman's defaults are refused with EPERM). The build uses the host's network to reach the
# package registries.
PODMAN=(--runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
WORK=$(mktemp -d /tmp/serving-image-test.XXXXXX)
INDEX_PID=
failed=0

cleanup() {
    [ -n "$INDEX_PID" ] && kill "$INDEX_PID" 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then echo "kept: container $NAME, $WORK"; return; fi
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
quiet() { "$@" >/dev/null 2>&1; }
check() {  # check NAME COMMAND...: one line per check; the run goes on and fails at the end
    local name=$1
    shift
    if "$@"; then echo "ok   $name"; else echo "FAIL $name"; failed=1; fi
}

install_tools() {
    local missing=()
    for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ ${#missing[@]} = 0 ] && return
    step "installing ${missing[*]} from Debian's packages"
    $SUDO apt-get update -qq
    $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
}

build_base() {
    if podman image exists "$BASE_IMAGE" && [ "${REBUILD_BASE:-0}" != 1 ]; then
        step "base $BASE_IMAGE: cached"
        return
    fi
    step "base $BASE_IMAGE: debootstrap bookworm (minbase + python3 python3-venv)"
    local rootfs=$WORK/rootfs
    $SUDO debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$DEBIAN_MIRROR" \
        >"$WORK/debootstrap.log" || { tail -20 "$WORK/debootstrap.log"; return 1; }
    # A machine whose HTTPS goes through an intercepting proxy names the proxy's CA bundle in PIP_CERT (these
    # do): the base carries that bundle and a pip.conf naming it, so pip in the build trusts what pip here does.
    if [ -n "${PIP_CERT:-}" ]; then
        $SUDO cp "$PIP_CERT" "$rootfs/etc/pip-ca-bundle.pem"
        printf '[global]\ncert = /etc/pip-ca-bundle.pem\n' | $SUDO tee "$rootfs/etc/pip.conf" >/dev/null
    fi
    $SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    $SUDO tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
    $SUDO rm -rf "$rootfs"
}

# Dockerfile.cpu takes torch's CPU build from PyTorch's index. Where that host is out of reach (these machines)
# but pip here finds the wheel on disk (PIP_FIND_LINKS), those wheels are served as a one-package index on
# loopback for the build.
serve_torch_index() {
    local wheels=()
    for dir in ${PIP_FIND_LINKS:-}; do wheels+=("$dir"/torch-*+cpu-*.whl); done
    if [ ! -e "${wheels[0]:-}" ]; then
        echo "download.pytorch.org is out of reach and no torch CPU wheel is on disk (PIP_FIND_LINKS)"
        return 1
    fi
    mkdir -p "$WORK/torch-index/torch"
    for wheel in "${wheels[@]}"; do
        ln -s "$wheel" "$WORK/torch-index/torch/"
        echo "<a href=\"$(basename "$wheel")\">$(basename "$wheel")</a>" >>"$WORK/torch-index/torch/index.html"
    done
    # A fixed port: the index is a build argument, and a new value would rebuild every layer after it.
    local port=${TORCH_INDEX_PORT:-18570}
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WORK/torch-index" "$port" >/dev/null 2>&1 &
    INDEX_PID=$!
    TORCH_CPU_INDEX=http://127.0.0.1:$port/
    echo "download.pytorch.org is out of reach: torch's CPU build from ${wheels[*]}"
}

build_image() {
    local args=(--build-arg BASE_IMAGE="$BASE_IMAGE")
    if [ -z "${TORCH_CPU_INDEX:-}" ] && ! quiet curl -sf --max-time 10 https://download.pytorch.org/whl/cpu/torch/; then
        serve_torch_index
    fi
    [ -n "${TORCH_CPU_INDEX:-}" ] && args+=(--build-arg TORCH_CPU_INDEX="$TORCH_CPU_INDEX")
    [ -n "${IMAGE_EXTRAS:-}" ] && args+=(--build-arg EXTRAS="$IMAGE_EXTRAS")
    step "image $IMAGE: podman build -f Dockerfile.cpu ${args[*]}"
    local started=$SECONDS
    # --format docker keeps the HEALTHCHECK (the OCI format has none).
    podman build "${PODMAN[@]}" --network host --format docker "${args[@]}" -f Dockerfile.cpu -t "$IMAGE" . \
        >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; return 1; }
    echo "built in $((SECONDS - started)) s"
}

wait_ready() {
    for _ in $(seq 180); do
        curl -sf "http://127.0.0.1:$REST_PORT/readyz" >/dev/null && return 0
        [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || break
        sleep 1
    done
    podman logs "$NAME" 2>&1 | tail -30
    return 1
}

frameworks_import() {  # TensorFlow's start-up chatter goes to a log, shown only when an import fails
    podman exec "$NAME" python -c 'import lightgbm, onnxruntime, pypmml, tensorflow, torch, xgboost' \
        2>"$WORK/imports.log" || { cat "$WORK/imports.log"; return 1; }
}

post() { curl -sf -X POST "http://127.0.0.1:$REST_PORT$1" -d "$2"; }
ROW='[0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.9, 0.2]'

check_grpc() {  # a real gRPC client: the health service's Check and TF Serving's Predict
    "$PYTHON" - "127.0.0.1:$GRPC_PORT" <<'EOF'
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving._proto.tensorflow.core.framework import tensor_pb2, types_pb2
from serving._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "xgb"
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.9, 0.2])
    tensor.tensor_shape.dim.add().size = 1
    tensor.tensor_shape.dim.add().size = 8
    request.inputs["inputs"].CopyFrom(tensor)
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    (output,) = response.outputs.values()
    assert len(output.float_val) == 1 and 0 <= output.float_val[0] <= 1, response
    version = response.model_spec.version.value
    print(f"     gRPC: health SERVING, Predict -> {output.float_val[0]:.7f} (version {version})")
EOF
}

main() {
    install_tools
    build_base
    build_image

    step "run: the demo models at /models, MODEL_NAME=xgb, REST :$REST_PORT, gRPC :$GRPC_PORT"
    "$PYTHON" -m serving.tools.demo "$WORK/models" >/dev/null
    chmod -R a+rX "$WORK/models"  # the image's user (10001) reads them
    # podman's health-check timers need systemd, which these machines lack: it says so on stderr (run.log),
    # and `podman healthcheck run` below runs the image's HEALTHCHECK once instead.
    podman run -d --name "$NAME" "${PODMAN[@]}" -p "127.0.0.1:$REST_PORT:8080" -p "127.0.0.1:$GRPC_PORT:9090" \
        -v "$WORK/models:/models:ro" -e MODEL_NAME=xgb "$IMAGE" --drain_delay_seconds=3 >/dev/null 2>"$WORK/run.log" \
        || { cat "$WORK/run.log"; return 1; }
    local started=$SECONDS
    wait_ready || { echo "FAIL the server did not become ready"; return 1; }
    echo "ready in $((SECONDS - started)) s"

    check "TF Serving REST predict" grep -q '"predictions":\[0\.' \
        <(post /v1/models/xgb:predict "{\"instances\": [$ROW]}")
    check "KServe V2 infer" grep -q '"outputs":\[{"name"' <(post /v2/models/xgb/infer \
        "{\"inputs\": [{\"name\": \"inputs\", \"shape\": [1, 8], \"datatype\": \"FP32\", \"data\": $ROW}]}")
    check "gRPC health Check + Predict" check_grpc
    check "/readyz 200" curl -sf -o /dev/null "http://127.0.0.1:$REST_PORT/readyz"
    check "the image's HEALTHCHECK" quiet podman healthcheck run "$NAME"
    check "every processor's framework imports" frameworks_import
    check "a Java runtime for PMML" quiet podman exec "$NAME" java -version
    local uid
    uid=$(podman exec "$NAME" id -u)
    check "runs as non-root (uid $uid)" test "$uid" != 0

    step "SIGTERM: not ready while draining, then exit 0"
    podman kill --signal TERM "$NAME" >/dev/null
    local code
    for _ in $(seq 20); do  # --drain_delay_seconds=3: serving on, not ready
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$REST_PORT/readyz" || true)
        [ "$code" = 503 ] && break
        sleep 0.1
    done
    check "/readyz $code during the drain delay" test "$code" = 503
    check "TF Serving REST predict during the drain delay" grep -q '"predictions":' \
        <(post /v1/models/xgb:predict "{\"instances\": [$ROW]}")
    code=$(podman wait "$NAME")
    check "exit status $code" test "$code" = 0
    check "drained (the log says so)" grep -q "finishing requests in flight" <(podman logs "$NAME" 2>&1)

    step "image size"
    podman image inspect -f '{{.Size}}' "$IMAGE" \
        | awk -v image="$IMAGE" '{printf "%s: %.2f GB (%.0f bytes)\n", image, $1 / 1e9, $1}'
    return "$failed"
}

main
