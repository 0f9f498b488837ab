"""The page's "Many images" tab: drop many files, get a table (file, top label, score) and a CSV.

Thin, like the rest of the page: files go to the service in requests of a few images (the same batcher
and admission slots as every other front door), with progress shown between them. A file that is not an
image gets its error in its row; the others are still classified.
"""

from __future__ import annotations

import asyncio
import csv
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from space.errors import UserError
from space.serving.admission import RETRY_AFTER_S, Overloaded
from space.serving.params import Params
from space.serving.service import ClassificationService
from space.web.errors import REFUSALS

HEADERS = ["file", "top label", "score"]
CHUNK = 8  # images per request: progress moves every few images, and each request fills a batch
CSV_MAX_AGE_S = 600  # our copies of the CSV; Gradio keeps its own copy for the download


def bulk_tab(service: ClassificationService, page_error: Callable[[Exception], gr.Error]) -> None:
    """The tab, inside the page's Blocks; ``page_error`` turns a refusal into the page's message."""
    csv_dir = tempfile.TemporaryDirectory(prefix="vit-space-csv-")  # removed when the process exits

    async def classify_all(files: list[Any] | None, progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        paths = [Path(f if isinstance(f, str) else f.path) for f in files or []]
        if not paths:
            raise gr.Error("Add some image files first.", print_exception=False)
        rows: list[list[object]] = []
        try:
            for start in range(0, len(paths), CHUNK):
                progress((start, len(paths)), desc="Classifying", unit="images")
                rows += await classify_chunk(service, paths[start : start + CHUNK])
        except REFUSALS as error:
            raise page_error(error) from None
        return rows, write_csv(Path(csv_dir.name), rows)

    with gr.Tab("Many images", id="many"):
        files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="bulk-files")
        run = gr.Button("Classify all", variant="primary", elem_id="bulk-classify")
        table = gr.Dataframe(
            headers=HEADERS, datatype=["str", "str", "number"], interactive=False, elem_id="bulk-table"
        )
        download = gr.File(label="Results as CSV", interactive=False, elem_id="bulk-csv")
        run.click(classify_all, files, [table, download], api_visibility="private")


async def classify_chunk(service: ClassificationService, paths: list[Path]) -> list[list[object]]:
    """One row per file; a busy server is waited for (as its Retry-After asks) up to the time limit."""
    deadline = time.monotonic() + service.settings.request_timeout_s
    while True:
        try:
            results = await service.classify_each(paths, Params(top_k=1))
            break
        except Overloaded:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(RETRY_AFTER_S)
    return [
        [path.name, f"error: {result.reason}", None]
        if isinstance(result, UserError)
        else [path.name, result[0].label, round(result[0].score, 4)]
        for path, result in zip(paths, results, strict=True)
    ]


def write_csv(folder: Path, rows: list[list[object]]) -> str:
    """The table as a CSV file for the download; copies older than CSV_MAX_AGE_S are removed."""
    for old in folder.glob("*.csv"):
        if time.time() - old.stat().st_mtime > CSV_MAX_AGE_S:
            old.unlink(missing_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", newline="", suffix=".csv", prefix="classified-", dir=folder, delete=False
    ) as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADERS)
        writer.writerows(rows)
    return handle.name
