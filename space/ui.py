"""The Gradio page: upload (or webcam, or paste) an image, see the top classes. Thin: it calls the runtime."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from space.errors import NotReady, UserError
from space.runtime import Runtime

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# Photos that the gradio package itself ships, so the page has examples even with none configured.
FALLBACK_EXAMPLES = ("cheetah.jpg", "lion.jpg", "tower.jpg")
MAX_CLASSES_SHOWN = 20

# System fonts only: Gradio's default theme would fetch web fonts from a CDN.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)


def find_examples(folder: Path) -> list[Path]:
    """The images in ``folder``, or the photos bundled with gradio when it holds none."""
    found = (
        sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    )
    if found:
        return found
    bundled = Path(gr.__file__).parent / "media_assets" / "images"
    return [bundled / name for name in FALLBACK_EXAMPLES if (bundled / name).is_file()]


def build_ui(runtime: Runtime) -> gr.Blocks:
    """The page. Errors a user causes show as readable messages in the page."""
    settings = runtime.settings

    def classify(image_path: str | None, top_k: float) -> tuple[dict[str, float], str]:
        if not image_path:
            raise gr.Error("Upload an image, take one with the webcam, or click an example first.")
        started = time.perf_counter()
        try:
            predictions = runtime.classify_file(image_path, int(top_k))
        except UserError as error:
            raise gr.Error(error.message) from None
        except NotReady as error:
            raise gr.Error(str(error)) from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        return {p.label: p.score for p in predictions}, f"Inference time: {elapsed_ms:.0f} ms"

    revision = f" (revision `{settings.model_revision}`)" if settings.model_revision else ""
    examples = [[str(path), settings.top_k] for path in find_examples(settings.examples_dir)]
    return gr.Interface(
        fn=classify,
        inputs=[
            gr.Image(
                type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"], label="Image"
            ),
            gr.Slider(
                1,
                MAX_CLASSES_SHOWN,
                value=min(settings.top_k, MAX_CLASSES_SHOWN),
                step=1,
                label="Classes to show",
            ),
        ],
        outputs=[gr.Label(label="Top classes"), gr.Markdown(elem_id="inference-time")],
        examples=examples,
        cache_examples=False,
        title="Image Classification with Vision Transformers",
        description=(
            f"Upload an image to classify it with **{settings.model}**{revision}, running inside this app: "
            "no outside service is called."
        ),
        flagging_mode="never",
        api_name="classify",
        analytics_enabled=False,
    )
