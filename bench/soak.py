"""A busy Space, simulated: the app under a mixed load for a set time, and what it did to the server.

    python bench/soak.py [--seconds 600] [--users 6] [--session-ttl 60] [--warmup 60] [--seed 0]

Starts ``python app.py`` as a shared server (``DENSENET_DEMO_SHARED=1``: runs belong to sessions and go when they
expire) with its own temp folder and weights folder, the sessions' time to live cut to ``--session-ttl``. Then
``--users`` simulated users, each a ``gradio_client`` session at a time, for ``--seconds``: predictions with
presets and with their own runs (``/predict``, ``/classify_image``), trainings started (some stopped, some asked
for twice), hostile uploads (text named .jpg, an empty file, a decompression bomb, a zip with ``../`` entries),
ONNX exports and run downloads; a user leaves now and then, and their session expires. At the end the users stop,
the sessions are left to expire, and the server is measured once more.

Prints one JSON object: predictions answered (and any unanswered), their p50/p95; trainings started, finished,
stopped, failed; refusals by reason; the server's RSS over time after the warm-up (growth, peak), its open files,
the disk use of the runs, the session folders and Gradio's uploads (at the start, the peak, the end after the
sessions expired), and the ERROR lines in the server's log. The client runs on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from gradio_client import Client, handle_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._app_process import start_app, stop_app  # noqa: E402
from bench._hostile_files import hostile_files  # noqa: E402

MODEL = "densenet_bc100_k12"  # 32 px, no download: a prediction in about 0.1 s on a CPU
# The app with its sessions' time to live cut (read when the page is built), as on a Space, but shorter.
_LAUNCH = (
    "import sys; from densenet_demo.hosting import sessions; import densenet_demo.ui as ui; "
    "sessions.STATE_TTL_S = float(sys.argv[1]); ui.launch(ui.build_app())"
)
LINEAR = (MODEL, "Random init", "linear", 2, None, 32, None, False, "Auto", "default", "default")
SCRATCH = ("densenet_fashion", "Random init", "scratch", 3, None, 32, 32, False, "Auto", "default", "default")
# Why a request was refused, from its message: the first pattern that matches names the reason.
REASONS = [
    ("bad image", r"not an image|the file is empty|truncated|decompression bomb|over the limit"),
    ("bad zip", r"points outside the upload|zip bomb|Training needs"),
    ("unknown model or run", r"Unknown model"),
    ("training already queued or running", r"This session's training is"),
    ("trainings queue full", r"The trainer is busy"),
    ("queue full", r"Queue is full"),
    ("nothing to do", r"Nothing is training|No run to export|Train a run first|Pick one of your"),
]


class Stats:
    """What the users saw, shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.unanswered: list[str] = []
        self.trainings: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()

    def refused(self, message: str) -> None:
        reason = next((name for name, pattern in REASONS if re.search(pattern, message)), message[:80])
        with self.lock:
            self.refusals[reason] += 1


class User:
    """One person at a time on the page's API: a session that predicts, trains, uploads junk and leaves."""

    def __init__(self, url: str, files: dict[str, Path], stats: Stats, rng: random.Random, ttl: float) -> None:
        self.url, self.files, self.stats, self.rng, self.ttl = url, files, stats, rng, ttl
        # Pages this user left open: [when, client, its training's job or None]. Gradio keeps a closed page's
        # state for an hour (for a reload), an open one's for its time to live: a left page stays open until its
        # session has expired, and is closed then.
        self.left: list[list[Any]] = []
        self.arrive()

    def arrive(self) -> None:
        while True:  # a person waits for a slow page, up to a minute, and reloads it if it does not come
            try:
                self.client = Client(self.url, verbose=False, httpx_kwargs={"timeout": 60})
                break
            except Exception as error:  # the page did not load: counted with the unanswered predictions
                with self.stats.lock:
                    self.stats.unanswered.append(f"page load: {type(error).__name__}: {str(error)[:150]}")
        self.runs: list[str] = []
        self.job: Any = None
        self.loaded = False

    def act(self) -> None:
        """One action, chosen by weight; the job of a training started earlier is looked at first."""
        self._collect_training()
        actions = {
            self.predict_preset: 30,
            self.classify_image: 15,
            self.predict_run: 10 if self.runs else 0,
            self.hostile_upload: 10,
            self.train: 10,
            self.stop: 4 if self.job else 0,
            self.export: 1,
            self.download: 3 if self.runs else 0,
            self.leave: 4,
        }
        action = self.rng.choices(list(actions), weights=list(actions.values()))[0]
        with self.stats.lock:
            self.stats.actions[action.__name__] += 1
        action()

    def _call(self, *args: Any, api_name: str) -> tuple[Any, str | None]:
        """(result, None), or (None, the message) when the app refused."""
        try:
            return self.client.predict(*args, api_name=api_name), None
        except Exception as error:  # gradio_client raises AppError (or others) with the app's message
            return None, str(error)

    def _predict(self, *args: Any, api_name: str) -> None:
        start = time.perf_counter()
        result, message = self._call(*args, api_name=api_name)
        with self.stats.lock:
            if message is None:
                self.stats.latencies.append(time.perf_counter() - start)
            else:
                self.stats.unanswered.append(f"{api_name}: {message[:200]}")

    def predict_preset(self) -> None:
        model = self.rng.choice([MODEL, MODEL, MODEL, "densenet121"])  # the big one now and then: memory
        self._predict(
            [handle_file(str(self.files["photo"]))], model, "Random init", None, 5, False, api_name="/predict"
        )

    def classify_image(self) -> None:
        self._predict(handle_file(str(self.files["photo"])), MODEL, "Random init", 3, api_name="/classify_image")

    def predict_run(self) -> None:
        run = self.rng.choice(self.runs)
        self._predict([handle_file(str(self.files["photo"]))], run, "ImageNet", None, 3, False, api_name="/predict")

    def hostile_upload(self) -> None:
        kind = self.rng.choice(["text", "empty", "bomb", "traversal"])
        if kind == "traversal":
            _, message = self._call("Zip file", handle_file(str(self.files[kind])), None, "", api_name="/load_dataset")
            self.loaded = False
        else:
            _, message = self._call(handle_file(str(self.files[kind])), MODEL, api_name="/classify_image")
        self.stats.refused(message or f"accepted a hostile {kind} upload")

    def train(self) -> None:
        if not self.loaded:
            _, message = self._call("Example dataset", None, None, "", api_name="/load_dataset")
            self.loaded = message is None
        settings = self.rng.choice([LINEAR, LINEAR, SCRATCH])
        if self.job is not None:  # asked for twice: the second is refused at once (or waits its turn)
            _, message = self._call(*settings, api_name="/train")
            self.stats.refused(message or "a second training accepted")
            return
        self.job = self.client.submit(*settings, api_name="/train")  # followed on a thread of gradio_client's
        with self.stats.lock:
            self.stats.trainings["started"] += 1

    def _collect_training(self) -> None:
        """Count the trainings that have ended (this session's, and those of pages left), and close the pages whose
        sessions have expired."""
        if self.job is not None and self.job.done():
            self._count(self.job)
            self.job = None
        for entry in self.left:
            if entry[2] is not None and entry[2].done():
                self._count(entry[2], mine=False)
                entry[0], entry[2] = time.monotonic(), None  # its session's time to live runs from its last update
        for entry in [e for e in self.left if e[2] is None and time.monotonic() - e[0] > 2 * self.ttl + 10]:
            self.left.remove(entry)
            entry[1].close()

    def _count(self, job: Any, mine: bool = True) -> None:
        """Count how ``job`` ended; its run is this user's to predict with only if it is this session's."""
        try:
            job.result()
        except Exception as error:
            self.stats.refused(str(error))
            with self.stats.lock:
                self.stats.trainings["refused"] += 1
            return
        text = json.dumps(job.outputs()[-1], default=str) if job.outputs() else ""
        outcome = next((word for word in ("Finished", "Stopped", "Failed") if word in text), "other")
        self.runs += [m for m in re.findall(r'"(run:[\w.-]+)"', text) if m not in self.runs] if mine else []
        with self.stats.lock:
            self.stats.trainings[outcome.lower()] += 1

    def stop(self) -> None:
        self._call(api_name="/stop")

    def export(self) -> None:
        _, message = self._call(MODEL, "Random init", None, api_name="/export_onnx")
        if message is not None:
            self.stats.refused(message)

    def download(self) -> None:
        _, message = self._call(self.rng.choice(self.runs), api_name="/download_run")
        if message is not None:  # a run the caps removed meanwhile
            self.stats.refused(message)

    def leave(self) -> None:
        """The user walks away from the page: a training of theirs goes on to its end; their session then expires."""
        self.left.append([time.monotonic(), self.client, self.job])
        self.arrive()

    def finish(self) -> None:
        """The end of the soak: the user leaves, and every training still running is stopped and awaited, so that
        what the server keeps once the sessions have expired is what it would keep for good."""
        self.leave()
        for entry in self.left:
            if entry[2] is not None:
                try:
                    entry[1].predict(api_name="/stop")
                    entry[2].result(timeout=600)
                except Exception:  # a refused training: counted below with its message
                    pass
        self._collect_training()

    def close(self) -> None:
        """Close every page (after the sessions have expired)."""
        for entry in self.left:
            entry[1].close()
        self.client.close()


def _du_mb(paths: list[Path]) -> float:
    total = 0
    for root in paths:
        for path in [root] if root.is_file() else root.rglob("*") if root.exists() else []:
            try:
                total += path.stat().st_size if path.is_file() and not path.is_symlink() else 0
            except OSError:
                pass  # removed while counted
    return round(total / 2**20, 3)  # to the KB: a short soak's uploads are a few tens of KB


def _server_sample(pid: int, tmp: Path, weights: Path) -> dict[str, float]:
    """RSS, open files and disk use of the server right now."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    return {
        "rss_mb": round(rss, 1),
        "open_files": len(os.listdir(f"/proc/{pid}/fd")),
        "runs_mb": _du_mb([weights / "runs"]),
        "sessions_mb": _du_mb(list(tmp.glob("densenet_demo_session_*"))),
        "session_folders": len(list(tmp.glob("densenet_demo_session_*"))),
        "uploads_mb": _du_mb([tmp / "gradio"]),
    }


def _open_targets(pid: int) -> list[str]:
    """What each of the process's file descriptors points at (``socket:[…]``, ``pipe:[…]``, a path)."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
    return targets


def _kind(target: str) -> str:
    return target.split(":")[0] if not target.startswith("/") else "/" + target.split("/")[1]


def _open_kinds(pid: int, before: list[str]) -> dict[str, Any]:
    """The process's open files by kind (socket, pipe, anon_inode, or the top folder of a file's path), and the
    folders of the files open now that were not open at the start (the ones to look at), most common first."""
    targets = _open_targets(pid)
    new_files = Counter(targets) - Counter(before)
    folders = Counter(os.path.dirname(t) for t in new_files.elements() if t.startswith("/"))
    return {
        "by_kind": dict(Counter(_kind(t) for t in targets).most_common()),
        "new_files_by_folder": dict(folders.most_common(10)),
    }


def _summary(samples: list[tuple[float, dict]], warmup: float, key: str) -> dict[str, Any]:
    after = [s[key] for t, s in samples if t >= warmup] or [samples[-1][1][key]]
    return {
        "after_warmup": after[0],
        "peak": max(after),
        "end": after[-1],
        "growth_after_warmup": round(after[-1] - after[0], 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The soak: the server started, the users at it for ``args.seconds``, their sessions left to expire."""
    work = Path(tempfile.mkdtemp(prefix="soak_"))
    tmp, weights = work / "tmp", work / "weights"
    tmp.mkdir()
    files = hostile_files(work)
    server_env = {"TMPDIR": str(tmp), "DENSENET_DEMO_SHARED": "1"}
    argv = ["-c", _LAUNCH, str(args.session_ttl)]
    proc, url, _ = start_app(argv, str(weights), env=server_env, log=work / "server.log")
    stats, samples, users, begin, stop = Stats(), [], [], time.monotonic(), threading.Event()
    baseline, open_before = _server_sample(proc.pid, tmp, weights), _open_targets(proc.pid)

    def user_loop(seed: int) -> None:
        rng = random.Random(seed)
        user = User(url, files, stats, rng, args.session_ttl)
        users.append(user)
        while not stop.is_set():
            user.act()
            stop.wait(rng.uniform(0.2, 2.0))  # a person's pause between clicks
        user.finish()

    threads = [threading.Thread(target=user_loop, args=(args.seed * 1000 + i,), daemon=True) for i in range(args.users)]
    try:
        for thread in threads:
            thread.start()
        while time.monotonic() - begin < args.seconds:
            samples.append((time.monotonic() - begin, _server_sample(proc.pid, tmp, weights)))
            time.sleep(min(10, args.seconds / 20))
        stop.set()
        for thread in threads:
            thread.join(timeout=900)  # a call in flight ends, and the last trainings are stopped
        deadline = time.monotonic() + 3 * args.session_ttl + 60  # the sessions expire, their runs with them
        end = _server_sample(proc.pid, tmp, weights)
        while time.monotonic() < deadline and (
            end["session_folders"] or end["runs_mb"] or end["uploads_mb"] > baseline["uploads_mb"] + 1
        ):  # Gradio's upload cache goes on the sessions' clock too (ui/app.py: delete_cache_schedule)
            time.sleep(2)
            end = _server_sample(proc.pid, tmp, weights)
        for user in users:
            user.close()
        settled = time.monotonic() + 30  # the server notices the pages closing, their connections one by one
        while time.monotonic() < settled and len(os.listdir(f"/proc/{proc.pid}/fd")) > baseline["open_files"]:
            time.sleep(1)
        end["open_files"] = _server_sample(proc.pid, tmp, weights)["open_files"]
        end["open_kinds"] = _open_kinds(proc.pid, open_before)
    finally:
        stop_app(proc)
    end["log_errors"] = len(re.findall(r" ERROR |Traceback", (work / "server.log").read_text(errors="replace")))
    return _report(args, stats, samples, baseline, end) | {"work_dir": str(work)}  # its log and folders: kept


def _report(args: argparse.Namespace, stats: Stats, samples: list, baseline: dict, end: dict) -> dict[str, Any]:
    latencies = sorted(stats.latencies)
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000)  # noqa: E731
    return {
        "benchmark": "soak",
        "seconds": args.seconds,
        "users": args.users,
        "session_ttl_s": args.session_ttl,
        "predictions": {
            "answered": len(latencies),
            "unanswered": len(stats.unanswered),
            "unanswered_examples": stats.unanswered[:5],
            "p50_ms": pick(0.5) if latencies else None,
            "p95_ms": pick(0.95) if latencies else None,
        },
        "trainings": dict(stats.trainings),
        "refusals": dict(stats.refusals.most_common()),
        "actions": dict(stats.actions.most_common()),
        "rss_mb": {
            **_summary(samples, args.warmup, "rss_mb"),
            "series": " ".join(f"{t:.0f}s:{s['rss_mb']:.0f}" for t, s in samples),
        },
        "open_files": {
            "start": baseline["open_files"],
            **_summary(samples, args.warmup, "open_files"),
            "after_expiry": end["open_files"],
            "after_expiry_by_kind": end["open_kinds"]["by_kind"],
            "new_since_start_by_folder": end["open_kinds"]["new_files_by_folder"],
        },
        "disk_mb": {
            key: {"start": baseline[key], "peak": max(s[key] for _, s in samples), "after_expiry": end[key]}
            for key in ("runs_mb", "sessions_mb", "uploads_mb")
        },
        "session_folders_after_expiry": end["session_folders"],
        "server_log_errors": end["log_errors"],
        "cpu_threads": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="how long the users keep at it")
    parser.add_argument("--users", type=int, default=6, help="simulated users at once")
    parser.add_argument("--session-ttl", type=float, default=60, help="a session's time to live, in seconds")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before RSS and open files count")
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
