"""Benchmark load: client threads back to back, an overload of many connections, explanations, and the
served backend alone in process, each measured and reported, never asserted."""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from space.bench.servers import Process


@dataclass
class Cell:
    """One server x image size x client count measurement."""

    server: str
    image: str
    clients: int
    requests: int  # each of ``per_request`` images
    errors: int
    seconds: float
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    peak_rss_mb: float
    load: float  # the machine's 1-minute load average when the cell started
    per_request: int = 1
    # The server's CPU milliseconds per image served in the cell, outside and inside the threads that run
    # the model (read from /proc/<pid>/task; nan for a server that does not name them: the baseline).
    serving_cpu_ms: float = float("nan")
    inference_cpu_ms: float = float("nan")


def drive(url: str, body: bytes, clients: int, seconds: float) -> tuple[list[float], int, float]:
    """``clients`` threads POSTing ``body`` to ``/predict`` back to back for ``seconds``: (latencies in
    s, errors, wall)."""
    import httpx

    def api_client() -> Callable[[], bool]:
        http = httpx.Client(timeout=120)

        def send() -> bool:
            try:
                headers = {"content-type": "image/jpeg"}
                return http.post(f"{url}/predict", content=body, headers=headers).status_code == 200
            except httpx.HTTPError:
                return False

        return send

    return _loop(api_client, clients, seconds)


def drive_v2(
    url: str, name: str, files: list[bytes], clients: int, seconds: float
) -> tuple[list[float], int, float]:
    """``clients`` threads each POSTing all of ``files`` in one v2 binary request (as ``tritonclient``
    sends it) back to back for ``seconds``: several images per round trip."""
    import httpx

    from space.web.v2_tensors import HEADER_LENGTH

    body, header_length = binary_request(files)
    headers = {HEADER_LENGTH: str(header_length)}

    def v2_client() -> Callable[[], bool]:
        http = httpx.Client(timeout=120)

        def send() -> bool:
            try:
                return (
                    http.post(f"{url}/v2/models/{name}/infer", content=body, headers=headers).status_code
                    == 200
                )
            except httpx.HTTPError:
                return False

        return send

    return _loop(v2_client, clients, seconds)


def drive_page_lean(url: str, body: bytes, clients: int, seconds: float) -> tuple[list[float], int, float]:
    """``clients`` users of the page's Classify event speaking Gradio's queue protocol as the browser
    does, each on one kept-alive connection: upload the photo, join the queue, read the event stream
    until the result. The load generator's own CPU stays small, so the figure is the server's."""
    import json
    import uuid

    import httpx

    config = httpx.get(f"{url}/config", timeout=30).json()
    prefix = config.get("api_prefix", "/gradio_api")
    event = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == "classify")

    def page_client() -> Callable[[], bool]:
        http = httpx.Client(base_url=f"{url}{prefix}", timeout=120)
        session = uuid.uuid4().hex

        def send() -> bool:
            try:
                upload = http.post("/upload", files=[("files", ("photo.jpg", body, "image/jpeg"))])
                image = {"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}
                joined = http.post(
                    "/queue/join",
                    json={"data": [image, 5], "fn_index": event, "session_hash": session, "event_data": None},
                )
                if joined.status_code != 200:
                    return False
                with http.stream("GET", "/queue/data", params={"session_hash": session}) as stream:
                    for line in stream.iter_lines():
                        message = json.loads(line[5:]) if line.startswith("data:") else {}
                        if message.get("msg") == "process_completed":
                            return bool(message.get("success"))
                return False
            except (httpx.HTTPError, ValueError):
                return False

        return send

    return _loop(page_client, clients, seconds)


def drive_page(url: str, body: bytes, clients: int, seconds: float) -> tuple[list[float], int, float]:
    """``clients`` ``gradio_client`` users of the page's Classify event (through Gradio's queue: upload,
    join, stream), back to back for ``seconds``: what people on the page get, with the cost of that
    client itself on the same machine (compare :func:`drive_page_lean`)."""
    import tempfile

    from gradio_client import Client, handle_file

    folder = tempfile.mkdtemp(prefix="vit-space-page-")
    image = Path(folder) / "photo.jpg"
    image.write_bytes(body)

    # gradio_client opens a new httpx client for each upload and each call, and each one loads the CA
    # bundle into a TLS context, even for http://: most of the load generator's CPU, taken from
    # the server on one machine. The benchmark talks plain HTTP on loopback, so nothing is verified.
    def page_client() -> Callable[[], bool]:
        client = Client(url, verbose=False, download_files=False, ssl_verify=False)

        def send() -> bool:
            try:
                client.predict(handle_file(str(image)), 5, api_name="/classify")
                return True
            except Exception:
                return False

        return send

    return _loop(page_client, clients, seconds)


def _loop(
    make_client: Callable[[], Callable[[], bool]], clients: int, seconds: float
) -> tuple[list[float], int, float]:
    """``clients`` threads, each with its own client, sending back to back for ``seconds`` after one warm
    call each (connection set-up and first-call costs): (latencies in s, errors, wall)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [time.perf_counter() + 3600]

    def client() -> None:
        send = make_client()
        send()
        start.wait()
        while time.perf_counter() < stop_at[0]:
            began = time.perf_counter()
            ok = send()
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                errors[0] += not ok

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
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
    measured right before it: the ratio is what an explanation costs in predictions (docs/explanations.md)."""
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
        explained, passes, grid, method = [], 0, 0, ""
        for _ in range(count):
            began = time.perf_counter()
            answer = http.post("/explain", content=body, headers=headers)
            answer.raise_for_status()
            explained.append(time.perf_counter() - began)
            found = answer.json()
            passes, grid, method = found["forward_passes"], found["rows"], found["method"]
    predict_ms, explain_ms = 1000 * percentile(lone, 50), 1000 * percentile(explained, 50)
    return {
        "method": method,
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
                load, cpu = os.getloadavg()[0], server.cpu_split_s()
                measured = drive(server.url, body, count, seconds)
                cells.append(_cell(server, server.name, image_name, count, measured, load, cpu=cpu))
                print(f"  {row(cells[-1])} load {load:.1f}", file=sys.stderr, flush=True)
    order = {server.name: i for i, server in enumerate(servers)}
    return sorted(cells, key=lambda c: order[c.server])  # stable: each server's cells in run order


def many_cell(
    server: Process, image_name: str, size: tuple[int, int], clients: int, per_request: int, seconds: float
) -> Cell:
    """``clients`` sending ``per_request`` different photos per v2 request (server "<name> N/request")."""
    import httpx

    from space.bench.workload import make_jpeg

    name = httpx.get(f"{server.url}/info", timeout=10).json()["name"]
    files = [make_jpeg(size, seed=seed) for seed in range(per_request)]
    load, cpu = os.getloadavg()[0], server.cpu_split_s()
    measured = drive_v2(server.url, name, files, clients, seconds)
    cell = _cell(
        server, f"{server.name} {per_request}/request", image_name, clients, measured, load, per_request, cpu
    )
    print(f"  {row(cell)} load {load:.1f}", file=sys.stderr, flush=True)
    return cell


def page_cells(server: Process, image_name: str, body: bytes, clients: int, seconds: float) -> list[Cell]:
    """The page's queue: ``clients`` users of the Classify event, speaking the protocol as the browser
    does (server "<name> page"), then as ``gradio_client`` (server "<name> page gradio_client")."""
    cells = []
    for name, drive_clients in (("page", drive_page_lean), ("page gradio_client", drive_page)):
        load, cpu = os.getloadavg()[0], server.cpu_split_s()
        measured = drive_clients(server.url, body, clients, seconds)
        cells.append(_cell(server, f"{server.name} {name}", image_name, clients, measured, load, cpu=cpu))
        print(f"  {row(cells[-1])} load {load:.1f}", file=sys.stderr, flush=True)
    return cells


def _cell(
    server: Process,
    name: str,
    image_name: str,
    clients: int,
    measured: tuple[list[float], int, float],
    load: float,
    per_request: int = 1,
    cpu: tuple[float, float] | None = None,
) -> Cell:
    """The cell's figures; ``cpu``: the server's :meth:`Process.cpu_split_s` when the cell began."""
    latencies, errors, wall = measured
    images = per_request * (len(latencies) - errors)
    spent = [b - a for a, b in zip(cpu, server.cpu_split_s(), strict=True)] if cpu and images else None
    named = spent is not None and spent[0] > 0  # a server whose inference threads are named: not the baseline
    return Cell(
        server=name,
        image=image_name,
        clients=clients,
        requests=len(latencies),
        errors=errors,
        seconds=round(wall, 2),
        images_per_s=round(per_request * (len(latencies) - errors) / wall, 2),
        p50_ms=round(1000 * percentile(latencies, 50), 1),
        p95_ms=round(1000 * percentile(latencies, 95), 1),
        p99_ms=round(1000 * percentile(latencies, 99), 1),
        peak_rss_mb=server.peak_rss_mb(),
        load=round(load, 2),
        per_request=per_request,
        serving_cpu_ms=round(1000 * spent[1] / images, 2) if named else float("nan"),
        inference_cpu_ms=round(1000 * spent[0] / images, 2) if named else float("nan"),
    )


def measure_bare(model: Path, seconds: float) -> dict[str, object]:
    """The served backend alone, in this process, on one preprocessed image: no HTTP, no decoding; the
    figures the bake step measures (:func:`space.bake.speed.measure_speed`), with the serving plan.

    What no server can beat on this machine; the gap to the served cells is what serving costs.
    """
    from space.bake.speed import measure_speed
    from space.serving.service import ClassificationService
    from space.settings import Settings

    service = ClassificationService(Settings(model=str(model)))
    service.load()
    model_, plan = service.model, service.plan
    service.close()  # only the backend is measured; the batcher's threads would outlive this
    speed = measure_speed(model_.backend, model_.info.image_size, plan.workers, plan.max_batch, seconds)
    return {"backend": model_.info.backend, **speed}


HEADER = (
    "| server | image | clients | images/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MB "
    "| x baseline | % fp32 limit | % bf16 limit | % int8 limit |"
)


def row(cell: Cell, baseline: Cell | None = None, limits: dict[str, float] | None = None) -> str:
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


def binary_request(files: list[bytes]) -> tuple[bytes, int]:
    """A binary inference request of ``files`` (what ``tritonclient`` sends), asking for each image's
    best class: the body and its JSON header's length, for load generators that build it once."""
    import json

    from space.web import v2_tensors

    data = b"".join(v2_tensors.LENGTH.pack(len(f)) + f for f in files)
    tensor = {
        "name": v2_tensors.INPUT,
        "datatype": "BYTES",
        "shape": [len(files)],
        "parameters": {"binary_data_size": len(data)},
    }
    asked = {"name": v2_tensors.OUTPUT, "parameters": {"classification": 1}}
    header = json.dumps({"inputs": [tensor], "outputs": [asked]})
    return header.encode() + data, len(header)
