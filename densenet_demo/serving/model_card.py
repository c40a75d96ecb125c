"""The model card (``README.md``) of a run pushed to the Hugging Face Hub.

Front matter that ``huggingface_hub.ModelCard`` reads (built with its ``ModelCardData``, so the Hub parses it as
its own): ``library_name``, ``tags`` (``image-classification``, ``densenet``, ...), ``license``, ``pipeline_tag``
and the validation accuracy as a ``model-index`` result. The text says what was trained on what (class names and
image counts, the dataset's name, never a server path), with which settings, how well per class, and how to load
the model with this project and with PyTorch alone. Everything comes from the checkpoint's own record.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from ..weights.checkpoints import CheckpointInfo
from ..weights.hub import HUB_PREFIX

__all__ = ["CONFUSION_IMAGE", "DEFAULT_LICENSE", "model_card", "torchvision_compatible"]

CONFUSION_IMAGE = "confusion_matrix.png"
DEFAULT_LICENSE = "mit"  # this project's; the person pushing chooses another where their data asks for it
PAPER = "https://arxiv.org/abs/1608.06993"
# The training settings the card lists, in this order, with the words it uses for them.
_SETTINGS = {
    "mode": "mode",
    "recipe": "recipe",
    "epochs": "epochs",
    "time_budget_s": "time budget (s)",
    "batch_size": "batch size",
    "optimizer": "optimizer",
    "lr": "learning rate (head)",
    "backbone_lr_factor": "backbone lr factor (finetune)",
    "schedule": "lr schedule",
    "warmup": "warmup (share of the run)",
    "weight_decay": "weight decay",
    "label_smoothing": "label smoothing",
    "bn_recalibration": "BatchNorm recalibration batches",
    "image_size": "image size",
    "augment": "augmentation",
    "val_fraction": "validation share",
    "early_stopping_patience": "early stopping patience",
    "seed": "seed",
}

# How to load it with torchvision alone; a test runs this snippet against the project's own predictions.
TORCHVISION_SNIPPET = """\
import json, sys
import torch
from huggingface_hub import hf_hub_download
from PIL import Image, ImageOps
from safetensors.torch import load_file
from torchvision.models import DenseNet
from torchvision.transforms import v2 as T

repo = "{repo_id}"
cfg = json.load(open(hf_hub_download(repo, "config.json")))
model = DenseNet(
    growth_rate=cfg["growth_rate"], block_config=tuple(cfg["block_config"]),
    num_init_features=cfg["num_init_features"], bn_size=cfg["bn_size"], num_classes=cfg["num_classes"],
)
model.load_state_dict(load_file(hf_hub_download(repo, "model.safetensors")))
model.eval()
p = cfg["pretrained_cfg"]
preprocess = T.Compose([
    T.Resize(p["resize_size"]), T.CenterCrop(p["input_size"][1:]),
    T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(p["mean"], p["std"]),
])
image = ImageOps.exif_transpose(Image.open(sys.argv[1])).convert(p["color_mode"])
with torch.no_grad():
    probs = model(preprocess(image)[None]).softmax(1)[0]
for i in probs.argsort(descending=True)[:5].tolist():
    print(f"{{probs[i]:.2%}}  {{cfg['label_names'][i]}}")
"""

PROJECT_SNIPPET = """\
from densenet_demo.serving.predict import get_predictor

predictor = get_predictor("hf-hub:{repo_id}")
for label, p in predictor.predict(["photo.jpg"], top_k=5)[0].labels:
    print(f"{{p:.2%}}  {{label}}")
"""

DENSENET_DEMO_MODEL_SNIPPET = """\
import json
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from densenet_demo.config import DenseNetConfig
from densenet_demo.model import DenseNet  # plain torch.nn, torchvision's module names

repo = "{repo_id}"
cfg = json.load(open(hf_hub_download(repo, "config.json")))
fields = DenseNetConfig.__dataclass_fields__
model = DenseNet(DenseNetConfig(**{{k: v for k, v in cfg.items() if k in fields}}))
model.load_state_dict(load_file(hf_hub_download(repo, "model.safetensors")))
model.eval()  # preprocess as config.json's pretrained_cfg says (resize_size, centre crop, mean, std)
"""


def torchvision_compatible(info: CheckpointInfo) -> str | None:
    """None when ``torchvision.models.DenseNet`` builds this architecture; else why it cannot, for people."""
    cfg = info.config
    reasons = []
    if cfg.stem != "imagenet":
        reasons.append("a CIFAR stem of one 3x3 convolution")
    if cfg.bn_size == 0:
        reasons.append("no bottleneck")
    if cfg.compression != 0.5:
        reasons.append(f"compression θ = {cfg.compression:g}")
    if cfg.in_channels != 3:
        reasons.append("grayscale input")
    return ", ".join(reasons) if reasons else None


def model_card(
    info: CheckpointInfo,
    *,
    repo_id: str | None,
    license: str = DEFAULT_LICENSE,
    has_confusion_image: bool,
    params: int,
    files: list[str],
) -> str:
    """The README.md of the run in ``info`` as the Hub repository ``repo_id`` (None: not chosen yet)."""
    from huggingface_hub import ModelCardData
    from huggingface_hub.repocard_data import EvalResult

    repo = repo_id or "USER/NAME"
    name = repo_id.split("/")[-1] if repo_id else info.run_id
    acc = info.metrics.get("val_acc")
    data = ModelCardData(
        library_name="densenet_demo",
        license=license,
        pipeline_tag="image-classification",
        tags=["image-classification", "densenet", "pytorch", "safetensors", "densenet_demo"],
        model_name=name,
        eval_results=[
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type="imagefolder",
                dataset_name=_dataset_name(info) or "own images",
                dataset_split="validation",
                metric_type="accuracy",
                metric_value=round(float(acc), 4),
                metric_name="Validation accuracy (top-1)",
            )
        ]
        if isinstance(acc, (int, float))
        else None,
    )
    sections = [
        f"---\n{data.to_yaml()}\n---\n",
        _summary(info, name, params),
        _data_section(info, has_confusion_image),
        _settings_section(info),
        _usage_section(info, repo, repo_id is None),
        "## Files\n\n" + "\n".join(f"- `{f}`: {_FILE_ROLES.get(f, '')}" for f in files) + "\n",
    ]
    return "\n".join(sections)


_FILE_ROLES = {
    "model.safetensors": "the weights (safetensors: tensors only, torchvision's DenseNet names)",
    "config.json": "the architecture (DenseNetConfig fields), `label_names` in output order, and the "
    "preprocessing in `pretrained_cfg` (timm's field names, plus `resize_size` and `color_mode`)",
    "README.md": "this card",
    CONFUSION_IMAGE: "the validation confusion matrix",
    "model.onnx": "the same network as ONNX (any batch size; checked against PyTorch when exported)",
}


def _summary(info: CheckpointInfo, name: str, params: int) -> str:
    cfg, p = info.config, info.preprocessing
    train = info.extra.get("train_config") or {}
    names = ", ".join(f"`{n}`" for n in info.class_names)
    how = "Trained from scratch" if train.get("mode") == "scratch" else "Fine-tuned"
    lines = [
        f"# {name}\n",
        f"A {cfg.variant} ([Huang et al., 2017]({PAPER})) that tells apart {len(info.class_names)} classes: {names}. "
        f"{how} with densenet_demo, in its web app or on its command line.\n",
        "| | |",
        "|---|---|",
    ]
    acc = info.metrics.get("val_acc")
    if isinstance(acc, (int, float)):
        n_val = info.metrics.get("n_val")
        right = f" ({round(acc * n_val)} of {n_val} images)" if isinstance(n_val, int) else ""
        epoch = info.metrics.get("epoch")
        lines.append(
            f"| Validation accuracy (top-1) | **{acc:.1%}**{right}" + (f", epoch {epoch}" if epoch else "") + " |"
        )
    model = _shown(train.get("model")) or cfg.variant
    blocks = "-".join(map(str, cfg.block_config))
    lines += [
        f"| Architecture | `{model}`: growth rate k = {cfg.growth_rate}, blocks {blocks}, {cfg.stem} stem, "
        f"bottleneck {cfg.bn_size}·k, compression θ = {cfg.compression:g}; {params:,} parameters |",
        f"| Started from | {_shown(info.extra.get('initial_weights')) or 'not recorded'} |",
        f"| Input | {p.image_size}x{p.image_size} {p.mode} centre crop after resizing the shorter side to "
        f"{p.resize_size} (bilinear); mean {list(p.mean)}, std {list(p.std)} |",
    ]
    if info.created_at:
        lines.append(f"| Saved | {info.created_at} |")
    return "\n".join(lines) + "\n"


def _data_section(info: CheckpointInfo, has_confusion_image: bool) -> str:
    dataset = info.extra.get("dataset") or {}
    counts = dataset.get("counts") if isinstance(dataset.get("counts"), dict) else {}
    per_class = info.metrics.get("per_class_val_acc") or {}
    confusion = info.metrics.get("confusion_matrix") or []
    n_val = [sum(row) for row in confusion] if len(confusion) == len(info.class_names) else []
    total = sum(v for v in counts.values() if isinstance(v, int))
    name = _dataset_name(info)
    source = f" from `{name}`" if name else ""
    lines = ["## Training data and results\n"]
    if total:
        lines.append(f"{total} images in {len(info.class_names)} classes{source} (the images are not published).\n")
    lines += ["| class | images | validation images | validation accuracy |", "|---|---:|---:|---:|"]
    for i, cls in enumerate(info.class_names):
        acc = per_class.get(cls)
        shown_acc = f"{acc:.1%}" if isinstance(acc, (int, float)) else "–"
        val = str(n_val[i]) if n_val else "–"
        lines.append(f"| {cls} | {counts.get(cls, '–')} | {val} | {shown_acc} |")
    if has_confusion_image:
        lines.append(f"\n![Validation confusion matrix: rows are the true classes]({CONFUSION_IMAGE})")
    return "\n".join(lines) + "\n"


def _settings_section(info: CheckpointInfo) -> str:
    train = info.extra.get("train_config") or {}
    rows = [(label, train.get(key)) for key, label in _SETTINGS.items() if train.get(key) not in (None, "")]
    if not rows:
        return ""
    lines = ["## Settings\n", "| setting | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    return "\n".join(lines) + "\n"


def _usage_section(info: CheckpointInfo, repo: str, placeholder: bool) -> str:
    note = " (replace USER/NAME with the repository this folder is pushed to)" if placeholder else ""
    lines = [
        "## How to use it\n",
        f"### With densenet_demo{note}\n",
        "```bash",
        f"python -m densenet_demo predict photo.jpg --model hf-hub:{repo}",
        "```\n",
        "```python",
        PROJECT_SNIPPET.format(repo_id=repo) + "```\n",
        f"In the app, type `{repo}` under **Load from the Hugging Face Hub** in the Predict tab.\n",
        "### With PyTorch alone\n",
    ]
    why_not = torchvision_compatible(info)
    if why_not is None:
        lines += [
            "torchvision's `DenseNet` builds this architecture, and the weights load into it as they are. "
            "`pip install torch torchvision safetensors huggingface_hub pillow`, then `python classify.py "
            "photo.jpg` with `classify.py`:\n",
            "```python",
            TORCHVISION_SNIPPET.format(repo_id=repo) + "```",
        ]
    else:
        lines += [
            f"torchvision's `DenseNet` has no option for this architecture ({why_not}). The weights use "
            "torchvision's module names; build the network with densenet_demo's `DenseNet` (one file of plain "
            "`torch.nn`):\n",
            "```python",
            DENSENET_DEMO_MODEL_SNIPPET.format(repo_id=repo) + "```",
        ]
    return "\n".join(lines) + "\n"


def _dataset_name(info: CheckpointInfo) -> str:
    """The dataset's name (a folder's or zip's last name), never the path it had on the training machine."""
    source = str((info.extra.get("dataset") or {}).get("source") or "")
    if not source:
        return ""
    if source.startswith("the built-in example"):
        return "the built-in example dataset"
    name = PurePath(source.replace("\\", "/").rstrip("/")).name
    return name.removesuffix(".zip") or name


def _shown(value: Any) -> str:
    """A model or weights setting as people should see it: names stay, a path becomes its last name."""
    if not isinstance(value, str) or not value:
        return ""
    if value.startswith((HUB_PREFIX, "run:", "Hub ")):  # a Hub repository's USER/NAME is a name, not a path
        return value
    if "/" in value or "\\" in value:
        return PurePath(value.replace("\\", "/").rstrip("/")).name
    return value
