"""The benchmark's quick mode runs end to end (both servers, every cell) and prints its table.

Speed itself is never asserted here: it depends on the machine and its load (docs/performance.md has
the figures).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from space.bake import bake
from space.serving.explain import DEFAULT
from tests.conftest import REPO

pytestmark = [pytest.mark.server, pytest.mark.bake]

ROW = re.compile(
    r"^\| (vit-space|vit-space page|vit-space page gradio_client|vit-space 8/request|baseline) "
    r"\| (640x480|12MP) \| (\d+) "
    r"\| [\d.]+ \| \d+ \| \d+ \| \d+ "
    r"\| (\d+) \| \d+ "
    r"\| ([\d.]+) \| \d+% \| \d+% \| (?:\d+%|-) \|$"
)


def test_quick_bench_reports_every_cell(tiny_vit: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SPACE_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "space",
            "bench",
            "--quick",
            "--model",
            str(tiny_vit),
            "--seconds",
            "1",
            "--clients",  # two client counts are enough to check every ratio (the default adds 16)
            "1,4",
            "--json",
            str(out),
            "--bare",
            "--page",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("| server | image | clients | images/s | p50 ms") for line in lines)
    served = re.search(r"served backend: (\S+)$", result.stdout, re.MULTILINE)
    assert served, result.stdout
    rows = [
        ROW.match(line) for line in lines if line.startswith("| vit-space") or line.startswith("| baseline")
    ]
    assert len(rows) == 11 and all(rows), result.stdout
    cells = {(m[1], m[2], int(m[3])) for m in rows if m}
    assert cells == {
        (s, i, c) for s in ("vit-space", "baseline") for i in ("640x480", "12MP") for c in (1, 4)
    } | {(f"vit-space {s}", "640x480", 4) for s in ("page", "page gradio_client", "8/request")}
    assert all(
        m[5] == "1.00" for m in rows if m and m[1] == "baseline"
    )  # ratios are to the same cell's baseline
    bare = re.search(
        r"^bare backend \((\S+), in process, no HTTP or decoding\): one call at a time p50 ([\d.]+) ms; "
        r"batches of (\d+), (\d+) at once ([\d.]+) images/s; single images through the batcher "
        r"([\d.]+) images/s$",
        result.stdout,
        re.MULTILINE,
    )
    assert bare and bare[1] == served[1] and float(bare[2]) > 0 and float(bare[5]) > 0, result.stdout
    explained = re.search(
        rf"^explanation \({re.escape(DEFAULT.name)}, (\d+)x\1 grid, (\d+) forward passes, 640x480, one at a "
        r"time\): p50 (\d+) ms = "
        r"([\d.]+)x a lone /predict p50 \((\d+) ms, same run\)$",
        result.stdout,
        re.MULTILINE,
    )
    assert explained and explained[1] == "7" and int(explained[2]) == DEFAULT.passes(7), result.stdout
    data = json.loads(out.read_text())
    assert data["explain"]["forward_passes"] == DEFAULT.passes(7) and data["explain"]["explain_p50_ms"] > 0
    # The bench bakes as the bake step does: the fastest that passes the guard here, measured.
    chosen = data["info"]["optimized"]
    assert len(data["cells"]) == 11 and data["info"]["backend"] == served[1]
    assert f"{chosen['backend']}-{chosen['precision']}" == served[1] and chosen["why"], chosen
    assert data["bare"]["workers"] == int(bare[4]) and data["bare"]["lone_p50_ms"] == float(bare[2])
    # The targets as ratios within the run, from the same figures as the table.
    ratios = re.search(
        rf"^{re.escape(served[1])}: 640x480 x4: ([\d.]+) img/s = (\d+)% of its best bare \(([\d.]+)\); "
        r"x4 sending 8 per request: ([\d.]+) img/s = (\d+)%; "
        r"([\d.]+)x the baseline; x1 p50 (\d+) ms = bare alone \+ (-?\d+) ms; "
        r"12MP x1 p50 = 640x480's \+ (-?\d+) ms; page x4 = (\d+)% of the API; "
        r"with gradio_client as the page's clients (\d+)%; "
        r"server CPU per image x4 outside inference ([\d.]+) ms, inference (\d+) ms$",
        result.stdout,
        re.MULTILINE,
    )
    assert ratios, result.stdout
    figures = {(c["server"], c["image"], c["clients"]): c for c in data["cells"]}
    api, base = figures["vit-space", "640x480", 4], figures["baseline", "640x480", 4]
    best = max(data["bare"]["batch_images_per_s"], data["bare"]["images_per_s"])
    assert float(ratios[3]) == best and int(ratios[2]) == round(100 * api["images_per_s"] / best)
    # The server's CPU split by thread: both sides measured, the ratio line prints the API's.
    assert api["serving_cpu_ms"] > 0 and api["inference_cpu_ms"] > 0, api
    assert float(ratios[12]) == round(api["serving_cpu_ms"], 1), (ratios[12], api)
    many = figures["vit-space 8/request", "640x480", 4]
    assert many["per_request"] == 8
    assert many["images_per_s"] == pytest.approx(8 * many["requests"] / many["seconds"], rel=0.01)
    assert float(ratios[4]) == round(many["images_per_s"], 1)
    assert int(ratios[5]) == round(100 * many["images_per_s"] / best)
    assert float(ratios[6]) == round(api["images_per_s"] / base["images_per_s"], 1)
    page = figures["vit-space page", "640x480", 4]["images_per_s"]  # the browser's protocol, lean client
    assert int(ratios[10]) == round(100 * page / api["images_per_s"])
    heavy = figures["vit-space page gradio_client", "640x480", 4]["images_per_s"]
    assert int(ratios[11]) == round(100 * heavy / api["images_per_s"])
    for cell in data["cells"]:
        assert cell["errors"] == 0 and cell["requests"] > 0 and cell["images_per_s"] > 0, cell
        assert cell["p50_ms"] <= cell["p95_ms"] <= cell["p99_ms"], cell
        assert cell["peak_rss_mb"] > 50, cell


def test_quick_overload_prints_its_line(tiny_vit: Path, tmp_path: Path) -> None:
    """``--overload``: capacity, then many connections; goodput, shed rate, latency and RSS are printed."""
    out = tmp_path / "overload.json"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SPACE_")}
    env["SPACE_MAX_IN_FLIGHT"] = "2"  # few slots: 20 connections must be shed, even on a fast machine
    # Baked for PyTorch (no export to measure): this run is about shedding, and the bench serves a bake as is.
    baked = tmp_path / "baked"
    bake(str(tiny_vit), baked, optimize="torch", precision="fp32")
    command = [sys.executable, "-m", "space", "bench", "--overload", "--quick", "--model", str(baked)]
    command += ["--images", "640x480", "--connections", "20", "--json", str(out)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = re.findall(
        r"^overload \(640x480, (polite|pushy) clients\): capacity with 4 clients ([\d.]+) images/s; "
        r"20 connections for \d+ s: goodput ([\d.]+) images/s \(\d+% of capacity\), shed ([\d.]+)% \(503\), "
        r"other errors (\d+), admitted p50 \d+ ms p99 \d+ ms, 503 p50 \d+ ms \(\d+/s\); "
        r"server on ([\d.]+) cores \(([\d.]+) at capacity\); server RSS \d+ -> \d+ MB$",
        result.stdout,
        re.MULTILINE,
    )
    assert [line[0] for line in lines] == ["polite", "pushy"], result.stdout
    for _, capacity, goodput, shed, errors, cores, capacity_cores in lines:
        assert float(capacity) > 0 and float(goodput) > 0 and float(shed) > 0 and errors == "0"
        assert float(cores) > 0 and float(capacity_cores) > 0
    polite, pushy = json.loads(out.read_text())["overload"]
    assert polite["clients"] == "polite" and pushy["clients"] == "pushy"
    for data in (polite, pushy):
        assert data["ok"] > 0 and data["shed"] > 0 and data["ok_p50_ms"] <= data["ok_p99_ms"]
        assert data["rss_before_mb"] > 50 and data["rss_after_mb"] > 50
    # Polite clients wait the Retry-After second before they come back; pushy ones only 50 ms.
    assert polite["refused_per_s"] < pushy["refused_per_s"]
