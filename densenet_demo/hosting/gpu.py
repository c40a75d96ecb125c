"""Where GPU work runs: in this process (a CUDA GPU when there is one, else the CPU), or, on a Hugging Face
ZeroGPU Space (``SPACES_ZERO_GPU`` set), inside ``@spaces.GPU`` calls.

On ZeroGPU the Space's own process has no GPU: a decorated call gets one for at most the duration it declares,
in a forked, daemonic worker; its arguments, its result and every value it yields are pickled across (so they
must be plain data and CPU tensors), and the worker cannot start processes of its own. ``run`` and ``stream``
hide the difference: elsewhere they simply call the function here, so local users and dedicated GPUs run
exactly the code they always ran. ``device()`` says where tensors go *now*: it is asked at work time, never
decided at import (outside a call ZeroGPU reports CUDA as available, though it is not).

``spaces`` is imported only on ZeroGPU, when this module is imported: ``app.py`` imports it first, before
anything can initialise CUDA. Nothing else imports ``spaces``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = [
    "CALL_SECONDS_ENV",
    "DEFAULT_CALL_SECONDS",
    "GPUUnavailable",
    "call_seconds",
    "can_start_processes",
    "deferred",
    "device",
    "explain",
    "has_gpu",
    "images_per_call",
    "prediction_seconds",
    "run",
    "stream",
    "zero_gpu",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

ZERO_GPU_ENV = "SPACES_ZERO_GPU"
CALL_SECONDS_ENV = "DENSENET_DEMO_GPU_CALL_S"
DEFAULT_CALL_SECONDS = 60  # ZeroGPU's own default duration; longer calls wait longer in its queue
# Prediction: a fixed part (the worker's start, the model built and moved to the GPU, its first kernels) plus a
# little per image (decoding on the worker's CPU, the forward pass, Grad-CAM).
PREDICTION_BASE_S = 15.0
PREDICTION_PER_IMAGE_S = 0.25


def zero_gpu() -> bool:
    """True on a ZeroGPU Space (the ``spaces`` package's own test of ``SPACES_ZERO_GPU``)."""
    return os.environ.get(ZERO_GPU_ENV, "").strip().lower() in ("1", "t", "true")


def call_seconds() -> int:
    """The longest GPU call the app makes, in seconds: ``DENSENET_DEMO_GPU_CALL_S`` (default 60)."""
    raw = os.environ.get(CALL_SECONDS_ENV, "").strip()
    try:
        value = int(raw) if raw else DEFAULT_CALL_SECONDS
    except ValueError:
        raise ValueError(f"{CALL_SECONDS_ENV} must be a whole number of seconds, got {raw!r}") from None
    if value < 5:
        raise ValueError(f"{CALL_SECONDS_ENV} must be at least 5 seconds, got {value}")
    return value


def prediction_seconds(n_images: int) -> int:
    """The duration a prediction call declares for ``n_images`` images (Grad-CAM included), at most the cap."""
    return min(call_seconds(), math.ceil(PREDICTION_BASE_S + PREDICTION_PER_IMAGE_S * max(1, n_images)))


def images_per_call() -> int:
    """How many images one prediction call may take within the cap (more are split over several calls)."""
    return max(1, int((call_seconds() - PREDICTION_BASE_S) / PREDICTION_PER_IMAGE_S))


_inside_call = False  # True in a ZeroGPU worker, while it runs the app's calls


def device() -> torch.device:
    """Where tensors go now: CUDA inside a ZeroGPU call or on a machine with a GPU; the CPU otherwise."""
    if zero_gpu() and not _inside_call:
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def has_gpu() -> bool:
    """Whether GPU work runs on a GPU: always on ZeroGPU (inside its calls), else when CUDA is available."""
    return zero_gpu() or torch.cuda.is_available()


def deferred() -> bool:
    """True in a ZeroGPU Space's own process, outside a call: there is no GPU here, only inside the calls."""
    return zero_gpu() and not _inside_call


def can_start_processes() -> bool:
    """False inside a ZeroGPU call: its worker is daemonic, so DataLoader workers cannot start."""
    return not (zero_gpu() and _inside_call)


class GPUUnavailable(RuntimeError):
    """ZeroGPU refused or lost a call; the message says what happened and what to do."""


def run(fn: Callable[..., T], *args: Any, seconds: float, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``: in a ZeroGPU call declaring ``seconds``, or here. ``fn`` must be module-level
    (it is pickled by reference); an exception it raises in the call is raised here, as it would be locally."""
    if _spaces_call is None:
        return fn(*args, **kwargs)
    with _plain_errors(seconds):
        result = _spaces_call(fn, args, kwargs, round(seconds))
    if isinstance(result, _Raised):
        raise result.error
    return result


def stream(fn: Callable[..., Iterator[T]], *args: Any, seconds: float, **kwargs: Any) -> Iterator[T]:
    """The values a generator ``fn`` yields, each as it comes: from a ZeroGPU call declaring ``seconds``, or here."""
    if _spaces_stream is None:
        yield from fn(*args, **kwargs)
        return
    with _plain_errors(seconds):
        for value in _spaces_stream(fn, args, kwargs, round(seconds)):
            if isinstance(value, _Raised):
                raise value.error
            yield value


# ---------------------------------------------------------------------------------------------
# Inside a ZeroGPU call


@dataclass(frozen=True)
class _Raised:
    """An exception of the worker, carried back as a value: ZeroGPU would otherwise replace it by its class name."""

    error: BaseException


def _portable(error: Exception) -> Exception:
    """``error`` if it survives pickling, else a ``RuntimeError`` with the same words."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # whatever the failure: send the words instead
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _call_in_worker(fn: Callable[..., T], args: tuple, kwargs: dict, seconds: int) -> T | _Raised:
    global _inside_call
    _inside_call = True
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # carried back and raised in the server (_Raised)
        logger.debug("a GPU call raised", exc_info=True)
        return _Raised(_portable(error))


def _stream_in_worker(fn: Callable[..., Iterator[T]], args: tuple, kwargs: dict, seconds: int) -> Iterator[T | _Raised]:
    global _inside_call
    _inside_call = True
    try:
        yield from fn(*args, **kwargs)
    except Exception as error:  # carried back and raised in the server (_Raised)
        logger.debug("a GPU call raised", exc_info=True)
        yield _Raised(_portable(error))


def _declared(fn: Callable, args: tuple, kwargs: dict, seconds: int) -> int:
    """The duration a call declares to ZeroGPU: the one its caller asked for."""
    return seconds


def _decorate() -> tuple[Callable | None, Callable | None]:
    """The two ZeroGPU entry points, decorated at start-up (ZeroGPU looks for decorated functions then)."""
    if not zero_gpu():
        return None, None
    import spaces  # noqa: PLC0415  # optional: only ZeroGPU Spaces have it (they install it themselves)
    import torch._dynamo  # noqa: F401, PLC0415

    # Each call's worker is forked from this process: what the calls would import lazily is imported here, once.
    # torch's optimizers import torch._dynamo on their first use: 2.7 s on a 2-core CPU, in every new worker.
    logger.info("ZeroGPU: GPU work runs in @spaces.GPU calls of at most %d s", call_seconds())
    return spaces.GPU(_call_in_worker, duration=_declared), spaces.GPU(_stream_in_worker, duration=_declared)


_spaces_call, _spaces_stream = _decorate()


# ---------------------------------------------------------------------------------------------
# ZeroGPU's refusals, as plain messages

# ZeroGPU's own words (spaces/zero/client.py: titles and messages), and what a user can do about each.
_REFUSALS = (
    ("duration", re.compile(r"illegal duration|duration \((\d+)s\) is larger than the maximum", re.I)),
    ("quota", re.compile(r"quota exceeded|exceeded your .{0,20}quota", re.I)),
    ("busy", re.compile(r"No GPU was available", re.I)),
    ("aborted", re.compile(r"GPU task aborted|ZeroGPU worker error", re.I)),
)
_QUOTA_NUMBERS = re.compile(r"\((\d+)s requested vs\. (\d+)s left\)", re.I)


def explain(error: BaseException, seconds: float) -> str | None:
    """A ZeroGPU refusal of a call of ``seconds`` as a plain message with what to do; None for any other error."""
    text = f"{getattr(error, 'title', '') or ''} {getattr(error, 'message', '') or ''} {error}"
    kind = next((kind for kind, pattern in _REFUSALS if pattern.search(text)), None)
    if kind == "duration":
        return (
            f"ZeroGPU refused a GPU call of {seconds:.0f} s (illegal duration: longer than this Space allows). "
            f"Ask for less at once (fewer images), or ask the Space's host to lower {CALL_SECONDS_ENV} "
            f"(now {call_seconds()} s)."
        )
    if kind == "quota":
        numbers = _QUOTA_NUMBERS.search(text)
        amounts = f" ({numbers.group(1)} s asked for, {numbers.group(2)} s left)" if numbers else ""
        return (
            f"ZeroGPU quota exceeded: your GPU time for today is used up{amounts}. Try a shorter run or fewer "
            "images, try again later (the quota refills over the day), or sign in to Hugging Face for a larger one."
        )
    if kind == "busy":
        return "No GPU was available: every ZeroGPU GPU is busy right now. Try again in a minute."
    if kind == "aborted":
        return (
            f"The GPU call stopped before it ended (it may have outlived its {seconds:.0f} s). Try a smaller "
            "request: fewer images, a smaller model or image size; a training run keeps its best checkpoint."
        )
    return None


@contextlib.contextmanager
def _plain_errors(seconds: float) -> Iterator[None]:
    """Turns ZeroGPU's refusals into ``GPUUnavailable``; every other error passes through unchanged."""
    try:
        yield
    except GPUUnavailable:
        raise
    except Exception as error:
        message = explain(error, seconds)
        if message is None:
            raise
        logger.warning("ZeroGPU refused or lost a %.0f s call: %s", seconds, error)
        raise GPUUnavailable(message) from error
