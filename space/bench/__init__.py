"""``python -m space bench``: serving speed of this app against the naive baseline, over HTTP, in one run;
``--overload``: how this app alone holds up under far more clients than it has slots.

Why a script and not a test: speed depends on the machine and its load, so it is measured and reported
(docs/performance.md), never asserted. Both servers run as separate processes on
loopback, on the same model, one after the other, driven by the same client threads; the numbers
that matter are the ratios within one run.

The baseline is ``transformers.pipeline("image-classification")`` behind a plain FastAPI endpoint that
takes the raw image bytes (the same HTTP contract as our ``POST /predict``). It is the tutorial's design
without Gradio's queue in front, so it is a little *faster* than the tutorial's ``gr.Interface`` and the
ratios are conservative.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from space.backends.registry import pairs
from space.bench.load import (
    HEADER,
    Cell,
    many_cell,
    measure_bare,
    measure_explain,
    overload_line,
    page_cells,
    row,
    run_cells,
    run_overload,
)
from space.bench.servers import BASELINE, Process
from space.bench.workload import make_jpeg, make_vit_b16, measure_peak_gflops, vit_gflop

CLIENTS = (1, 4, 16)
MANY = (4, 8)  # clients, images per request: the several-images-per-request row (the v2 protocol)
RUNTIMES = tuple(spec.label(precision) for spec, precision in pairs())
SIZES = {"640x480": (640, 480), "12MP": (4000, 3000)}


def report(cells: list[Cell], limits: dict[str, float]) -> str:
    baselines = {(c.image, c.clients): c for c in cells if c.server == "baseline"}
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    lines += [row(c, baselines.get((c.image, c.clients)), limits) for c in cells]
    return "\n".join(lines)


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
        "--page",
        action="store_true",
        help="also drive the page's queue (gradio_client users of Classify) with the most clients",
    )
    parser.add_argument("--no-explain", action="store_true", help="skip the explanation measurement")
    parser.add_argument(
        "--explanations",
        action="store_true",
        help="only this: how far the explanation maps can be trusted (deletion and insertion against random "
        "orders, localisation on busy backgrounds), for the served method and the ones it was chosen over",
    )
    parser.add_argument(
        "--photos",
        type=Path,
        default=Path("tests/data/photos"),
        help="with --explanations: photos and their labels.csv (default: the committed test photos)",
    )
    parser.add_argument(
        "--runtimes",
        metavar="all|BACKEND-PRECISION,...",
        help="every runtime side by side: each baked and measured bare and served, one after another "
        f"(all: {', '.join(RUNTIMES)}); the first also against the baseline",
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
        if args.runtimes:
            return _runtimes_main(args, model, scratch)
        if args.explanations:
            return _explanations_main(model, args.photos)
        if not (model / "optimized.json").is_file():
            model = _bake_copy(model, scratch / "baked", args.quick)
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
            runs.append(("baseline", [*BASELINE, str(model)]))
        info: dict[str, object] = {}
        servers = [Process(name, command, env, scratch / f"{name}.log") for name, command in runs]
        try:
            for server in servers:  # both load at once; an idle server costs the other nothing
                server.wait_ready()
            import httpx

            info = httpx.get(f"{servers[0].url}/info", timeout=10).json().get("model", {})
            print("measuring " + ", ".join(s.name for s in servers), file=sys.stderr, flush=True)
            cells = run_cells(servers, images, clients, seconds)
            cells.append(many_cell(servers[0], sizes[0], SIZES[sizes[0]], *MANY, seconds))
            if args.page:
                cells += page_cells(servers[0], sizes[0], images[sizes[0]], max(clients), seconds)
            explain_image, explained = sizes[0], None
            if not args.no_explain:
                print("measuring explanations ...", file=sys.stderr, flush=True)
                explained = measure_explain(servers[0].url, images[explain_image], 2 if args.quick else 10)
        finally:
            for server in servers:
                server.stop()
    print(f"model: {model.name}, {gflop:.3g} GFLOP/image; served backend: {info.get('backend')}")
    source = "given" if args.peak_gflops else "measured matmul"
    peaks = "; ".join(f"{k} {v} GFLOP/s = {limits[k]:.1f} images/s" for k, v in limits_gflops.items())
    print(f"hardware limit ({source}): {peaks}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    if bare:
        print(bare_line(bare))
    print(report(cells, limits))
    if bare:
        run = {"runtime": bare["backend"], "bare": bare, "cells": [asdict(c) for c in cells]}
        print(serving_ratios([run]))
    if explained:
        print(
            f"explanation ({explained['method']}, {explained['grid']}x{explained['grid']} grid, "
            f"{explained['forward_passes']} forward passes, {explain_image}, one at a time): "
            f"p50 {explained['explain_p50_ms']:.0f} ms = {explained['ratio']}x a lone /predict p50 "
            f"({explained['predict_p50_ms']:.0f} ms, same run)"
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


def _explanations_main(model: Path, photos: Path) -> int:
    """``--explanations``: every method on the same photos, in process, one line each."""
    import csv

    from PIL import Image

    from space.bench import explanations as measure
    from space.serving.explain import DEFAULT, Method
    from space.serving.service import ClassificationService
    from space.settings import Settings

    service = ClassificationService(Settings(model=str(model)))
    service.load()
    served = service.model
    with (photos / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    objects = []
    for entry in rows:  # the photos the model gets right (all, with its top class, for a random model)
        with Image.open(photos / entry["file"]) as image:
            photo = image.convert("RGB")
        photo.thumbnail((measure.CANVAS, measure.CANVAS))
        scores = served.scores(served.backend.logits(served.preprocess([photo])))[0]
        label = served.labels[int(scores.argmax())]
        objects.append((entry["file"], photo, label, label in entry["accepted_labels"].split(" | ")))
    right = [(n, p, label) for n, p, label, ok in objects if ok]
    chosen = right if len(right) >= 3 else [(n, p, label) for n, p, label, _ in objects]
    served_name = f"{DEFAULT.name} (served; 1x1 grey was served before)"
    methods = {served_name: measure.in_process(served, DEFAULT)}
    for window, fill in ((1, "grey"), (2, "grey"), (2, "mean"), (1, "blur"), (3, "blur")):
        method = Method(window, 1, fill)
        methods[method.name] = measure.in_process(served, method)
    two_scales = measure.merged(methods[served_name][0], measure.in_process(served, Method(4))[0])
    methods["two scales merged: 2x2 and 4x4-cell windows, blur fill"] = (two_scales, measure.scorer(served))
    methods["RISE, 49 random masks, blur fill"] = (measure.rise(served), measure.scorer(served))
    print(f"model: {model.name}; {len(chosen)} photos ({len(right)} classified right), 2 placements each")
    randoms: dict[tuple[object, ...], float] = {}  # the random orders' areas, the same for every method
    for name, (explain, score) in methods.items():
        placed, curves = measure.measure(explain, score, chosen, randoms=randoms)
        print(f"{name}: {measure.summary(placed, curves)}", flush=True)
    explain, score = methods[served_name]
    placed, curves = measure.measure(explain, score, chosen, black=True, randoms=randoms)
    print(f"{DEFAULT.name} (served), deleting to black: {measure.summary(placed, curves)}", flush=True)
    service.close()
    return 0


def bare_line(bare: dict[str, object]) -> str:
    return (
        f"bare backend ({bare['backend']}, in process, no HTTP or decoding): one call at a time p50 "
        f"{bare['lone_p50_ms']} ms; batches of {bare['max_batch']}, {bare['workers']} at once "
        f"{bare['batch_images_per_s']} images/s; single images through the batcher "
        f"{bare['images_per_s']} images/s"
    )


def _runtimes_main(args: argparse.Namespace, model: Path, scratch: Path) -> int:
    """``--runtimes``: each runtime baked from the same model, then this command again on that bake
    (bare, served, the page with ``--page``), in a child process each so that no runtime's threads or
    memory linger into the next one's figures. Then one table of them all."""
    names = list(RUNTIMES) if args.runtimes == "all" else [n.strip() for n in args.runtimes.split(",")]
    source = model
    if not any(model.glob("*.safetensors")):
        print("error: --runtimes needs a model with its PyTorch weights", file=sys.stderr)
        return 2
    results: list[dict[str, object]] = []
    baseline = not args.no_baseline  # measured once, beside the first runtime that bakes
    for name in names:
        backend, _, precision = name.partition("-")
        target = scratch / f"bake-{name}"
        print(f"== {name}: baking ...", file=sys.stderr, flush=True)
        command = bake_command(source, target, scratch)
        command += ["--optimize", backend, "--precision", precision, "--keep-pytorch-weights"]
        baked = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if baked.returncode != 0:
            reason = (baked.stdout.strip().splitlines() or ["failed"])[-1]
            results.append({"runtime": name, "refused": reason})
            print(f"   refused: {reason}", file=sys.stderr, flush=True)
            continue
        out = scratch / f"bench-{name}.json"
        child = [sys.executable, "-m", "space", "bench", "--model", str(target), "--bare", "--no-explain"]
        child += ["--clients", args.clients, "--images", args.images, "--json", str(out)]
        child += ["--seconds", str(args.seconds or (1.5 if args.quick else 15.0))]
        child += [f"--env={item}" for item in args.env]
        child += ["--page"] if args.page else []
        child += [] if baseline else ["--no-baseline"]
        baseline = False
        print(f"== {name}: measuring ...", file=sys.stderr, flush=True)
        subprocess.run(child, check=True, stdout=sys.stderr)
        results.append({"runtime": name, **json.loads(out.read_text())})
    print(f"model: {model.name}; {os.cpu_count()} CPUs; CPU: {_cpu_name()}")
    print(runtimes_table(results))
    print(serving_ratios(results))
    if args.json:
        args.json.write_text(json.dumps({"runtimes": results}, indent=2))
    return 0


def runtimes_table(results: list[dict[str, object]]) -> str:
    """One line per runtime: its bare figures, then each served cell's images/s and p50."""
    cells = [c for r in results for c in r.get("cells", []) if c["server"] != "baseline"]
    served = list(dict.fromkeys((c["image"], c["clients"], c["server"]) for c in cells))  # in run order
    head = "| runtime | bare alone p50 ms | bare batches img/s | bare via batcher img/s | "
    head += " | ".join(f"{s.replace('vit-space', 'served')} {i} x{c}: img/s, p50 ms" for i, c, s in served)
    lines = [head + " |", "|" + "---|" * (4 + len(served))]
    for result in results:
        if "refused" in result:
            lines.append(f"| {result['runtime']} | refused: {result['refused']} |")
            continue
        bare = result["bare"]
        cells = {(c["image"], c["clients"], c["server"]): c for c in result["cells"]}
        figures = [
            f"{cells[k]['images_per_s']:.1f}, {cells[k]['p50_ms']:.0f}" if k in cells else "-" for k in served
        ]
        lines.append(
            f"| {result['runtime']} | {bare['lone_p50_ms']} | {bare['batch_images_per_s']} "
            f"| {bare['images_per_s']} | " + " | ".join(figures) + " |"
        )
    baseline = [c for r in results for c in r.get("cells", []) if c["server"] == "baseline"]
    for cell in baseline:
        lines.append(
            f"| naive baseline (transformers pipeline) | | | | {cell['image']} x{cell['clients']}: "
            f"{cell['images_per_s']:.1f} img/s, p50 {cell['p50_ms']:.0f} ms |"
        )
    return "\n".join(lines)


def serving_ratios(results: list[dict[str, object]]) -> str:
    """Per runtime, how close serving comes to the runtime itself, as ratios within the run: the most
    clients against its best bare figure and the baseline, a lone request against the bare call, the
    other image sizes against the first, and the page against the API."""

    def by_cell(cells: list[dict], server: str) -> dict[tuple[str, int], dict]:
        return {(c["image"], c["clients"]): c for c in cells if c["server"] == server}

    baseline = by_cell([c for r in results for c in r.get("cells", [])], "baseline")
    lines = []
    for result in results:
        if "refused" in result:
            continue
        bare = result["bare"]
        api, page = by_cell(result["cells"], "vit-space"), by_cell(result["cells"], "vit-space page")
        heavy_page = by_cell(result["cells"], "vit-space page gradio_client")
        many = by_cell(result["cells"], f"vit-space {MANY[1]}/request")
        image = next(iter(api))[0]
        counts = [c for i, c in api if i == image]
        most, one = max(counts), min(counts)
        best = max(bare["batch_images_per_s"], bare["images_per_s"])
        served, lone = api[image, most]["images_per_s"], api[image, one]["p50_ms"]
        share = f"{100 * served / best:.0f}% of its best bare ({best})"
        parts = [f"{image} x{most}: {served:.1f} img/s = {share}"]
        if (image, MANY[0]) in many:
            batched = many[image, MANY[0]]["images_per_s"]
            parts.append(
                f"x{MANY[0]} sending {MANY[1]} per request: {batched:.1f} img/s = {100 * batched / best:.0f}%"
            )
        if (image, most) in baseline:
            parts.append(f"{served / baseline[image, most]['images_per_s']:.1f}x the baseline")
        parts.append(f"x{one} p50 {lone:.0f} ms = bare alone + {lone - bare['lone_p50_ms']:.0f} ms")
        for other in dict.fromkeys(i for i, _ in api if i != image):
            if (other, one) in api:
                parts.append(f"{other} x{one} p50 = {image}'s + {api[other, one]['p50_ms'] - lone:.0f} ms")
        if (image, most) in page:
            parts.append(f"page x{most} = {100 * page[image, most]['images_per_s'] / served:.0f}% of the API")
        if (image, most) in heavy_page:
            heavy = heavy_page[image, most]["images_per_s"]
            parts.append(f"with gradio_client as the page's clients {100 * heavy / served:.0f}%")
        cpu = api[image, most]
        parts.append(
            f"server CPU per image x{most} outside inference {cpu['serving_cpu_ms']:.1f} ms, "
            f"inference {cpu['inference_cpu_ms']:.0f} ms"
        )
        lines.append(f"{result['runtime']}: " + "; ".join(parts))
    return "\n".join(lines)


def _cpu_name() -> str:
    from space.model.cpu import cpu_model

    return cpu_model()


def _bake_copy(model: Path, target: Path, quick: bool = False) -> Path:
    """``model`` baked into ``target`` by the bake command itself (fastest backend that passes the guard
    on this CPU), keeping the PyTorch weights that the baseline serves."""
    print("baking the optimised model (python -m space bake) ...", file=sys.stderr, flush=True)
    command = [*bake_command(model, target, target.parent), "--optimize", "auto", "--keep-pytorch-weights"]
    command += ["--measure-seconds", "0.3", "--calibration-size", "32"] if quick else []
    subprocess.run(command, check=True, stdout=sys.stderr)
    return target


def bake_command(model: Path, target: Path, scratch: Path) -> list[str]:
    """The bake command for a benchmark copy: the accuracy guard measures the cosine on two real photos
    (gradio's cheetah and lion; static int8 calibrates on its other photos), and not top-1, which on
    random weights (the default ViT-B/16) is a near-tie that any rounding flips."""
    import gradio

    photos = scratch / "guard-photos"
    if not photos.is_dir():
        photos.mkdir(parents=True)
        for name in ("cheetah.jpg", "lion.jpg"):
            shutil.copy(Path(gradio.__file__).parent / "media_assets" / "images" / name, photos)
    command = [sys.executable, "-m", "space", "bake", "--model", str(model), "--output", str(target)]
    command += ["--examples-from", str(photos), "--examples-dir", str(target) + "-examples"]
    return [*command, "--min-top1-agreement", "0"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m space bench", description=__doc__)
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))
