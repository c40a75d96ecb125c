"""Entry point for Hugging Face Spaces and for `python app.py`: build the UI and launch it."""

# First: on a ZeroGPU Space this imports `spaces`, which must come before anything initialises CUDA.
from densenet_demo.hosting import gpu  # noqa: F401, I001
from densenet_demo.ui import build_app, launch

demo = build_app()

if __name__ == "__main__":
    launch(demo)
