"""The app's Gradio sessions are light: a new session (every plain-HTTP API call is one) computes no component
config until something reads them, not even for the values a call sets in them, and what it then reads is what
Gradio's own session holds. Its queue sums up events for Gradio's monitoring page every so many events, not after
each one. Its server runs on uvloop and parses HTTP with httptools. In-process."""

from __future__ import annotations

import asyncio
import sys
import time

import gradio as gr
import httpx
import pytest
from fastapi.testclient import TestClient
from gradio.routes import App
from gradio.state_holder import SessionState

from densenet_demo.ui.app_blocks import ANALYTICS_SUMMARY_EVERY, DemoBlocks, LightSessionState, LightStateHolder


@pytest.fixture(scope="module")
def page() -> DemoBlocks:
    with DemoBlocks() as app:
        with gr.Tab("one"):
            text = gr.Textbox("hello", label="Text")
            number = gr.Slider(1, 10, value=3)
        with gr.Tab("two"):
            out = gr.Textbox()
            gr.State({"kept": 1})
            gr.Dataframe([[1, 2]], headers=["a", "b"])
        gr.on([], lambda t, n: f"{t} {n}", [text, number], out, api_name="echo")
    return app


def _count_configs(monkeypatch) -> list[int]:
    made: list[int] = []
    original = gr.blocks.BlocksConfig.config_for_block

    def counted(_id, rendered_ids, block, renderable=None):
        made.append(_id)
        return original(_id, rendered_ids, block, renderable)

    monkeypatch.setattr(gr.blocks.BlocksConfig, "config_for_block", staticmethod(counted))
    return made


def test_a_new_session_computes_no_config_and_then_reads_what_gradios_own_holds(page, monkeypatch):
    made = _count_configs(monkeypatch)
    light = LightSessionState(page)
    assert made == []
    gradios = SessionState(page)
    assert len(made) == len(page.blocks) > 6
    assert list(light.components) == list(gradios.components)
    # The rest of the session is Gradio's: the same attributes, the same values for stateful components.
    assert set(vars(gradios)) <= set(vars(light))
    state_id = next(k for k, b in page.blocks.items() if isinstance(b, gr.State))
    assert light[state_id] == gradios[state_id] == {"kept": 1}


def test_a_config_set_before_the_first_read_is_kept_in_the_pages_order(page):
    light, gradios = LightSessionState(page), SessionState(page)
    text_id = next(k for k, b in page.blocks.items() if isinstance(b, gr.Textbox))
    for session in (light, gradios):
        session._update_value_in_config(text_id, "changed")
    assert [c["id"] for c in light.components] == [c["id"] for c in gradios.components]
    assert next(c for c in light.components if c["id"] == text_id)["props"]["value"] == "changed"
    assert list(light.components) == list(gradios.components)


def test_the_served_app_makes_light_sessions_and_its_deep_link_still_holds_every_component(page):
    app = App.create_app(page)
    assert type(app.state_holder) is LightStateHolder and page.state_holder is app.state_holder
    session = app.state_holder["a-session"]
    assert isinstance(session, LightSessionState) and session.config_values == {}
    with TestClient(app) as client:
        answer = client.get("/gradio_api/deep_link", params={"session_hash": "a-session"})
    assert answer.status_code == 200 and answer.text.strip('"')
    assert len(list(session.components)) == len(list(SessionState(page).components))


def test_a_calls_inputs_and_outputs_wait_in_the_session_until_something_reads_its_configs(page, monkeypatch):
    echo = next(fn for fn in page.fns.values() if fn.api_name == "echo")
    out_id = echo.outputs[0]._id
    light, gradios = LightSessionState(page), SessionState(page)
    made = _count_configs(monkeypatch)
    answer = asyncio.run(page.process_api(block_fn=echo, inputs=["hi", 4], state=light))
    assert answer["data"] == ["hi 4"] and made == []  # the inputs' and the output's values set, no config
    asyncio.run(page.process_api(block_fn=echo, inputs=["hi", 4], state=gradios))
    assert list(light.components) == list(gradios.components)
    assert next(c for c in light.components if c["id"] == out_id)["props"]["value"] == "hi 4"
    # Once read, a config is Gradio's: the next call's value is set in it as Gradio sets it.
    for session in (light, gradios):
        asyncio.run(page.process_api(block_fn=echo, inputs=["bye", 2], state=session))
    assert list(light.components) == list(gradios.components)
    assert next(c for c in light.components if c["id"] == out_id)["props"]["value"] == "bye 2"


def test_the_queue_sums_up_for_the_monitoring_page_every_so_many_events_unless_the_host_says(monkeypatch):
    monkeypatch.delenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", raising=False)
    assert DemoBlocks()._queue.ANAYLTICS_CACHE_FREQUENCY == ANALYTICS_SUMMARY_EVERY > 1
    assert DemoBlocks().queue(max_size=3)._queue.ANAYLTICS_CACHE_FREQUENCY == ANALYTICS_SUMMARY_EVERY
    monkeypatch.setenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1")  # Gradio's own setting, the host's choice
    assert DemoBlocks()._queue.ANAYLTICS_CACHE_FREQUENCY == 1


@pytest.mark.e2e
def test_the_monitoring_summary_counts_the_served_events_once_enough_have_run(monkeypatch):
    monkeypatch.delenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", raising=False)
    with DemoBlocks() as app:
        words, shout = gr.Textbox(), gr.Textbox()
        gr.on([], lambda s: s.upper(), words, shout, api_name="shout")
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        summaries = []
        with httpx.Client(base_url=app.local_url, timeout=60) as client:
            for i in range(ANALYTICS_SUMMARY_EVERY):
                event = client.post("gradio_api/call/shout", json={"data": [f"word {i}"]}).json()["event_id"]
                assert f'["WORD {i}"]' in client.get(f"gradio_api/call/shout/{event}").text
                summaries.append(client.get("monitoring/summary").json()["functions"])
            # Gradio sums up after it has sent the event's result: the last summary may come a moment later.
            deadline = time.monotonic() + 30
            while not summaries[-1] and time.monotonic() < deadline:
                time.sleep(0.05)
                summaries[-1] = client.get("monitoring/summary").json()["functions"]
    finally:
        app.close()
    assert summaries[-2] == {}  # not summed up after each event
    assert summaries[-1]["shout"]["total_requests"] == ANALYTICS_SUMMARY_EVERY
    assert summaries[-1]["shout"]["success_rate"] == 1.0


@pytest.mark.e2e
@pytest.mark.skipif(sys.platform == "win32", reason="uvloop has no Windows build (requirements.txt)")
def test_the_server_runs_uvloop_and_parses_http_with_httptools():
    with DemoBlocks() as app:
        gr.Textbox()
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        loop, protocol = app.server.servers[0].get_loop(), app.server.config.http_protocol_class
        assert httpx.get(app.local_url, timeout=60).status_code == 200
    finally:
        app.close()
    assert type(loop).__module__ == "uvloop" and protocol.__name__ == "HttpToolsProtocol"
