"""A stand-in for Hugging Face's ``spaces`` package that enforces ZeroGPU's rules on a machine without a GPU.

Put ``tests/fake_spaces`` on ``PYTHONPATH`` and set ``SPACES_ZERO_GPU=true``: ``spaces.GPU`` then behaves, as far
as an app can tell, as on a ZeroGPU Space (spaces 0.51: ``zero/wrappers.py``, ``zero/client.py``):

- each call runs in a new forked, daemonic worker process (the real one may reuse an idle worker: stricter here),
  so it cannot start processes of its own, and what it changes in its memory stays there;
- arguments, results and every value a generator yields are pickled across; a tensor not on the CPU is refused;
- a duration above ``FAKE_ZEROGPU_MAX_S`` (default 60) is refused ("ZeroGPU illegal duration"); a call that
  outlives the duration it declared is killed ("GPU task aborted");
- an exception in the worker reaches the caller as ZeroGPU reports it: a ``gr.Error`` as it is, any other as a
  "ZeroGPU worker error" naming only its class;
- generators stream: each value reaches the caller as it comes; a caller that stops listening ends the worker;
- outside a call ``torch.cuda.is_available()`` says True (ZeroGPU patches it so); inside, it tells the truth.

``FAKE_ZEROGPU_CONTROL``: a JSON file read at each call, for the refusals a test provokes: ``{"quota_left_s": N}``
refuses calls declaring more than N seconds ("ZeroGPU quota exceeded"; each call then spends what it used),
``{"busy": true}`` refuses every call ("No GPU was available after 60s"), ``{"max_s": N}`` lowers the longest
duration allowed.
``FAKE_ZEROGPU_LOG``: a file that gets one JSON line per call (function, declared and used seconds, outcome).
"""

from __future__ import annotations

import functools
import inspect
import json
import multiprocessing
import os
import pickle
import time
from dataclasses import fields, is_dataclass
from typing import Any

__all__ = ["GPU"]

DEFAULT_DURATION = 60


def _enabled() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def _cap() -> float:
    return float(_control().get("max_s", os.environ.get("FAKE_ZEROGPU_MAX_S", "60")))


def _control() -> dict[str, Any]:
    path = os.environ.get("FAKE_ZEROGPU_CONTROL")
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _spend(seconds: float) -> None:
    """A call used ``seconds`` of the quota the control file grants (if it grants one)."""
    path, control = os.environ.get("FAKE_ZEROGPU_CONTROL"), _control()
    if path and "quota_left_s" in control:
        control["quota_left_s"] = max(0, control["quota_left_s"] - round(seconds))
        with open(path, "w") as f:
            json.dump(control, f)


def _error(title: str, message: str) -> Exception:
    import gradio as gr

    return gr.Error(message, title=title, print_exception=False)


def _log(name: str, declared: float, started: float, outcome: str) -> None:
    path = os.environ.get("FAKE_ZEROGPU_LOG")
    used = time.monotonic() - started
    if outcome != "refused":
        _spend(used)
    if path:
        line = {"fn": name, "declared": declared, "seconds": round(used, 3), "outcome": outcome}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def _non_cpu_tensor(value: Any, depth: int = 0) -> str | None:
    """Where in ``value`` a tensor sits that is not on the CPU (ZeroGPU cannot hand those across)."""
    import torch

    if depth > 20:
        return None
    if isinstance(value, torch.Tensor):
        return None if value.device.type == "cpu" else f"a tensor on {value.device}"
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple, set)):
        items = list(value)
    elif is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, f.name) for f in fields(value)]
    else:
        return None
    return next((found for item in items if (found := _non_cpu_tensor(item, depth + 1))), None)


def _send(conn, kind: str, value: Any) -> None:
    found = _non_cpu_tensor(value)
    if found:
        kind, value = "error", TypeError(f"ZeroGPU cannot hand {found} across; move it to the CPU first")
    try:
        conn.send_bytes(pickle.dumps((kind, value)))
    except Exception as e:  # what cannot be pickled reaches the caller as ZeroGPU reports it: a PicklingError
        conn.send_bytes(pickle.dumps(("error", pickle.PicklingError(f"{type(e).__name__}: {e}"))))


def _worker(task, payload: bytes, conn, generator: bool) -> None:
    import torch

    if _real_is_available is not None:
        torch.cuda.is_available = _real_is_available  # inside a call: the truth
    try:
        args, kwargs = pickle.loads(payload)
        if generator:
            for value in task(*args, **kwargs):
                _send(conn, "yield", value)
            _send(conn, "end", None)
        else:
            _send(conn, "return", task(*args, **kwargs))
    except Exception as e:  # the worker's exception goes back to the caller, as in ZeroGPU
        _send(conn, "error", e)
    finally:
        conn.close()


def _start(task, name: str, duration: Any, args: tuple, kwargs: dict, generator: bool):
    seconds = duration(*args, **kwargs) if callable(duration) else duration
    seconds = DEFAULT_DURATION if seconds is None else getattr(seconds, "total_seconds", lambda: seconds)()
    started, control = time.monotonic(), _control()
    if seconds > _cap():
        _log(name, seconds, started, "refused")
        message = f"The requested GPU duration ({round(seconds)}s) is larger than the maximum allowed"
        raise _error("ZeroGPU illegal duration", message)
    if control.get("busy"):
        _log(name, seconds, started, "refused")
        raise _error("ZeroGPU queue timeout", "No GPU was available after 60s")
    if "quota_left_s" in control and seconds > control["quota_left_s"]:
        _log(name, seconds, started, "refused")
        message = f"You have exceeded your GPU quota ({round(seconds)}s requested vs. {control['quota_left_s']}s left)."
        raise _error("ZeroGPU quota exceeded", message)
    payload = pickle.dumps((args, kwargs))  # a PicklingError here, as in ZeroGPU
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_worker, args=(task, payload, send, generator), daemon=True)
    process.start()
    send.close()
    return process, receive, seconds, started


def _next(process, receive, seconds: float, started: float, name: str) -> tuple[str, Any]:
    left = started + seconds - time.monotonic()
    if left <= 0 or not receive.poll(left):
        process.kill()
        process.join()
        _log(name, seconds, started, "killed")
        raise _error("ZeroGPU worker error", "GPU task aborted")
    try:
        kind, value = pickle.loads(receive.recv_bytes())
    except EOFError:
        process.join()
        _log(name, seconds, started, "died")
        raise _error("ZeroGPU worker error", "GPU task aborted") from None
    if kind == "error":
        process.join()
        _log(name, seconds, started, "error")
        if type(value).__name__ == "Error" and hasattr(value, "title"):  # a gr.Error reaches the page as it is
            raise value
        raise _error("ZeroGPU worker error", type(value).__name__) from value
    return kind, value


def GPU(task=None, *, duration=None, size=None, **kwargs):  # noqa: N802  (the real name)
    """``@spaces.GPU``, ``@spaces.GPU(duration=...)``: see the module's docstring."""
    if not callable(task):
        return functools.partial(GPU, duration=duration, size=size)
    if not _enabled():
        return task
    if inspect.iscoroutinefunction(task):
        raise NotImplementedError("ZeroGPU does not run async functions")
    name = getattr(task, "__qualname__", repr(task))

    if inspect.isgeneratorfunction(task):

        @functools.wraps(task)
        def stream(*args, **kwargs):
            process, receive, seconds, started = _start(task, name, duration, args, kwargs, generator=True)
            try:
                while True:
                    kind, value = _next(process, receive, seconds, started, name)
                    if kind == "end":
                        _log(name, seconds, started, "ok")
                        return
                    yield value
            finally:
                if process.is_alive():  # the caller stopped listening: the worker goes
                    process.kill()
                process.join()
                receive.close()

        return stream

    @functools.wraps(task)
    def call(*args, **kwargs):
        process, receive, seconds, started = _start(task, name, duration, args, kwargs, generator=False)
        try:
            _, value = _next(process, receive, seconds, started, name)
            _log(name, seconds, started, "ok")
            return value
        finally:
            process.join(timeout=5)
            receive.close()

    return call


_real_is_available = None
if _enabled():
    import torch

    _real_is_available = torch.cuda.is_available
    torch.cuda.is_available = lambda: True  # ZeroGPU's main process claims a GPU it does not have
