"""vit-space: a self-hosted image-classification Space (Vision Transformer, Gradio UI, HTTP API)."""

__version__ = "0.1.0"
