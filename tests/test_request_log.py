"""The server's log: each line tagged with its request, user errors one INFO line without a traceback, failures an
ERROR with it; inputs of the wrong kind named with what they take. In-process, no server."""

from __future__ import annotations

import asyncio
import io
import logging

import gradio as gr
import pytest

from densenet_demo.hosting import request_log
from densenet_demo.ui import inputs
from densenet_demo.ui.app_blocks import FAILURE_MESSAGE, DemoBlocks


def test_lines_logged_inside_a_request_carry_its_tag_and_others_a_dash():
    stream = io.StringIO()
    logger = logging.getLogger("densenet_demo.test_tag")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(request_log.LOG_FORMAT))
    handler.addFilter(request_log.RequestTag())
    logger.addHandler(handler)
    try:
        tag = request_log.request_tag("3f2a91c0aa55", "7b2e01aa99ff")
        with request_log.request_context(tag):
            logger.warning("inside")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = stream.getvalue().splitlines()
    assert tag == "3f2a91c0 s:7b2e01aa" and "[3f2a91c0 s:7b2e01aa] densenet_demo.test_tag: inside" in inside
    assert "[-] densenet_demo.test_tag: outside" in outside
    assert len(request_log.request_tag(None, None)) == 8  # an id of its own when Gradio gave none


def test_configure_logging_leaves_a_hosts_set_up_alone(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])
    assert request_log.configure_logging() is False and len(root.handlers) == 1
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    monkeypatch.setattr(logging.getLogger("densenet_demo"), "level", logging.getLogger("densenet_demo").level)
    stream = io.StringIO()
    assert request_log.configure_logging(stream) is True
    logging.getLogger("densenet_demo.test_configure").info("a note")
    logging.getLogger("some.library").info("library chatter")
    assert stream.getvalue().count("\n") == 1 and "INFO [-] densenet_demo.test_configure: a note" in stream.getvalue()


def test_a_client_leaving_mid_request_is_one_info_line_and_other_failures_keep_their_traceback(monkeypatch):
    from starlette.requests import ClientDisconnect

    server = logging.getLogger("uvicorn.error")  # where the ASGI server reports an exception in a request
    monkeypatch.setattr(server, "filters", [])
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])  # a host's set-up: kept
    request_log.configure_logging()
    request_log.configure_logging()  # installed once
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    monkeypatch.setattr(server, "handlers", [handler])
    for error in (ClientDisconnect(), KeyError("custom")):
        try:
            raise error
        except Exception as raised:
            server.error("Exception in ASGI application\n", exc_info=raised)
    left, failed = records
    assert (left.levelname, left.getMessage(), left.exc_info) == ("INFO", "a client left mid-request", None)
    assert failed.levelname == "ERROR" and failed.exc_info[0] is KeyError
    assert len(server.filters) == 1


def _refuse(text: str) -> str:
    raise gr.Error("Unknown model 'run:nope': choose a preset.\nOr one of your runs.")


def _broken(text: str) -> str:
    return {}["missing"]


def _three(model: str, top_k: float, show_cam: bool) -> str:
    return "ran"


def _choice(weights_choice: str) -> str:
    return weights_choice


@pytest.fixture(scope="module")
def page():
    """One page with an event per handler above; ``page[name]``: (app, its BlockFunction)."""
    with DemoBlocks() as app:
        text, out = gr.Textbox(), gr.Textbox()
        three = [gr.Textbox(), gr.Slider(1, 10, value=5), gr.Checkbox(value=True)]
        radio = gr.Radio(["ImageNet", "Random init"], value="ImageNet")
        for handler, components in ((_refuse, [text]), (_broken, [text]), (_three, three), (_choice, [radio])):
            gr.on([], handler, components, out, api_name=handler.__name__.strip("_"))
    return {fn.api_name: (app, fn) for fn in app.fns.values()}


def _run(app, block_fn, values):
    return asyncio.run(app.process_api(block_fn, values, state=None, event_id="abcdef0123", session_hash="feedbeef99"))


def test_a_user_error_is_one_info_line_without_a_traceback(page, caplog):
    caplog.set_level(logging.INFO, logger="densenet_demo")
    with pytest.raises(gr.Error) as error:
        _run(*page["refuse"], ["x"])
    assert error.value.message.startswith("Unknown model 'run:nope'") and error.value.print_exception is False
    [record] = [r for r in caplog.records if r.name.startswith("densenet_demo")]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "/refuse refused: Unknown model 'run:nope': choose a preset. Or one of your runs."


def test_a_failure_is_an_error_with_its_traceback_and_the_client_reads_a_reference(page, caplog):
    with pytest.raises(gr.Error) as error:
        _run(*page["broken"], ["x"])
    assert error.value.message == FAILURE_MESSAGE.format(reference="abcdef01")
    [record] = [r for r in caplog.records if r.name.startswith("densenet_demo")]
    assert record.levelno == logging.ERROR and record.exc_info[0] is KeyError
    assert record.getMessage() == "/broken failed"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["x", [1, 2], True], "top_k takes a number from 1 to 10, not a list."),
        (["x", 3, "yes"], "show_cam takes true or false, not 'yes'."),
        ([None, float("nan"), False], "top_k takes a number from 1 to 10, not a number."),
        (["x", 3, True, "extra"], "This endpoint takes 3 value(s), in this order: model, top_k, show_cam."),
    ],
)
def test_inputs_of_the_wrong_kind_are_named_with_what_they_take(page, values, message):
    app, block_fn = page["three"]
    assert inputs.wrong_inputs(block_fn, values) == message
    with pytest.raises(gr.Error, match="takes"):
        _run(app, block_fn, values)
    assert inputs.wrong_inputs(block_fn, ["x", 3, False]) is None and _run(app, block_fn, ["x", 3, False])["data"]


def test_a_choice_outside_the_list_is_named_and_paths_are_not_echoed(page):
    app, block_fn = page["choice"]
    assert inputs.wrong_inputs(block_fn, ["Zzz"]) == "weights_choice takes one of 'ImageNet', 'Random init', not 'Zzz'."
    assert inputs.wrong_inputs(block_fn, ["/etc/passwd"]).endswith("not text.")
    assert inputs.wrong_inputs(block_fn, [True]).endswith("not true/false.")  # True == 1, yet not a choice
    assert inputs.wrong_inputs(block_fn, ["Random init"]) is None


def test_choices_the_page_added_for_this_session_are_accepted(page):
    _, block_fn = page["choice"]
    radio = block_fn.inputs[0]
    updated = gr.Radio(["ImageNet", "Random init", "run:20260101-abc"], render=False)
    assert "not 'run:20260101-abc'" in inputs.wrong_inputs(block_fn, ["run:20260101-abc"])
    assert inputs.wrong_inputs(block_fn, ["run:20260101-abc"], {radio._id: updated}) is None  # this session's list
    assert "not 'run:20260101-abc'" in inputs.wrong_inputs(block_fn, ["run:20260101-abc"], {})  # another session's


def test_a_private_address_given_as_a_file_is_a_user_error_and_the_apps_own_value_errors_are_not(page):
    import safehttpx

    _, block_fn = page["refuse"]
    try:  # what Gradio's guard raises before it fetches a URL given as a file
        asyncio.run(safehttpx.get("http://127.0.0.1:1/x.png"))
    except ValueError as error:
        refused = error
    message = inputs.input_problem(refused, block_fn, ["http://127.0.0.1:1/x.png"])
    assert "a private or local one is refused" in message and "127.0.0.1" not in message
    assert inputs.input_problem(ValueError("Hostname x failed validation"), block_fn, ["x"]) is None
