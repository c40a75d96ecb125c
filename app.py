"""Entry point for Hugging Face Spaces and for `python app.py`: build the UI and launch it."""

from densenet_demo.ui import build_app, launch

demo = build_app()

if __name__ == "__main__":
    launch(demo)
