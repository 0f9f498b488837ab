"""The benchmark's baseline: ``transformers.pipeline("image-classification")`` behind a plain FastAPI
endpoint that takes the raw image bytes (the same HTTP contract as ``POST /predict``): the tutorial's design
without Gradio's queue, so a little *faster* than the tutorial and the ratios conservative.

Run as ``python -m space.bench.baseline MODEL_DIR PORT``; it uses nothing else of ``space``, so it
measures the naive design alone.
"""

# No `from __future__ import annotations`: FastAPI must see the real Request class of the endpoints
# defined inside main(), not a string it cannot resolve from this module's globals.
import io
import sys
from typing import Any


def main(model: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI, Request
    from PIL import Image
    from starlette.concurrency import run_in_threadpool
    from transformers import pipeline

    classify = pipeline("image-classification", model=model)
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        data = await request.body()
        return await run_in_threadpool(classify, Image.open(io.BytesIO(data)), top_k=5)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
