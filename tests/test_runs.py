"""The runs registry: who sees which run, labels, deletion, and the retention rules (no server, no gradio)."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from densenet_demo.data.images import default_preprocessing
from densenet_demo.hosting import runs
from densenet_demo.hosting.sessions import Session
from densenet_demo.model import DenseNet
from densenet_demo.weights import checkpoints
from densenet_demo.weights import resolver as weights

MB = 2**20


@pytest.fixture(autouse=True)
def _local_environment(monkeypatch):
    """No sharing hints from the machine running the tests; each test sets what it needs."""
    for name in ("DENSENET_DEMO_SHARED", "SPACE_ID", "GRADIO_SERVER_NAME", "DENSENET_DEMO_PUBLISHED"):
        monkeypatch.delenv(name, raising=False)
    for name in ("DENSENET_DEMO_RUNS_MAX_MB", "DENSENET_DEMO_RUNS_PER_SESSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runs, "_launch", {})


def make_run(
    run_id: str,
    tiny_config,
    *,
    owner: str | None = None,
    age_s: float = 0.0,
    val_acc: float | None = 0.992,
    source: str = "digits.zip",
    root=None,
    padding_mb: float = 0.0,
) -> str:
    """A saved run with a dataset and settings recorded, ``age_s`` old, optionally claimed and padded to a size."""
    folder = weights.run_path(run_id, root)
    if owner is not None:
        runs.claim(run_id, owner)
    metrics = {"val_acc": val_acc} if val_acc is not None else {}
    extra = {"train_config": {"model": "densenet121", "mode": "scratch"}, "dataset": {"source": source}}
    weights.save_checkpoint(
        folder,
        DenseNet(tiny_config),
        class_names=[f"c{i}" for i in range(tiny_config.num_classes)],
        preprocessing=default_preprocessing(tiny_config),
        metrics=metrics,
        extra=extra,
    )
    if padding_mb:
        (folder / "padding.bin").write_bytes(b"\0" * int(padding_mb * MB))
    stamp = time.time() - age_s
    for path in folder.iterdir():
        os.utime(path, (stamp, stamp))
    return run_id


def ids(infos) -> list[str]:
    return [info.run_id for info in infos]


# ---------------------------------------------------------------------------------------------
# The sharing rule


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "::1", "[::1]"])
def test_loopback_addresses_are_local(host):
    assert runs.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.org"])
def test_other_addresses_are_not_loopback(host):
    assert not runs.is_loopback(host)


def test_a_loopback_server_is_local_and_has_no_caps():
    assert runs.settings() == runs.RunSettings(shared=False, max_mb=0.0, per_session=0)


def test_a_space_or_a_public_address_is_shared_with_default_caps(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/densenet")
    limits = runs.settings()
    assert limits.shared and limits.max_mb == runs.SHARED_DEFAULT_MAX_MB
    assert limits.per_session == runs.SHARED_DEFAULT_PER_SESSION
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert runs.settings().shared


def test_launch_arguments_count_like_the_environment():
    runs.note_launch(server_name="0.0.0.0")
    assert runs.settings().shared


def test_the_override_wins_both_ways(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/densenet")
    monkeypatch.setenv("DENSENET_DEMO_SHARED", "0")
    assert not runs.settings().shared
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("DENSENET_DEMO_SHARED", "1")
    assert runs.settings().shared


def test_caps_come_from_the_environment_and_bad_values_fall_back(monkeypatch):
    monkeypatch.setenv("DENSENET_DEMO_RUNS_MAX_MB", "3.5")
    monkeypatch.setenv("DENSENET_DEMO_RUNS_PER_SESSION", "2")
    assert runs.settings() == runs.RunSettings(shared=False, max_mb=3.5, per_session=2)
    monkeypatch.setenv("DENSENET_DEMO_RUNS_MAX_MB", "lots")
    assert runs.settings().max_mb == 0.0


# ---------------------------------------------------------------------------------------------
# Who sees what


def test_locally_everyone_sees_every_run_newest_first(tiny_config):
    make_run("old", tiny_config, owner="alice")
    time.sleep(1.1)  # created_at has one-second resolution
    make_run("cli", tiny_config)  # the command line's: nobody's
    time.sleep(1.1)
    make_run("new", tiny_config, owner="bob")
    assert ids(runs.visible_runs("carol", shared=False)) == ["new", "cli", "old"]
    assert all(runs.can_use(r, None, shared=False) for r in ("old", "cli", "new"))


def test_shared_a_session_sees_its_own_runs_and_the_published_ones(tiny_config):
    make_run("alices", tiny_config, owner="alice")
    make_run("bobs", tiny_config, owner="bob")
    make_run("cli", tiny_config)
    make_run("demo", tiny_config, root=checkpoints.published_dir())
    assert sorted(ids(runs.visible_runs("alice", shared=True))) == ["alices", "demo"]
    assert sorted(ids(runs.visible_runs(None, shared=True))) == ["demo"]
    assert runs.can_use("alices", "alice", shared=True)
    assert runs.can_use("demo", "bob", shared=True)
    assert not runs.can_use("bobs", "alice", shared=True)
    assert not runs.can_use("cli", "alice", shared=True)
    assert not runs.can_use("bobs", None, shared=True)


def test_an_unknown_run_and_another_sessions_run_are_refused_alike(tiny_config):
    make_run("bobs", tiny_config, owner="bob")
    with pytest.raises(runs.RunError) as foreign:
        runs.delete_run("bobs", "alice", shared=True)
    with pytest.raises(runs.RunError) as unknown:
        runs.delete_run("nobodys", "alice", shared=True)
    assert str(foreign.value).replace("bobs", "X") == str(unknown.value).replace("nobodys", "X")
    assert weights.run_path("bobs").is_dir()


def test_a_published_run_is_found_by_its_id_and_loads(tiny_config):
    make_run("demo", tiny_config, root=checkpoints.published_dir())
    assert runs.is_published("demo") and not runs.is_published("missing")
    loaded = weights.load_model("run:demo")
    assert loaded.label == "fine-tuned run demo" and loaded.class_names == ("c0", "c1", "c2")


def test_the_owner_record_is_not_part_of_a_download(tiny_config, tmp_path):
    import zipfile

    make_run("alices", tiny_config, owner="alice")
    with zipfile.ZipFile(weights.zip_checkpoint(weights.run_path("alices"), tmp_path)) as zf:
        assert sorted(zf.namelist()) == ["alices/model.json", "alices/model.safetensors"]


# ---------------------------------------------------------------------------------------------
# Labels


def test_a_label_says_dataset_model_mode_accuracy_and_time(tiny_config):
    make_run("r1", tiny_config, owner="alice")
    info = checkpoints.read_checkpoint_info(weights.run_path("r1"))
    local_time = dt.datetime.fromisoformat(info.created_at).astimezone().strftime("%H:%M")
    assert runs.run_label(info) == f"digits · densenet121 scratch · 99.2% · {local_time}"


def test_labels_name_the_example_and_a_run_without_accuracy(tiny_config):
    make_run("r1", tiny_config, val_acc=None, source="the built-in example dataset (shapes and stripes, generated)")
    label = runs.run_label(checkpoints.read_checkpoint_info(weights.run_path("r1")))
    assert label.startswith("example · densenet121 scratch · not validated · ")


def test_runs_that_would_read_alike_get_their_ids_tail_and_published_ones_say_so(tiny_config):
    make_run("20260101-100000-densenet121-a1b2", tiny_config)
    make_run("20260101-100000-densenet121-c3d4", tiny_config)
    make_run("demo-run", tiny_config, root=checkpoints.published_dir(), source="pets.zip")
    labels = dict((value, label) for label, value in runs.run_labels(runs.visible_runs(None, shared=False)))
    assert labels["run:20260101-100000-densenet121-a1b2"].endswith(" · a1b2")
    assert labels["run:20260101-100000-densenet121-c3d4"].endswith(" · c3d4")
    assert labels["run:demo-run"].startswith("published: pets · ")


# ---------------------------------------------------------------------------------------------
# Deletion and retention


def test_a_session_deletes_its_own_run_but_not_a_published_or_busy_one(tiny_config):
    make_run("mine", tiny_config, owner="alice")
    make_run("busy", tiny_config, owner="alice")
    make_run("demo", tiny_config, root=checkpoints.published_dir())
    runs.delete_run("mine", "alice", shared=True)
    assert not weights.run_path("mine").exists()
    with pytest.raises(runs.RunError, match="published"):
        runs.delete_run("demo", "alice", shared=True)
    with runs.in_use("busy"):
        with pytest.raises(runs.RunError, match="training or being downloaded"):
            runs.delete_run("busy", "alice", shared=True)
    assert weights.run_path("busy").is_dir() and weights.run_path("demo", checkpoints.published_dir()).is_dir()
    runs.delete_run("busy", "alice", shared=True)
    assert not weights.run_path("busy").exists()


def test_an_expired_session_takes_its_runs_but_not_those_in_use_or_others(tiny_config):
    session = Session()
    make_run("a1", tiny_config, owner=session.owner)
    make_run("a2", tiny_config, owner=session.owner)
    make_run("b1", tiny_config, owner="bob")
    with runs.in_use("a2"):
        session.close(remove_runs=True)
    assert not weights.run_path("a1").exists()
    assert weights.run_path("a2").is_dir() and weights.run_path("b1").is_dir()


def test_a_local_session_keeps_its_runs_when_it_closes(tiny_config):
    session = Session()
    make_run("a1", tiny_config, owner=session.owner)
    session.close()
    assert weights.run_path("a1").is_dir()


def test_the_runs_per_session_cap_removes_that_sessions_oldest_first(tiny_config):
    for i, age in enumerate((300, 200, 100, 0)):
        make_run(f"a{i}", tiny_config, owner="alice", age_s=age)
    make_run("b0", tiny_config, owner="bob", age_s=1000)
    limits = runs.RunSettings(shared=True, max_mb=0, per_session=2)
    assert runs.enforce_limits("alice", limits, keep="a3") == ["a0", "a1"]
    assert sorted(p.name for p in weights.runs_dir().iterdir()) == ["a2", "a3", "b0"]


def test_the_disk_cap_removes_the_oldest_unpublished_runs_never_busy_or_kept_ones(tiny_config):
    make_run("busy", tiny_config, owner="alice", age_s=500, padding_mb=1)
    make_run("oldest", tiny_config, owner="bob", age_s=400, padding_mb=1)
    make_run("cli", tiny_config, age_s=300, padding_mb=1)
    make_run("newer", tiny_config, owner="alice", age_s=200, padding_mb=1)
    make_run("just-saved", tiny_config, owner="carol", age_s=0, padding_mb=1)
    make_run("demo", tiny_config, root=checkpoints.published_dir(), age_s=900, padding_mb=1)
    limits = runs.RunSettings(shared=True, max_mb=2.5, per_session=0)
    with runs.in_use("busy"):
        removed = runs.enforce_limits("carol", limits, keep="just-saved")
    assert removed == ["oldest", "cli", "newer"]
    assert sorted(p.name for p in weights.runs_dir().iterdir()) == ["busy", "just-saved"]
    assert weights.run_path("demo", checkpoints.published_dir()).is_dir()


def test_a_run_is_kept_while_training_and_leaves_nothing_when_it_saved_nothing(tiny_config):
    runs.begin_run("starting", "alice")
    assert runs.owner_of("starting") == "alice" and runs.is_busy("starting")
    assert runs.enforce_limits("alice", runs.RunSettings(True, 0.000001, 0)) == []
    runs.end_run("starting")
    assert not runs.is_busy("starting") and not weights.run_path("starting").exists()
    runs.begin_run("saved", "alice")
    make_run("saved", tiny_config)
    runs.end_run("saved")
    assert (weights.run_path("saved") / weights.CHECKPOINT_WEIGHTS).is_file()


def test_launch_sweeps_claimed_runs_older_than_a_session(tiny_config):
    make_run("stale", tiny_config, owner="alice", age_s=7200)
    make_run("fresh", tiny_config, owner="bob", age_s=10)
    make_run("cli", tiny_config, age_s=7200)
    assert runs.sweep_orphaned_runs(max_age_s=3600) == ["stale"]
    assert sorted(p.name for p in weights.runs_dir().iterdir()) == ["cli", "fresh"]
