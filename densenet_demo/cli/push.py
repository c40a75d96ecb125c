"""``push``: a fine-tuned run to a Hugging Face Hub repository, with its model card.

Signed in as this machine's Hugging Face user (``HF_TOKEN``, or ``hf auth login``) unless ``--token`` gives
another token. The run itself is only read: a push that fails leaves it as it was.
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import EXIT_OK, EXIT_PARTIAL, UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="push a fine-tuned run to the Hugging Face Hub, with a model card")
    p.add_argument("run", metavar="RUN", help="run:<run-id> or a checkpoint folder")
    p.add_argument("--repo", required=True, metavar="USER/NAME", help="the repository (NAME alone: under your user)")
    p.add_argument("--private", action="store_true", help="make a new repository private (an existing one keeps its)")
    p.add_argument(
        "--token",
        default=None,
        help="a Hugging Face token with write access (default: HF_TOKEN, else the `hf auth login` one); "
        "prefer HF_TOKEN: a token on the command line shows in the shell's history",
    )
    p.add_argument("--license", default=None, help="the model card's license (default: mit)")
    p.add_argument("--onnx", action="store_true", help="also upload model.onnx (exported and checked first)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..serving.export import ExportError
    from ..serving.hub import HubPushError, push_to_hub
    from ..serving.model_card import DEFAULT_LICENSE
    from ..weights.checkpoints import CheckpointError

    token = args.token or os.environ.get("HF_TOKEN") or None
    try:
        result = push_to_hub(
            args.run,
            args.repo,
            token=token,
            private=args.private,
            license=args.license or DEFAULT_LICENSE,
            onnx=args.onnx,
        )
    except (ValueError, CheckpointError) as e:
        raise UsageError(str(e)) from None
    except (HubPushError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PARTIAL
    what = "created" if result.created else "updated"
    visibility = {True: "private", False: "public", None: "visibility unchanged"}[result.private]
    print(result.url)
    print(
        f"{what} {result.repo_id} ({visibility}) as {result.user}: {', '.join(result.files)}; commit "
        f"{result.commit[:7]}, {result.seconds:.1f} s",
        file=sys.stderr,
    )
    print(f"load it: python -m densenet_demo predict IMAGE --model hf-hub:{result.repo_id}", file=sys.stderr)
    return EXIT_OK
