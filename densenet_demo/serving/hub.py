"""A fine-tuned run as a Hugging Face Hub repository: the folder (``export_hub``) and its upload (``push_to_hub``).

``export_hub("run:<id>", out)`` writes what a push uploads: ``model.safetensors`` (the weights alone: no pickle,
and none of the run's own record, which may name paths on this machine), ``config.json`` (``weights/hub.py``
describes it), ``README.md`` (the model card, ``model_card.py``), the validation confusion matrix as a PNG, and
optionally ``model.onnx``. ``predict --model OUT`` loads the folder as it is.

``push_to_hub`` makes that folder in a temporary place and uploads it with one commit, signed in with the token
it is given: the visitor's own (on a Space, their OAuth token) or, where the caller passes None, this machine's
sign-in (``HF_TOKEN`` or ``hf auth login``). It only reads the run: a push that fails at any step leaves the run
as it was, and says why in one sentence (``HubPushError``). A repository that exists and holds something other
than a model of this project is never overwritten.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..weights import checkpoints
from ..weights import resolver as W
from ..weights.hub import (
    HUB_CONFIG,
    HUB_WEIGHTS,
    HubRef,
    fetch_file,
    hub_config,
    hub_endpoint,
    network_errors,
    parse_hub_ref,
)
from .model_card import CONFUSION_IMAGE, DEFAULT_LICENSE, model_card

__all__ = ["HubFolder", "HubPushError", "PushResult", "export_hub", "push_to_hub"]

logger = logging.getLogger(__name__)

README = "README.md"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class HubFolder:
    """What ``export_hub`` wrote."""

    folder: Path
    files: tuple[str, ...]  # in the folder, in upload order (the card last)
    run_id: str
    val_acc: float | None


def export_hub(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    onnx: bool = False,
) -> HubFolder:
    """Write the Hub-format folder of ``run`` (``run:<id>`` or a checkpoint folder) into ``out``.

    ``repo_id``: the repository the card's snippets name (None: ``USER/NAME``, to replace). ``out`` must be new,
    empty, or an earlier Hub export (its files are replaced, each atomically). Raises ``ValueError`` for a model
    that is not a fine-tuned run, ``CheckpointError`` for a broken one, ``ExportError`` for a failed ONNX export.
    """
    folder = _run_folder(run)
    out = Path(out)
    _check_out(out)
    net, info = checkpoints.load_checkpoint(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    confusion = _confusion_png(info)
    files = [HUB_WEIGHTS, HUB_CONFIG, *([CONFUSION_IMAGE] if confusion else []), *([ONNX_FILE] if onnx else [])]
    files.append(README)
    metrics = {k: info.metrics[k] for k in ("val_acc", "val_loss", "epoch", "n_train", "n_val") if k in info.metrics}
    about = {"run_id": info.run_id, "created_at": info.created_at, "metrics": metrics}
    config = hub_config(info.config, info.class_names, info.preprocessing, **about)
    card = model_card(
        info,
        repo_id=repo_id,
        license=license,
        has_confusion_image=confusion is not None,
        params=sum(p.numel() for p in net.parameters()),
        files=files,
    )
    out.mkdir(parents=True, exist_ok=True)
    write = checkpoints.atomic_write
    write(out / HUB_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    write(out / HUB_CONFIG, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"))
    if confusion:
        write(out / CONFUSION_IMAGE, lambda tmp: tmp.write_bytes(confusion))
    if onnx:
        from .export import export_onnx

        export_onnx(str(folder), out=out / ONNX_FILE)
        (out / ONNX_FILE).with_suffix(".zip").unlink(missing_ok=True)  # the ONNX bundle's zip: not for the Hub
    write(out / README, lambda tmp: tmp.write_text(card, encoding="utf-8"))
    acc = info.metrics.get("val_acc")
    return HubFolder(out, tuple(files), info.run_id, float(acc) if isinstance(acc, (int, float)) else None)


def _run_folder(run: str | os.PathLike) -> Path:
    spec = W.resolve(str(run))
    if spec.kind != "checkpoint":
        raise ValueError(
            f"{str(run)[:100]!r} is not a fine-tuned run: give run:<run-id> or a checkpoint folder "
            "(the Hub format is for the runs this project trains)"
        )
    if not (spec.path / checkpoints.CHECKPOINT_WEIGHTS).is_file():
        raise checkpoints.CheckpointError(f"no run {spec.path.name}: nothing to export (see the runs with 'train')")
    return spec.path


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder for the Hub export")
    if out.is_dir() and any(out.iterdir()) and not (out / HUB_CONFIG).is_file():
        raise ValueError(f"{out} is not empty; give a new folder (or an earlier Hub export, to replace it)")


def _confusion_png(info: checkpoints.CheckpointInfo) -> bytes | None:
    matrix = info.metrics.get("confusion_matrix")
    if not matrix or len(matrix) != len(info.class_names):
        return None
    from ..plots import confusion_matrix_figure

    buffer = io.BytesIO()
    confusion_matrix_figure(matrix, info.class_names).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Push


class HubPushError(RuntimeError):
    """A push that could not be made; the message says why in one sentence. The run is unchanged."""


@dataclass(frozen=True)
class PushResult:
    """Where a run went."""

    repo_id: str
    url: str  # the repository's page
    commit: str
    user: str  # who pushed (whose token)
    created: bool  # a new repository, or a new commit to an earlier push
    private: bool | None  # of a new repository; an existing one keeps its own
    files: tuple[str, ...]
    seconds: float


def push_to_hub(
    run: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None,
    private: bool,
    license: str = DEFAULT_LICENSE,
    onnx: bool = False,
) -> PushResult:
    """Upload ``run``'s Hub-format folder to ``repo_id`` (``USER/NAME``, or ``NAME`` under the signed-in user).

    ``token``: whose account pushes; None means this machine's sign-in (never pass None for a visitor of a
    shared server). ``private`` applies to a repository this push creates. Raises ``HubPushError``.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    start = time.perf_counter()
    _run_folder(run)  # a run that does not exist is said before anything goes over the network
    api = HfApi(endpoint=hub_endpoint())
    step = "sign-in"
    try:
        who = api.whoami(token=token)
        user, orgs = str(who["name"]), [str(o.get("name")) for o in who.get("orgs") or []]
        repo_id = _full_repo_id(repo_id, user, orgs)
        step = "check"
        existing = _existing_repo(api, repo_id, token)
        with tempfile.TemporaryDirectory(prefix="densenet_demo_hub_") as tmp:
            step = "export"
            folder = export_hub(run, tmp, repo_id=repo_id, license=license, onnx=onnx)
            if existing is None:
                step = "create"
                api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            step = "commit"
            acc = f", validation accuracy {folder.val_acc:.1%}" if folder.val_acc is not None else ""
            commit = api.create_commit(
                repo_id,
                [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(Path(tmp) / name)) for name in folder.files],
                commit_message=f"densenet_demo run {folder.run_id}{acc}",
                token=token,
            )
    except LocalTokenNotFoundError:
        raise HubPushError(
            "not signed in to Hugging Face: sign in (the button above), set HF_TOKEN, pass --token, or run "
            "`hf auth login`; the run is unchanged"
        ) from None
    except network_errors() as e:
        raise HubPushError(
            f"cannot reach the Hugging Face Hub ({hub_endpoint()}): check the network connection and try again; "
            f"nothing {'more ' if step == 'commit' else ''}was pushed and the run is unchanged ({type(e).__name__})"
        ) from None
    except HfHubHTTPError as e:
        raise HubPushError(_push_refused(e, step, repo_id)) from None
    logger.info("pushed run %s to %s as %s (%s)", folder.run_id, repo_id, user, commit.oid)
    return PushResult(
        repo_id=repo_id,
        url=f"{hub_endpoint()}/{repo_id}",
        commit=commit.oid,
        user=user,
        created=existing is None,
        private=private if existing is None else None,
        files=folder.files,
        seconds=time.perf_counter() - start,
    )


def _full_repo_id(repo_id: str, user: str, orgs: list[str]) -> str:
    """``NAME`` -> ``user/NAME``; refuse a namespace that is neither the user's nor one of their organisations'."""
    text = repo_id.strip().removeprefix("https://huggingface.co/").removeprefix("hf-hub:").strip("/")
    if text and "/" not in text:
        text = f"{user}/{text}"
    try:
        ref = parse_hub_ref(text)
    except ValueError as e:
        raise HubPushError(str(e)) from None
    if ref.revision:
        raise HubPushError(f"give the repository as USER/NAME, without '@{ref.revision}'")
    namespace = ref.repo_id.split("/")[0]
    if namespace != user and namespace not in orgs:
        raise HubPushError(
            f"'{ref.repo_id}' belongs to someone else: you are signed in as {user}, so push to {user}/"
            f"{ref.repo_id.split('/')[1]}" + (f" or under {', '.join(orgs)}" if orgs else "")
        )
    return ref.repo_id


def _existing_repo(api: Any, repo_id: str, token: str | None) -> Any | None:
    """The repository's info when it exists; ``HubPushError`` when it holds something other than our model."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = api.model_info(repo_id, token=token)
    except RepositoryNotFoundError:
        return None
    files = {s.rfilename for s in info.siblings or []}
    ours = False
    if HUB_CONFIG in files:
        try:
            path = fetch_file(HubRef(repo_id, info.sha), HUB_CONFIG, token)
            ours = "densenet_demo" in json.loads(path.read_text(encoding="utf-8"))
        except (checkpoints.CheckpointError, ValueError, TypeError):
            ours = False
    if not ours and files - {".gitattributes"}:
        raise HubPushError(
            f"{repo_id} already exists and holds something other than a densenet_demo model; it was left as it "
            "is: choose another repository name"
        )
    return info


def _push_refused(error: Exception, step: str, repo_id: str) -> str:
    """One plain sentence for the Hub's refusal at ``step``."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    namespace = repo_id.split("/")[0] if "/" in repo_id else repo_id
    if status == 401:
        return "Hugging Face did not accept the sign-in (expired or revoked): sign in again; the run is unchanged"
    if status == 403 and step == "create":
        return f"you may not create repositories under '{namespace}' with this sign-in; push under your own name"
    if status == 403:
        return (
            f"you may not write to {repo_id} with this sign-in (a Space's sign-in may write only to repositories it "
            "created): choose a new repository name"
        )
    if status == 429:
        return "the Hub asks to slow down (too many requests): try again in a minute; the run is unchanged"
    if status is not None and status >= 500:
        return f"the Hub had a problem (HTTP {status}) during the {step}: try again later; the run is unchanged"
    return f"the Hub refused the {step} (HTTP {status}): {str(error).splitlines()[0][:200]}; the run is unchanged"
