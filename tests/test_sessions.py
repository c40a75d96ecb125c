"""A session's folders: made on first use, one extracted zip at a time, kept while a run reads them, gone on close."""

from __future__ import annotations

from densenet_demo.hosting.sessions import SESSION_PREFIX, Session


def test_the_folder_is_made_on_first_use_reused_and_made_again_if_removed(tmp_path):
    session = Session(tmp_path)
    assert list(tmp_path.iterdir()) == []
    folder = session.folder()
    assert folder.is_dir() and folder.parent == tmp_path and folder.name.startswith(SESSION_PREFIX)
    assert session.folder() == folder
    folder.rmdir()
    assert session.folder().is_dir()


def test_a_session_dropped_without_expiring_takes_its_folder_with_it(tmp_path):
    import gc

    kept, dropped = Session(tmp_path), Session(tmp_path)
    kept_folder, dropped_folder = kept.folder(), dropped.folder()
    (dropped_folder / "upload.png").write_bytes(b"x")
    del dropped
    gc.collect()
    assert not dropped_folder.exists() and kept_folder.is_dir()


def test_a_new_dataset_removes_the_previous_extraction_unless_a_run_reads_it(tmp_path):
    session = Session(tmp_path)
    first = session.extraction_folder()
    session.use_dataset(first)
    second = session.extraction_folder()
    session.use_dataset(second)
    assert not first.exists() and second.is_dir()
    session.run_in_progress = True
    session.use_dataset(None)  # e.g. the example dataset, while a run still reads the zip
    assert second.is_dir()


def test_close_removes_everything_the_session_wrote(tmp_path):
    session = Session(tmp_path)
    session.use_dataset(session.extraction_folder())
    (session.folder() / "run.zip").write_bytes(b"zip")
    session.close()
    assert list(tmp_path.iterdir()) == []


def test_gradios_upload_cache_is_emptied_on_the_sessions_clock(monkeypatch):
    from densenet_demo.hosting import sessions
    from densenet_demo.ui import app

    assert app.delete_cache_schedule() == (600, sessions.STATE_TTL_S)  # 3 h: checked every 10 minutes
    monkeypatch.setattr(sessions, "STATE_TTL_S", 300)
    assert app.delete_cache_schedule() == (30, 300)
    monkeypatch.setattr(sessions, "STATE_TTL_S", 20)  # never under a minute: a request may wait before reading it
    assert app.delete_cache_schedule() == (6, 60)
    assert app.build_app().delete_cache == (6, 60)


def test_the_upload_cache_sweep_removes_old_files_and_folders_and_keeps_the_rest(tmp_path):
    import os
    import time

    from densenet_demo.hosting.upload_cache import sweep

    old, fresh, kept = tmp_path / "a1" / "old.zip", tmp_path / "b2" / "fresh.jpg", tmp_path / "c3" / "example.png"
    placeholder = tmp_path / "tmpabc123"  # the empty file gr.File leaves per file it hands a handler
    for path in (old, fresh, kept, placeholder):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x" if path != placeholder else b"")
    later = time.time() + 100  # everything is 100 s old then, except what changes meanwhile
    assert sweep(tmp_path, 50, keep=[str(kept)], now=later) == 3
    assert not old.exists() and not fresh.exists() and not placeholder.exists() and kept.exists()
    assert not (tmp_path / "a1").exists() and (tmp_path / "c3").exists()  # emptied folders go, not the others
    new = tmp_path / "d4" / "new.jpg"
    new.parent.mkdir()
    new.write_bytes(b"x")
    assert sweep(tmp_path, 50, now=time.time()) == 0 and new.exists()  # younger than the age: stays
    os.utime(kept, (0, 0))
    assert sweep(tmp_path, 50, keep=[str(kept)], now=later + 1000) == 1 and kept.exists()


def test_the_pages_example_files_are_kept_by_both_sweeps():
    from densenet_demo.ui import app

    page = app.build_app()
    built = set().union(*page.temp_file_sets)
    assert any(path.endswith("triangle_000.png") for path in built)  # a gr.File's example: Gradio left it out
    assert built <= app._kept_files(page)
