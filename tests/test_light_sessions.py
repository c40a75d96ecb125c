"""The app's Gradio sessions are light: a new session (every plain-HTTP API call is one) computes no component
config until something reads them, and what it then reads is what Gradio's own session holds. In-process."""

from __future__ import annotations

import gradio as gr
import pytest
from fastapi.testclient import TestClient
from gradio.routes import App
from gradio.state_holder import SessionState

from densenet_demo.ui.app_blocks import DemoBlocks, LightSessionState, LightStateHolder


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
