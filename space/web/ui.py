"""The Gradio page: upload (or webcam, or paste) an image, see the top classes and where the model looked;
or classify many files at once (:mod:`space.web.bulk`). Thin: every event calls the service."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from space.errors import UserError
from space.serving import params
from space.serving.overlay import drawn, legend
from space.serving.service import ClassificationService
from space.web.bulk import bulk_tab
from space.web.errors import REFUSALS

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


def model_summary(service: ClassificationService) -> str:
    """One line naming the model and its revision; re-read on every page load (the model loads late)."""
    info = service.info
    if info is None:
        return f"Model **{service.settings.model}**: loading, ready in a few seconds."
    bake = info.bake or {}
    name = str(bake.get("model_id") or info.model)
    if Path(name).is_absolute():  # a local folder: its name, not this server's file layout
        name = Path(name).name
    revision = info.revision or bake.get("commit_sha") or bake.get("revision")
    pinned = f"revision `{revision}`" if revision else "revision: local folder (unpinned)"
    return (
        f"Model **{name}**, {pinned} · {info.architecture}, {info.num_labels} classes · "
        f"runs inside this app ({info.backend}); no outside service is called."
    )


def page_error(error: Exception) -> gr.Error:
    """A message shown in the page; no traceback in the server log, since the user caused it."""
    return gr.Error(getattr(error, "message", None) or str(error), print_exception=False)


def image_path(image: Any) -> Path:
    """The uploaded file (an unprocessed event payload), or a readable error when there is none."""
    path = image.get("path") if isinstance(image, dict) else image
    if not path:
        raise page_error(UserError("Upload an image, take one with the webcam, or click an example first."))
    return Path(path)


def build_ui(service: ClassificationService) -> gr.Blocks:
    """The page. Errors a user causes show as readable messages in the page."""
    settings = service.settings

    async def classify(image: Any, top_k: float) -> tuple[dict[str, float], str]:
        """Classify an image with the model served by this app: its most likely classes, best first.

        Args:
            image: The image to classify (JPEG, PNG, WebP, GIF, BMP or TIFF), as an http(s) URL or a
                base64 ``data:`` URL.
            top_k: How many classes to return, from 1 to 20.

        Returns:
            The top classes with their scores (the model's own: softmax probabilities, or independent
            sigmoid ones for a multi-label model), and the inference time.
        """
        # Unprocessed event payload (preprocess=False): an unreadable file reaches our checks and gets
        # their message, instead of Gradio's own decoding error naming a temporary path.
        path = image_path(image)
        started = time.perf_counter()
        try:
            [ranking] = await service.classify([path], params.parse({"top_k": top_k}))
        except REFUSALS as error:
            raise page_error(error) from None
        elapsed_ms = (time.perf_counter() - started) * 1000
        return {p.label: p.score for p in ranking}, f"Inference time: {elapsed_ms:.0f} ms"

    async def explain(image: Any, target: str | None) -> tuple[Any, str, dict[str, Any]]:
        """Show where the model looked in an image: an occlusion map of one class's score.

        A window of 2x2 cells of a grid over the image is blurred at every position in turn; a cell's
        value is how much hiding it lowers the class's probability (the mean over the windows that cover
        it), 1 for the most, 0 for none. It shows what the model used, not where the object is.

        Args:
            image: The image (JPEG, PNG, WebP, GIF, BMP or TIFF), as an http(s) URL or a base64 ``data:``
                URL.
            target: The class to explain: a label as the classify tool returns it, or a class index;
                empty for the top class.

        Returns:
            The image with the map laid over it (red: hiding this region lowers the score most), a
            caption, and the class, its score and the grid (rows top to bottom, values in [0, 1]).
        """
        path = image_path(image)
        try:
            asked = params.parse({"target": target}, accepted=params.EXPLAIN)
            explanation, picture = await service.explain(path, asked)
        except REFUSALS as error:
            raise page_error(error) from None
        return drawn(picture, explanation), legend(explanation), explanation.as_dict()

    def explainable(result: Any) -> tuple[Any, None, str]:
        """The classes of the latest result ({label: probability}), top first, for the class picker; the
        old map is cleared."""
        scores = result if isinstance(result, dict) else {}
        choices = sorted(scores, key=lambda label: -float(scores[label]))
        return gr.Dropdown(choices=choices, value=choices[0] if choices else None), None, ""

    examples = find_examples(settings.examples_dir)
    with gr.Blocks(title="Image Classification with Vision Transformers", analytics_enabled=False) as page:
        gr.Markdown("# Image Classification with Vision Transformers")
        summary = gr.Markdown(model_summary(service), elem_id="model-summary")
        with gr.Tab("One image", id="one"):
            with gr.Row(equal_height=False):
                with gr.Column():
                    image = gr.Image(
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "webcam", "clipboard"],
                        label="Image",
                        elem_id="image",
                    )
                    top_k = gr.Slider(
                        1,
                        MAX_CLASSES_SHOWN,
                        value=min(settings.top_k, MAX_CLASSES_SHOWN),
                        step=1,
                        label="Classes to show",
                        elem_id="top-k",
                    )
                    submit = gr.Button("Classify", variant="primary", elem_id="classify")
                with gr.Column():
                    label = gr.Label(label="Top classes", elem_id="top-classes")
                    timing = gr.Markdown(elem_id="inference-time")
                    # Issue 17: where the model looked, for the top class or another one of the result.
                    with gr.Row(equal_height=True):
                        target = gr.Dropdown(
                            choices=[],
                            value=None,
                            allow_custom_value=True,
                            label="Class to explain",
                            elem_id="explain-target",
                            scale=3,
                        )
                        show = gr.Button("Show where it looked", elem_id="explain", scale=1)
                    # What the explain event and its MCP tool read: any label or index, not only the picker's
                    target_text = gr.Textbox(visible=False, label="Class to explain (label or index)")
                    heatmap = gr.Image(
                        type="pil",
                        format="png",
                        interactive=False,
                        label="Where it looked",
                        elem_id="heatmap",
                    )
                    caption = gr.Markdown(elem_id="explain-legend")
                    explained = gr.JSON(visible=False, label="Explanation", elem_id="explain-data")
            picked = gr.Examples(
                [[str(path)] for path in examples],
                inputs=[image],
                label="Examples (click one to classify it)",
                cache_examples=False,
                examples_per_page=24,
                api_visibility="private",
            )
        bulk_tab(service, page_error)
        # Private: page furniture, not a tool for API or MCP clients.
        page.load(lambda: model_summary(service), None, summary, api_visibility="private", queue=False)
        outputs = [label, timing]
        submit.click(classify, [image, top_k], outputs, api_name="classify", preprocess=False)
        picked.load_input_event.then(
            classify, [image, top_k], outputs, preprocess=False, api_visibility="private"
        )
        label.change(explainable, label, [target, heatmap, caption], api_visibility="private", queue=False)
        target.change(lambda value: value or "", target, target_text, api_visibility="private", queue=False)
        explain_outputs = [heatmap, caption, explained]
        show.click(explain, [image, target_text], explain_outputs, api_name="explain", preprocess=False)
    return page
