"""A run on every GPU of this machine: a ``torchrun`` child, one process per GPU, started with the run as data.

The parent (``runners.TorchrunRun``, through ``train_in_child``) names the run, writes a job file (``Job``: the
``TrainConfig``, the checked images and their labels, the dataset report, the run's id and folder) and starts::

    python -m torch.distributed.run --standalone --nproc-per-node N -m densenet_demo.training.torchrun JOB.json

Each process reads the job, joins the process group (training/distributed.py) and trains its part with the same
``Trainer`` as a run here; the main process prints every event as one JSON line (``events.to_dict``), and the
parent reads them back through the same codec (``events.from_dict``). Whatever goes wrong in the child, from a
job it cannot read to a failing step, comes back as a ``Failed`` event; a child that ends without an end event
(killed, out of memory) ends the run with a ``Failed`` of the parent's own, and its last lines go to the log.

The child is this module run with ``-m`` rather than a hidden command of the command line, so that the engine
never depends on the command line: the job is the whole interface, and the command line's ``train`` stays what a
person types (under torchrun too). Stop: ``stop()`` sends SIGINT to the child's process group; every process
stops at the same step and the main one reports ``Cancelled``, the best checkpoint kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.datasets import DatasetReport, LabeledFiles
from ..weights import checkpoints
from ..weights import resolver as W
from .config import TrainConfig
from .distributed import ENV_FAKE_GPUS, Alone, data_parallel, is_main_process
from .events import Cancelled, CancelToken, Event, Failed, Started, from_dict
from .loop import Trainer

__all__ = ["Job", "train_in_child"]

logger = logging.getLogger(__name__)

_END_KINDS = ("finished", "cancelled", "failed")


@dataclass(frozen=True)
class Job:
    """What every process of the child reads: the run as data."""

    config: TrainConfig
    files: LabeledFiles
    report: DatasetReport | None
    run_id: str
    out_dir: str

    def to_json(self) -> str:
        files = self.files
        return json.dumps(
            {
                "config": self.config.to_dict(),
                "class_names": list(files.class_names),
                "train": [[str(path), label] for path, label in files.train],
                "val": None if files.val is None else [[str(path), label] for path, label in files.val],
                "report": None if self.report is None else self.report.to_dict(),
                "data_root": None if self.report is None or self.report.root is None else str(self.report.root),
                "run_id": self.run_id,
                "out_dir": self.out_dir,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Job:
        d = json.loads(text)

        def items(rows: list[list[Any]]) -> tuple[tuple[Path, int], ...]:
            return tuple((Path(path), int(label)) for path, label in rows)

        val = None if d["val"] is None else items(d["val"])
        report = d["report"]
        if report is not None:
            skipped = [(s["path"], s["reason"]) for s in report["skipped"]]
            root = Path(d["data_root"]) if d.get("data_root") else None  # for the run's record of its data
            report = DatasetReport(**{**report, "skipped": skipped}, root=root)
        files = LabeledFiles(tuple(d["class_names"]), items(d["train"]), val)
        return cls(TrainConfig.from_dict(d["config"]), files, report, d["run_id"], d["out_dir"])


def train_in_child(
    job: Job,
    processes: int,
    cancel: CancelToken,
    *,
    scratch: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    stop_grace_s: float = 60.0,
) -> Iterator[Event]:
    """The events of ``job`` trained by ``processes`` torchrun processes; ``Failed`` when the child could not
    start or ended without saying how. ``cancel`` stops it (SIGINT to its processes; SIGKILL after
    ``stop_grace_s``). ``scratch``: where the job file goes (removed at the end)."""
    folder = Path(tempfile.mkdtemp(prefix="torchrun_", dir=scratch))
    job_file = folder / "job.json"
    try:
        try:
            job_file.write_text(job.to_json(), encoding="utf-8")
        except OSError as e:
            yield Failed(f"could not write the run's job file ({e.strerror or e}); free some disk space")
            return
        process = _start_child(job_file, processes, env or {})
        ended = False
        try:
            for event in _events_of(process, cancel, job, processes, stop_grace_s):
                ended = ended or event.kind in _END_KINDS
                yield event
        finally:
            _wind_down(process, ended, stop_grace_s)
    finally:
        with contextlib.suppress(OSError):
            job_file.unlink(missing_ok=True)
            folder.rmdir()


def _events_of(
    process: subprocess.Popen, cancel: CancelToken, job: Job, processes: int, stop_grace_s: float
) -> Iterator[Event]:
    """The events on the child's stdout (its stderr goes to the log), then its own end if it gave none."""
    lines: queue.Queue[str | None] = queue.Queue()
    last_lines: deque[str] = deque(maxlen=30)
    readers = [
        threading.Thread(target=_pump, args=(process.stdout, lines.put, True), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, _relay_line(last_lines), False), daemon=True),
    ]
    for reader in readers:
        reader.start()
    ended, started, stopped_at = False, False, None
    while True:
        if cancel.cancelled and stopped_at is None:
            stopped_at = time.monotonic()
            _signal_group(process, signal.SIGINT)
        elif stopped_at is not None and time.monotonic() - stopped_at > stop_grace_s:
            _signal_group(process, signal.SIGKILL)  # the processes did not stop in time
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        try:
            event = from_dict(json.loads(line))
        except ValueError:  # not an event (a JSONDecodeError is a ValueError too): torchrun's own output
            logger.debug("torchrun child: %s", line.rstrip())
            continue
        ended, started = ended or event.kind in _END_KINDS, started or isinstance(event, Started)
        yield event
    code = process.wait()
    for reader in readers:
        reader.join(timeout=5)
    if ended:
        return
    if cancel.cancelled and not started:  # stopped while the processes were starting: nothing saved
        yield Cancelled(checkpoint_dir=None, epoch=0, best_val_acc=None)
        return
    logger.error("the torchrun child of run %s ended (exit code %s); its last lines:\n%s", job.run_id, code,
                 "".join(last_lines))  # fmt: skip
    kept = Path(job.out_dir) / W.CHECKPOINT_WEIGHTS
    yield Failed(
        f"the {processes}-process training run ended without a result (exit code {code}); "
        "the server's log has its last lines",
        checkpoint_dir=job.out_dir if kept.is_file() else None,
    )


def _start_child(job_file: Path, processes: int, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command += ["-m", __spec__.name if __spec__ else "densenet_demo.training.torchrun", str(job_file)]
    package_root = str(Path(__file__).resolve().parents[2])
    child_env = {
        **os.environ,
        # The child's weights folders are the app's, should it resolve a relative one differently.
        "DENSENET_DEMO_WEIGHTS": str(checkpoints.weights_dir().resolve()),
        "DENSENET_DEMO_PUBLISHED": str(checkpoints.published_dir().resolve()),
        **env,
    }
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
    if child_env.get(ENV_FAKE_GPUS):
        child_env["CUDA_VISIBLE_DEVICES"] = ""  # the stand-in "GPUs" are CPU processes on gloo
    logger.info("starting %s", " ".join(command))
    return subprocess.Popen(
        command,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a signal to it reaches torchrun and the ranks, not the app
    )


def _relay_line(last_lines: deque[str]) -> Any:
    """Each line the child writes to stderr (its processes' logs) goes to this process's log, the last kept."""

    def relay(line: str) -> None:
        last_lines.append(line)
        logger.info("torchrun child: %s", line.rstrip())

    return relay


def _pump(stream: Any, put: Any, mark_end: bool) -> None:
    for line in stream:
        put(line)
    if mark_end:  # tell the reader that the stream ended
        put(None)


def _wind_down(process: subprocess.Popen, ended: bool, grace_s: float) -> None:
    """Wait for a child that reported its end; stop one whose events nobody reads any more."""
    if ended and process.poll() is None:  # the processes are on their way out
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    if process.poll() is None:
        _signal_group(process, signal.SIGINT)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


# ---------------------------------------------------------------------------------------------
# The child: every process of the run


def _child(job_file: str) -> int:
    """One process's part: the job's run with this process's share; the main process prints the events."""
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"rank {rank}: %(levelname)s %(message)s")
    cancel = CancelToken()
    # A Stop reaches every process as SIGINT; torchrun ends the others with SIGTERM when one fails: both finish
    # the step and report, rather than die mid-write.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: cancel.cancel())
    try:
        job = Job.from_json(Path(job_file).read_text(encoding="utf-8"))
        with data_parallel(device=job.config.device) as dp:
            trainer = Trainer(
                job.config, job.files, report=job.report, out_dir=job.out_dir, run_id=job.run_id,
                parallel=dp or Alone(),
            )  # fmt: skip
            end = None
            for end in trainer.run(cancel):
                if is_main_process():
                    print(json.dumps(end.to_dict()), flush=True)
            return 0 if end is not None and end.kind == "finished" else 1
    except Exception as e:  # what stops the run before it starts, said once, as the run's end
        if is_main_process():
            detail = logging.Formatter().formatException(sys.exc_info())
            logger.error("the run could not start: %s\n%s", e, detail)
            print(json.dumps(Failed(str(e), detail=detail).to_dict()), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
