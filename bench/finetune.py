"""Fine-tuning benchmarks: the linear-mode feature cache, memory-efficient training steps, the example dataset,
and (on CUDA) mixed precision + channels_last.

    python bench/finetune.py [--sections linear_cache,memory_efficient_step,example_dataset,gpu]

Prints one JSON object with a section each:

- ``linear_cache``: the same linear-mode run (DenseNet-121 at 224, random weights, the example images, no
  augmentation), 10 epochs, with the feature cache vs the frozen backbone run on every batch of every epoch.
- ``memory_efficient_step``: one training step of DenseNet-121 (batch 16, 224, SGD) with ours
  ``memory_efficient`` off and on and torchvision's ``memory_efficient=True``, each in a fresh subprocess:
  seconds per step (median of the steps after a warm-up) and peak memory of the step (on the CPU: the peak
  RSS minus the RSS before the first step, from a second run with glibc's mmap threshold at 64 KiB so that RSS
  follows the live tensors; on CUDA, peak allocated minus allocated before the first step).
- ``example_dataset``: ``example_config()`` on ``examples.make_example_dataset()``: seconds to reach 90%
  validation accuracy, from building the model to the end of that epoch.
- ``gpu`` (CUDA only; null on the CPU): DenseNet-121 at 224, training images/s of fp32 eager (TF32 off, and
  PyTorch's default TF32 convolutions) vs bf16 autocast + channels_last; peak CUDA memory of a step with
  memory_efficient off and on; the trainer run once on CUDA (bf16, and fp16 with loss scaling).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densenet_demo.config import PRESETS  # noqa: E402
from densenet_demo.data import datasets as data  # noqa: E402
from densenet_demo.data import examples  # noqa: E402
from densenet_demo.model import DenseNet  # noqa: E402
from densenet_demo.training.config import TrainConfig, example_config  # noqa: E402
from densenet_demo.training.events import EpochEnd, Finished, Started, Step  # noqa: E402
from densenet_demo.training.loop import Trainer  # noqa: E402

SECTIONS = ("linear_cache", "memory_efficient_step", "example_dataset", "gpu")
STEP_VARIANTS = ("ours_off", "ours_on", "torchvision_memory_efficient")


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _run_to_end(config: TrainConfig, files: data.LabeledFiles, out_dir: Path) -> tuple[list, float]:
    start = time.perf_counter()
    events = list(Trainer(config, files, out_dir=out_dir).run())
    if not isinstance(events[-1], Finished):
        raise RuntimeError(f"training did not finish: {events[-1].to_dict()}")
    return events, time.perf_counter() - start


def bench_linear_cache(workdir: Path, epochs: int, per_class: int, image_size: int) -> dict:
    files, _ = data.load_image_folder(examples.make_example_dataset(workdir / "linear", n_per_class=per_class))
    runs = {}
    for name, cached, n in (("warm-up", True, 1), ("cached", True, epochs), ("uncached", False, epochs)):
        # The warm-up run pays for first-use costs (CUDA context, cuDNN autotuning, kernels) that the first
        # timed run would otherwise pay alone.
        config = TrainConfig(
            model="densenet121", weights="random", mode="linear", epochs=n, batch_size=32,
            image_size=image_size, augment=False, cache_features=cached, device=str(_device()),
        )  # fmt: skip
        events, seconds = _run_to_end(config, files, workdir / f"linear_{name}")
        runs[name] = {"seconds": round(seconds, 2), "val_acc": events[-1].best_val_acc}
    return {
        "model": "densenet121",
        "image_size": image_size,
        "epochs": epochs,
        "images": per_class * len(examples.EXAMPLE_CLASSES),
        "cached_s": runs["cached"]["seconds"],
        "uncached_s": runs["uncached"]["seconds"],
        "speedup": round(runs["uncached"]["seconds"] / runs["cached"]["seconds"], 2),
        "same_val_acc": runs["cached"]["val_acc"] == runs["uncached"]["val_acc"],
        "goal_speedup": 5.0,
    }


def _step_child(variant: str, device_name: str, batch: int, size: int, steps: int, amp: bool) -> dict:
    """Runs in a fresh process: build one DenseNet-121, then time training steps and measure their peak memory."""
    device = torch.device(device_name)
    torch.manual_seed(0)
    if variant == "torchvision_memory_efficient":
        import torchvision

        model = torchvision.models.densenet121(weights=None, memory_efficient=True)
    else:
        model = DenseNet(PRESETS["densenet121"].config.replace(memory_efficient=variant == "ours_on"))
    memory_format = torch.channels_last if amp else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch,), device=device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    before_rss = _rss_kib(reset_peak=True)
    times, saved = [], {}
    for i in range(steps + 1):  # the first step is the warm-up; it also counts what autograd keeps
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp), _saved_tensors(saved, i == 0):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak_rss = _peak_rss_kib()
    result = {
        "seconds": round(statistics.median(times[1:]), 4),
        "step_peak_rss_mb": round((peak_rss - before_rss) / 1024, 1),
        "peak_rss_mb": round(peak_rss / 1024, 1),
        "saved_for_backward_mb": round(sum(saved.values()) / 2**20, 1),
    }
    if cuda:
        result["step_peak_cuda_mb"] = round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)
        result["images_per_s"] = round(batch / statistics.median(times[1:]), 1)
    return result


def _rss_kib(reset_peak: bool = False) -> int:
    """This process's resident memory now; with ``reset_peak``, its peak (VmHWM) starts again from here.

    ``ru_maxrss`` would not do: Linux carries it over from the parent that started this process.
    """
    if reset_peak:
        Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_kib("VmRSS")


def _peak_rss_kib() -> int:
    return _proc_status_kib("VmHWM")


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _saved_tensors(storages: dict[int, int], enabled: bool):
    """Record the storages autograd keeps for backward (checkpointed layers keep none): exact, unlike RSS."""
    if not enabled:
        return contextlib.nullcontext()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


# For the CPU memory figure: glibc then maps every allocation over 64 KiB on its own and unmaps it when freed,
# so RSS follows the live tensors and its peak is theirs (with the default, freed blocks stay in the heap and
# the peak depends on fragmentation: ±20% between identical runs). It slows the step down, so the time comes
# from a run without it.
_RSS_FOLLOWS_TENSORS = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _in_subprocess(
    variant: str, device: str, batch: int, size: int, steps: int, amp: bool = False, env: dict | None = None
) -> dict:
    command = [sys.executable, __file__, "--step-child", variant, "--device", device, "--batch", str(batch)]
    command += ["--size", str(size), "--steps", str(steps)] + (["--amp"] if amp else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory_efficient_step(batch: int, size: int, steps: int, rounds: int) -> dict:
    """Each variant ``rounds`` times, interleaved (so that a busy moment hits them all alike); medians reported."""
    device = str(_device())
    runs: dict[str, list[dict]] = {variant: [] for variant in STEP_VARIANTS}
    for _ in range(rounds):
        for variant in STEP_VARIANTS:
            measured = _in_subprocess(variant, device, batch, size, steps)
            if device == "cpu" and "error" not in measured:
                memory = _in_subprocess(variant, device, batch, size, 1, env=_RSS_FOLLOWS_TENSORS)
                measured["step_peak_rss_mb"] = memory.get("step_peak_rss_mb")
            runs[variant].append(measured)
    key = "step_peak_cuda_mb" if device == "cuda" else "step_peak_rss_mb"
    results = {}
    for variant, measured in runs.items():
        good = [m for m in measured if "error" not in m]
        if not good:
            results[variant] = measured[0]
            continue
        results[variant] = {
            "seconds": round(statistics.median(m["seconds"] for m in good), 3),
            key: round(statistics.median(m[key] for m in good), 1),
            "saved_for_backward_mb": good[0]["saved_for_backward_mb"],
            "seconds_per_round": [m["seconds"] for m in good],
            f"{key}_per_round": [m[key] for m in good],
        }
    ours, theirs = results["ours_on"], results["torchvision_memory_efficient"]
    comparable = key in ours and key in theirs
    return {
        "device": device,
        "batch": batch,
        "image_size": size,
        "timed_steps_per_round": steps,
        "rounds": rounds,
        **results,
        "ours_on_vs_torchvision_time": round(ours["seconds"] / theirs["seconds"], 3) if comparable else None,
        "ours_on_vs_torchvision_memory": round(ours[key] / theirs[key], 3) if comparable else None,
        "ours_on_vs_torchvision_saved_for_backward": (
            round(ours["saved_for_backward_mb"] / theirs["saved_for_backward_mb"], 3) if comparable else None
        ),
        "goal": "ours_on peak memory <= torchvision's, at <= 1.1x its time",
    }


def bench_example_dataset(workdir: Path, device: str | None = None) -> dict:
    config = example_config(**({"device": device} if device else {}))
    files, report = data.load_image_folder(examples.make_example_dataset(workdir / "example"))
    trainer = Trainer(config, files, report=report, out_dir=workdir / "example_run")
    start, reached, history, first = time.perf_counter(), None, [], None
    for event in trainer.run():
        if isinstance(event, Started):
            first = event
        if isinstance(event, EpochEnd):
            history.append(round(event.val_acc, 4))
            if reached is None and event.val_acc >= 0.9:
                reached = {"seconds": round(time.perf_counter() - start, 2), "epoch": event.epoch}
    if not isinstance(event, Finished):
        raise RuntimeError(f"training did not finish: {event.to_dict()}")
    return {
        "settings": {k: v for k, v in config.to_dict().items() if v is not None},
        "device": first.device,
        "amp": first.amp,
        "images": report.n_images,
        "seconds_to_90": reached["seconds"] if reached else None,
        "epoch_reached_90": reached["epoch"] if reached else None,
        "total_seconds": round(time.perf_counter() - start, 2),
        "best_val_acc": event.best_val_acc,
        "val_acc_per_epoch": history,
        "goal": "> 90% val accuracy within 60 s on a 2-core CPU",
    }


def _images_per_s(batch: int, size: int, steps: int, *, amp: bool, tf32: bool) -> float:
    device = torch.device("cuda")
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if amp else torch.contiguous_format
    model = DenseNet(PRESETS["densenet121"].config).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return round(batch * steps / (time.perf_counter() - start), 1)


def bench_gpu(workdir: Path, batch: int, size: int, steps: int) -> dict | None:
    if not torch.cuda.is_available():
        return None
    fp32 = _images_per_s(batch, size, steps, amp=False, tf32=False)
    tf32 = _images_per_s(batch, size, steps, amp=False, tf32=True)
    mixed = _images_per_s(batch, size, steps, amp=True, tf32=True)
    memory = {v: _in_subprocess(v, "cuda", batch, size, 3, amp=True) for v in STEP_VARIANTS}
    memory_fp32 = {v: _in_subprocess(v, "cuda", batch, size, 3) for v in ("ours_off", "ours_on")}
    files, _ = data.load_image_folder(examples.make_example_dataset(workdir / "gpu_example", n_per_class=50))
    trainer_runs = {}
    for amp in ("bf16", "fp16"):
        config = TrainConfig(
            model="densenet121", weights="random", mode="finetune", epochs=2, batch_size=32, image_size=224,
            amp=amp, device="cuda",
        )  # fmt: skip
        events, seconds = _run_to_end(config, files, workdir / f"gpu_{amp}")
        steps_seen = [e for e in events if isinstance(e, Step)]
        trainer_runs[amp] = {
            "amp": events[0].amp,
            "seconds": round(seconds, 2),
            "best_val_acc": events[-1].best_val_acc,
            "finite_losses": all(torch.isfinite(torch.tensor(s.loss)) for s in steps_seen),
            "peak_cuda_mb": round(max(s.gpu_memory_mb for s in steps_seen), 1),
        }
    return {
        "device": torch.cuda.get_device_name(),
        "batch": batch,
        "image_size": size,
        "train_images_per_s": {"fp32_eager": fp32, "tf32_eager_default": tf32, "bf16_channels_last": mixed},
        "speedup_vs_fp32": round(mixed / fp32, 2),
        "speedup_vs_tf32_default": round(mixed / tf32, 2),
        "goal_speedup": 2.5,
        "step_peak_cuda_mb_bf16_channels_last": {v: r.get("step_peak_cuda_mb", r) for v, r in memory.items()},
        "step_peak_cuda_mb_fp32": {v: r.get("step_peak_cuda_mb", r) for v, r in memory_fp32.items()},
        "example_dataset_on_cuda": bench_example_dataset(workdir / "gpu_quick", device="cuda"),
        "trainer_on_cuda": trainer_runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--linear-epochs", type=int, default=10)
    parser.add_argument("--linear-per-class", type=int, default=30, help="example images per class (4 classes)")
    parser.add_argument("--step-steps", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument("--step-rounds", type=int, default=3, help="fresh processes per variant, interleaved")
    parser.add_argument("--gpu-batch", type=int, default=64)
    # Internal: one step measurement in this fresh process.
    parser.add_argument("--step-child", choices=STEP_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_child:
        print(json.dumps(_step_child(args.step_child, args.device, args.batch, args.size, args.steps, args.amp)))
        return
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    result: dict = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "device": str(_device()),
        }
    }
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as scratch:
        workdir = Path(scratch)
        if "linear_cache" in sections:
            result["linear_cache"] = bench_linear_cache(workdir, args.linear_epochs, args.linear_per_class, 224)
        if "memory_efficient_step" in sections:
            result["memory_efficient_step"] = bench_memory_efficient_step(16, 224, args.step_steps, args.step_rounds)
        if "example_dataset" in sections:
            result["example_dataset"] = bench_example_dataset(workdir)
        if "gpu" in sections:
            result["gpu"] = bench_gpu(workdir, args.gpu_batch, 224, 20)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
