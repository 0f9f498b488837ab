"""``python -m space bench``: serving speed of this app against the naive baseline, over HTTP, in one run;
``--overload``: how this app alone holds up under far more clients than it has slots.

Why a script and not a test: speed depends on the machine and its load, so it is measured and reported
(the README's Performance section), never asserted. Both servers run as separate processes on
loopback, on the same model, one after the other, driven by the same client threads; the numbers
that matter are the ratios within one run.

The baseline is ``transformers.pipeline("image-classification")`` behind a plain FastAPI endpoint that
takes the raw image bytes (the same HTTP contract as our ``POST /predict``). It is the tutorial's design
without Gradio's queue in front, so it is a little *faster* than the tutorial's ``gr.Interface`` and the
ratios are conservative.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CLIENTS = (1, 4, 16)
SIZES = {"640x480": (640, 480), "12MP": (4000, 3000)}


@dataclass
class Cell:
    """One server x image size x client count measurement."""

    server: str
    image: str
    clients: int
    requests: int
    errors: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    peak_rss_mb: float
    load: float  # the machine's 1-minute load average when the cell started


# --- Model and images -----------------------------------------------------------------------------------


def make_vit_b16(folder: Path) -> Path:
    """ViT-B/16 (ViTConfig defaults: 224x224, 16x16 patches, 12 layers of 768) with random weights."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {i: f"class {i}" for i in range(1000)}
    config = ViTConfig(num_labels=1000, id2label=labels, label2id={v: k for k, v in labels.items()})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor().save_pretrained(folder)
    return folder


def vit_gflop(model_dir: Path) -> float:
    """Forward-pass cost of a ViT per image, in GFLOP (2 per multiply-add): 35.1 for ViT-B/16 at 224."""
    config = json.loads((model_dir / "config.json").read_text())
    size, patch = config.get("image_size", 224), config.get("patch_size", 16)
    dim, mlp = config.get("hidden_size", 768), config.get("intermediate_size", 3072)
    layers = config.get("num_hidden_layers", 12)
    patches = (size // patch) ** 2
    tokens = patches + 1
    embed = patches * dim * 3 * patch * patch
    per_layer = tokens * (4 * dim * dim + 2 * dim * mlp) + 2 * tokens * tokens * dim
    head = dim * config.get("num_labels", len(config.get("id2label", {})) or 2)
    return 2 * (embed + layers * per_layer + head) / 1e9


def make_jpeg(size: tuple[int, int], seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth shapes plus grain), so decoding costs what a camera photo costs."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    small = small.filter(ImageFilter.GaussianBlur(2))
    grain = rng.normal(0, 6, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(small, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def measure_peak_gflops(seconds: float = 1.0) -> dict[str, float]:
    """Matrix-multiply throughput of this CPU with PyTorch, fp32 and bf16, all threads, best of a few
    windows: the practical hardware limit (a little under the theoretical peak; lower on a busy machine)."""
    import torch

    from space.backends import available_cpus

    torch.set_num_threads(available_cpus())
    n, result = 2048, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            torch.mm(a, b)
        best = 0.0
        for _ in range(3):
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / 3:
                torch.mm(a, b)
                count += 1
            best = max(best, 2 * n**3 * count / (time.perf_counter() - started) / 1e9)
        result[name] = round(best, 1)
    return result


# --- Servers --------------------------------------------------------------------------------------------

BASELINE = """
import io, sys
from fastapi import FastAPI, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool
from transformers import pipeline
import uvicorn

classify = pipeline("image-classification", model=sys.argv[1])
app = FastAPI()

@app.get("/readyz")
def ready():
    return {"status": "ready"}

@app.post("/predict")
async def predict(request: Request):
    data = await request.body()
    return await run_in_threadpool(classify, Image.open(io.BytesIO(data)), top_k=5)

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A server subprocess on a loopback port, with its peak RSS read from /proc."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as handle:
            self.process = subprocess.Popen(
                [*command, str(self.port)] if name == "baseline" else command,
                env={**env, "SPACE_PORT": str(self.port)},
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def peak_rss_mb(self) -> float:
        """VmHWM: the most resident memory the server process has used so far."""
        return self._status_mb("VmHWM:")

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """VmRSS: the resident memory of the server process now."""
        return self._status_mb("VmRSS:")

    def _status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- Load generation ------------------------------------------------------------------------------------


def drive(url: str, body: bytes, clients: int, seconds: float) -> tuple[list[float], int, float]:
    """``clients`` threads POSTing ``body`` back to back for ``seconds``: (latencies in s, errors, wall)."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            start.wait()
            while time.perf_counter() < stop_at[0]:
                began = time.perf_counter()
                try:
                    ok = (
                        http.post(
                            f"{url}/predict", content=body, headers={"content-type": "image/jpeg"}
                        ).status_code
                        == 200
                    )
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - began
                with lock:
                    latencies.append(took)
                    errors[0] += not ok

    with httpx.Client(timeout=120) as http:  # one warm request: connection set-up and first-call costs
        http.post(f"{url}/predict", content=body, headers={"content-type": "image/jpeg"})
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 3600
    start.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join()
    return latencies, errors[0], time.perf_counter() - began


@dataclass
class Overload:
    """Capacity with a few clients, then many more connections than slots, on the same server."""

    image: str
    clients: str  # a key of CLIENT_KINDS: how refused clients come back
    capacity_clients: int
    capacity_images_per_s: float
    connections: int
    seconds: float
    requests: int
    ok: int
    shed: int  # 503s: refused at admission or unable to start in time
    errors: int  # anything else (other statuses, transport errors)
    goodput_images_per_s: float
    shed_rate: float
    ok_p50_ms: float
    ok_p99_ms: float
    shed_p50_ms: float
    refused_per_s: float
    # Cores the server process used (CPU seconds / wall): with 2 cores, what it does not use went to the
    # load generator on the same machine, or to nobody.
    capacity_server_cores: float
    server_cores: float
    rss_before_mb: float
    rss_after_mb: float


# How refused clients come back: as the server asks (Retry-After), or pushing, 50 ms later.
CLIENT_KINDS = {"polite": None, "pushy": 0.05}


def overload(
    url: str, body: bytes, connections: int, seconds: float, pause_s: float | None
) -> tuple[list[float], list[float], int]:
    """``connections`` clients on one event loop, each POSTing back to back for ``seconds`` on its own
    keep-alive connection (reopened when the server closes it); after a 503 a client waits ``pause_s``, or
    (None) the ``Retry-After`` the server sent. Plain HTTP/1.1 on asyncio streams rather than an HTTP
    library: the load generator shares the machine with the server it measures, and with 200 connections
    httpx's own work took about half of the two cores here. Returns (ok latencies, 503 latencies, errors)."""
    import asyncio

    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    ok: list[float] = []
    shed: list[float] = []
    errors = [0]
    Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]

    async def exchange(stream: Stream) -> tuple[int, bool, float]:
        """One request on ``stream``: (status, whether the server closes the connection, Retry-After)."""
        reader, writer = stream
        writer.write(request)
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        await reader.readexactly(int(fields.get("content-length", "0")))
        retry_after = float(fields.get("retry-after", "1"))
        return int(lines[0].split(" ", 2)[1]), fields.get("connection") == "close", retry_after

    async def client(stop_at: float) -> None:
        stream: Stream | None = None
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            try:
                stream = stream or await asyncio.open_connection(host, int(port))
                status, closed, retry_after = await exchange(stream)
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                errors[0] += 1
                closed, status, retry_after = True, 0, 1.0
            took = time.perf_counter() - began
            if closed and stream is not None:
                stream[1].close()
                stream = None
            if status == 200:
                ok.append(took)
            elif status == 503:
                shed.append(took)
                await asyncio.sleep(retry_after if pause_s is None else pause_s)
            elif status:
                errors[0] += 1
        if stream is not None:
            stream[1].close()

    async def run() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(client(stop_at) for _ in range(connections)))

    asyncio.run(run())
    return ok, shed, errors[0]


def run_overload(
    server: Process, image: str, body: bytes, clients: int, connections: int, seconds: float
) -> list[Overload]:
    """Capacity with ``clients``, then ``connections`` of each kind in CLIENT_KINDS, one after the other."""
    cpu = server.cpu_s()
    latencies, _, wall = drive(server.url, body, clients, seconds)
    capacity, capacity_cores = len(latencies) / wall, (server.cpu_s() - cpu) / wall
    results = []
    for kind, pause_s in CLIENT_KINDS.items():
        before = server.rss_mb()
        cpu, started = server.cpu_s(), time.perf_counter()
        ok, shed, errors = overload(server.url, body, connections, seconds, pause_s)
        wall = time.perf_counter() - started
        cores = (server.cpu_s() - cpu) / wall
        total = len(ok) + len(shed) + errors
        results.append(
            Overload(
                image=image,
                clients=kind,
                capacity_clients=clients,
                capacity_images_per_s=round(capacity, 2),
                connections=connections,
                seconds=round(wall, 2),
                requests=total,
                ok=len(ok),
                shed=len(shed),
                errors=errors,
                goodput_images_per_s=round(len(ok) / wall, 2),
                shed_rate=round(len(shed) / total, 4) if total else 0.0,
                ok_p50_ms=round(1000 * percentile(ok, 50), 1),
                ok_p99_ms=round(1000 * percentile(ok, 99), 1),
                shed_p50_ms=round(1000 * percentile(shed, 50), 1),
                refused_per_s=round(len(shed) / wall, 1),
                capacity_server_cores=round(capacity_cores, 2),
                server_cores=round(cores, 2),
                rss_before_mb=before,
                rss_after_mb=server.rss_mb(),
            )
        )
    return results


def overload_line(o: Overload) -> str:
    share = (
        f" ({100 * o.goodput_images_per_s / o.capacity_images_per_s:.0f}% of capacity)"
        if o.capacity_images_per_s
        else ""
    )
    return (
        f"overload ({o.image}, {o.clients} clients): capacity with {o.capacity_clients} clients "
        f"{o.capacity_images_per_s:.1f} images/s; {o.connections} connections for {o.seconds:.0f} s: "
        f"goodput {o.goodput_images_per_s:.1f} images/s{share}, "
        f"shed {100 * o.shed_rate:.1f}% (503), other errors {o.errors}, admitted p50 {o.ok_p50_ms:.0f} ms "
        f"p99 {o.ok_p99_ms:.0f} ms, 503 p50 {o.shed_p50_ms:.0f} ms ({o.refused_per_s:.0f}/s); server on "
        f"{o.server_cores:.2f} cores ({o.capacity_server_cores:.2f} at capacity); server RSS "
        f"{o.rss_before_mb:.0f} -> {o.rss_after_mb:.0f} MB"
    )


def measure_explain(url: str, body: bytes, count: int) -> dict[str, float]:
    """Explanation latency (``POST /explain``, one at a time) beside a lone ``/predict`` on the same image,
    measured right before it: the ratio is what an explanation costs in predictions (README: target 40x)."""
    import httpx

    headers = {"content-type": "image/jpeg"}
    with httpx.Client(base_url=url, timeout=600) as http:
        http.post("/explain", content=body, headers=headers).raise_for_status()  # first-call costs
        lone = []
        for _ in range(max(5, 2 * count)):
            began = time.perf_counter()
            http.post("/predict", content=body, headers=headers).raise_for_status()
            lone.append(time.perf_counter() - began)
            time.sleep(0.01)
        explained, passes, grid = [], 0, 0
        for _ in range(count):
            began = time.perf_counter()
            answer = http.post("/explain", content=body, headers=headers)
            answer.raise_for_status()
            explained.append(time.perf_counter() - began)
            passes, grid = answer.json()["forward_passes"], answer.json()["rows"]
    predict_ms, explain_ms = 1000 * percentile(lone, 50), 1000 * percentile(explained, 50)
    return {
        "grid": grid,
        "forward_passes": passes,
        "explain_p50_ms": round(explain_ms, 1),
        "predict_p50_ms": round(predict_ms, 1),
        "ratio": round(explain_ms / predict_ms, 1),
    }


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def run_cells(
    servers: Sequence[Process], images: dict[str, bytes], clients: Sequence[int], seconds: float
) -> list[Cell]:
    """Every cell on every server, the servers back to back within each cell: on a shared machine the
    load drifts, and this keeps each ratio to the baseline within the same minute."""
    cells = []
    for image_name, body in images.items():
        for count in clients:
            for server in servers:
                load = os.getloadavg()[0]
                latencies, errors, wall = drive(server.url, body, count, seconds)
                ok = len(latencies) - errors
                cells.append(
                    Cell(
                        server=server.name,
                        image=image_name,
                        clients=count,
                        requests=len(latencies),
                        errors=errors,
                        seconds=round(wall, 2),
                        images_per_s=round(ok / wall, 2),
                        p50_ms=round(1000 * percentile(latencies, 50), 1),
                        p95_ms=round(1000 * percentile(latencies, 95), 1),
                        p99_ms=round(1000 * percentile(latencies, 99), 1),
                        peak_rss_mb=server.peak_rss_mb(),
                        load=round(load, 2),
                    )
                )
                print(f"  {_row(cells[-1])} load {load:.1f}", file=sys.stderr, flush=True)
    order = {server.name: i for i, server in enumerate(servers)}
    return sorted(cells, key=lambda c: order[c.server])  # stable: each server's cells in run order


def measure_bare(model: Path, seconds: float) -> dict[str, object]:
    """The served backend alone, in this process, on one preprocessed image: no HTTP, no decoding.

    What no server can beat on this machine; the gap to the served cells is what serving costs. Calls
    one at a time (a lone request), then as many at once as the server runs (its ``workers``).
    """
    from space.runtime import Runtime
    from space.settings import Settings

    runtime = Runtime(Settings(model=str(model)))
    runtime.load()
    assert runtime.batcher is not None
    runtime.batcher.close()  # only the backend is measured; its worker threads would outlive this
    backend = runtime.classifier.backend
    workers = runtime.plan["workers"]
    pixels = np.zeros((1, 3, *runtime.classifier.info.image_size), dtype=np.float32)
    lone: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(lone) < 5:
        started = time.perf_counter()
        backend.logits(pixels)
        lone.append(time.perf_counter() - started)
        time.sleep(0.01)  # a lone client's gap between requests: idle threads go back to sleep
    counts = [0] * workers
    stop = time.perf_counter() + seconds

    def call(i: int) -> None:
        while time.perf_counter() < stop:
            backend.logits(pixels)
            counts[i] += 1

    callers = [threading.Thread(target=call, args=(i,)) for i in range(workers)]
    started = time.perf_counter()
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    return {
        "backend": runtime.classifier.info.backend,
        "lone_p50_ms": round(1000 * percentile(lone, 50), 1),
        "workers": workers,
        "images_per_s": round(sum(counts) / (time.perf_counter() - started), 2),
    }


# --- Report ---------------------------------------------------------------------------------------------

HEADER = (
    "| server | image | clients | images/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MB "
    "| x baseline | % fp32 limit | % bf16 limit | % int8 limit |"
)


def _row(cell: Cell, baseline: Cell | None = None, limits: dict[str, float] | None = None) -> str:
    ratio = f"{cell.images_per_s / baseline.images_per_s:.2f}" if baseline and baseline.images_per_s else "-"
    shares = [
        f"{100 * cell.images_per_s / limits[key]:.0f}%" if limits and limits.get(key) else "-"
        for key in ("fp32", "bf16", "int8")
    ]
    return (
        f"| {cell.server} | {cell.image} | {cell.clients} | {cell.images_per_s:.1f} | {cell.p50_ms:.0f} "
        f"| {cell.p95_ms:.0f} | {cell.p99_ms:.0f} | {cell.errors} | {cell.peak_rss_mb:.0f} | {ratio} "
        f"| {shares[0]} | {shares[1]} | {shares[2]} |"
    )


def report(cells: list[Cell], limits: dict[str, float]) -> str:
    baselines = {(c.image, c.clients): c for c in cells if c.server == "baseline"}
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    lines += [_row(c, baselines.get((c.image, c.clients)), limits) for c in cells]
    return "\n".join(lines)


# --- Entry point ----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a few seconds per cell (a sanity check)")
    parser.add_argument("--model", type=Path, help="model folder (default: ViT-B/16, random weights)")
    parser.add_argument("--seconds", type=float, help="seconds per cell (default: 15, quick: 1.5)")
    parser.add_argument(
        "--clients", default=",".join(map(str, CLIENTS)), help="client counts, comma-separated"
    )
    parser.add_argument("--images", default=",".join(SIZES), help=f"image sizes from {', '.join(SIZES)}")
    parser.add_argument("--no-baseline", action="store_true", help="measure this server only")
    parser.add_argument(
        "--bare", action="store_true", help="first measure the served backend alone, in process (no HTTP)"
    )
    parser.add_argument(
        "--overload",
        action="store_true",
        help="this server only: capacity with 4 clients, then --connections clients at once (shedding)",
    )
    parser.add_argument(
        "--connections", type=int, help="clients at once in the overload run (default: 200, quick: 50)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--peak-gflops",
        metavar="fp32=N,bf16=N,int8=N",
        help="hardware peak to compare with (default: measured matmul speed; on a busy machine that is low)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra setting for our server"
    )


def main_from_args(args: argparse.Namespace) -> int:
    seconds = args.seconds or (1.5 if args.quick else 15.0)
    clients = [int(c) for c in args.clients.split(",")]
    sizes = [s.strip() for s in args.images.split(",")]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        print(f"error: unknown --images {unknown}; use {', '.join(SIZES)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vit-space-bench-") as scratch_name:
        scratch = Path(scratch_name)
        model = args.model
        if model is None:
            print("building ViT-B/16 with random weights ...", file=sys.stderr, flush=True)
            model = make_vit_b16(scratch / "vit-b16")
        if not (model / "optimized.json").is_file():
            model = _bake_copy(model, scratch / "baked")
        images = {name: make_jpeg(SIZES[name]) for name in sizes}
        if args.overload:  # this server alone, no baseline, no hardware limits
            return _overload_main(args, model, images, server_env(model, scratch, args.env), scratch)
        bare = None
        if args.bare:  # before anything else computes: PyTorch's OpenMP threads spin after a matmul
            print("measuring the bare backend in process ...", file=sys.stderr, flush=True)
            bare = measure_bare(model, 1.0 if args.quick else 10.0)
        limits_gflops = measure_peak_gflops(0.5 if args.quick else 2.0)
        if args.peak_gflops:
            limits_gflops.update(
                {k: float(v) for k, v in (i.split("=") for i in args.peak_gflops.split(","))}
            )
        gflop = vit_gflop(model)
        limits = {key: value / gflop for key, value in limits_gflops.items()}
        env = server_env(model, scratch, args.env)
        runs = [("vit-space", [sys.executable, "-m", "space", "serve"])]
        if not args.no_baseline:
            runs.append(("baseline", [sys.executable, "-c", BASELINE, str(model)]))
        info: dict[str, object] = {}
        servers = [Process(name, command, env, scratch / f"{name}.log") for name, command in runs]
        try:
            for server in servers:  # both load at once; an idle server costs the other nothing
                server.wait_ready()
            import httpx

            info = httpx.get(f"{servers[0].url}/info", timeout=10).json().get("model", {})
            print("measuring " + ", ".join(s.name for s in servers), file=sys.stderr, flush=True)
            cells = run_cells(servers, images, clients, seconds)
            print("measuring explanations ...", file=sys.stderr, flush=True)
            explain_image = sizes[0]
            explained = measure_explain(servers[0].url, images[explain_image], 2 if args.quick else 10)
        finally:
            for server in servers:
                server.stop()
    print(f"model: {model.name}, {gflop:.3g} GFLOP/image; served backend: {info.get('backend')}")
    source = "given" if args.peak_gflops else "measured matmul"
    peaks = "; ".join(f"{k} {v} GFLOP/s = {limits[k]:.1f} images/s" for k, v in limits_gflops.items())
    print(f"hardware limit ({source}): {peaks}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    if bare:
        print(
            f"bare backend ({bare['backend']}, in process, no HTTP or decoding): one call at a time p50 "
            f"{bare['lone_p50_ms']} ms; {bare['workers']} at once {bare['images_per_s']} images/s"
        )
    print(report(cells, limits))
    print(
        f"explanation (occlusion {explained['grid']}x{explained['grid']}, {explained['forward_passes']} "
        f"forward passes, {explain_image}, one at a time): p50 {explained['explain_p50_ms']:.0f} ms = "
        f"{explained['ratio']}x a lone /predict p50 ({explained['predict_p50_ms']:.0f} ms, same run)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cells": [asdict(c) for c in cells],
                    "gflop": gflop,
                    "peak_gflops": limits_gflops,
                    "info": info,
                    "bare": bare,
                    "explain": explained,
                },
                indent=2,
            )
        )
    return 0


def server_env(model: Path, scratch: Path, extra: Sequence[str]) -> dict[str, str]:
    """Our server's environment: quiet logs, large uploads allowed, ``--env`` last."""
    return {
        **os.environ,
        "SPACE_MODEL": str(model),
        "SPACE_HOST": "127.0.0.1",
        "SPACE_LOG_LEVEL": "warning",
        "SPACE_REQUEST_LOG": "false",
        "SPACE_MAX_UPLOAD_MB": "50",
        "GRADIO_TEMP_DIR": str(scratch / "gradio"),
        **dict(item.split("=", 1) for item in extra),
    }


def _overload_main(
    args: argparse.Namespace, model: Path, images: dict[str, bytes], env: dict[str, str], scratch: Path
) -> int:
    """``--overload``: one server, capacity then overload for each image size, one line each."""
    seconds = args.seconds or (2.0 if args.quick else 30.0)
    connections = args.connections or (50 if args.quick else 200)
    clients = 4
    server = Process("vit-space", [sys.executable, "-m", "space", "serve"], env, scratch / "vit-space.log")
    try:
        server.wait_ready()
        print(f"overload: {connections} connections for {seconds:g} s ...", file=sys.stderr, flush=True)
        results = [
            result
            for name, body in images.items()
            for result in run_overload(server, name, body, clients, connections, seconds)
        ]
    finally:
        server.stop()
    print(f"model: {model.name}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for result in results:
        print(overload_line(result))
    if args.json:
        args.json.write_text(json.dumps({"overload": [asdict(r) for r in results]}, indent=2))
    return 0


def _bake_copy(model: Path, target: Path) -> Path:
    """A copy of ``model`` with its optimised export (as the bake step makes), in the scratch folder."""
    import shutil

    from space.backends import export_optimized

    print("exporting the optimised model (as the bake step does) ...", file=sys.stderr, flush=True)
    shutil.copytree(model, target)
    export_optimized(target, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m space bench", description=__doc__)
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
