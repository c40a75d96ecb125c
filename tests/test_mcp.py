"""The app as an MCP server (on unless GRADIO_MCP_SERVER=false): an MCP client over streamable HTTP lists its
tools (only the two written for agents), classifies an image and reads an architecture table through them."""

from __future__ import annotations

import ast
import asyncio
import base64
import io

import mcp
import pytest
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from densenet_demo.ui.app import MCP_TOOLS, mcp_server_enabled


@pytest.fixture(scope="module")
def mcp_url(start_app):
    return start_app("mcp", env={"GRADIO_MCP_SERVER": ""}).url + "gradio_api/mcp/"  # the default


def _session(url: str, action):
    async def run():
        async with streamable_http_client(url) as (read, write, _):
            async with mcp.ClientSession(read, write) as session:
                await session.initialize()
                return await action(session)

    return asyncio.run(run())


def _text(result) -> str:
    return " ".join(getattr(content, "text", "") for content in result.content)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_an_mcp_client_lists_the_tools_with_their_descriptions(mcp_url):
    tools = {tool.name: tool for tool in _session(mcp_url, lambda s: s.list_tools()).tools}
    classify, table = tools["classify_image"], tools["architecture_table"]
    assert "most likely classes" in classify.description and "top_k" in classify.inputSchema["properties"]
    assert classify.inputSchema["required"] == ["image"]  # everything else has a default
    assert '"onnxruntime"' in classify.inputSchema["properties"]["backend"]["description"]
    assert "channels grow" in table.description and "required" not in table.inputSchema
    chosen = _session(mcp_url + "?tools=classify_image,architecture_table", lambda s: s.list_tools()).tools
    assert sorted(tool.name for tool in chosen) == ["architecture_table", "classify_image"]  # the agents' pair


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_an_mcp_client_sees_only_the_agent_tools_and_cannot_call_the_pages_endpoints(mcp_url):
    tools = _session(mcp_url, lambda s: s.list_tools()).tools
    assert sorted(tool.name for tool in tools) == sorted(MCP_TOOLS) == ["architecture_table", "classify_image"]
    for tool in tools:
        assert len(tool.description) > 80 and "Args:" not in tool.description  # a description, parameters apart
        assert all(p.get("description") for p in tool.inputSchema["properties"].values()), tool.name
    # The API's other endpoints (they follow a page's session) are no tools: calling one by name is refused.
    for name in ("predict_images", "stop_training", "delete_run", "load_dataset", "partial", "_lambda_"):
        result = _session(mcp_url, lambda s, name=name: s.call_tool(name, {}))
        assert result.isError and "Unknown tool" in _text(result), name


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_an_mcp_client_classifies_an_image(mcp_url):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    args = {"image": image, "model": "densenet_bc100_k12", "weights_choice": "Random init", "top_k": 3}
    args["backend"] = "torch"
    result = _session(mcp_url, lambda s: s.call_tool("classify_image", args))
    text = _text(result)
    assert not result.isError, text
    label, info = ast.literal_eval(text)  # Gradio hands the outputs over as one text: (top classes, note)
    assert len(label["confidences"]) == 3 and "densenet_bc100_k12" in info and "random weights" in info.lower()
    assert "by PyTorch" in info


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_an_mcp_client_reads_an_architecture_table(mcp_url):
    result = _session(mcp_url, lambda s: s.call_tool("architecture_table", {"model": "densenet121"}))
    text = _text(result)
    assert not result.isError, text
    assert "7,978,856" in text and "block4.layer16" in text and "transition3" in text


def test_the_mcp_server_is_on_unless_configured_off(monkeypatch):
    monkeypatch.delenv("GRADIO_MCP_SERVER", raising=False)
    assert mcp_server_enabled()  # the mcp package is a requirement (gradio[mcp])
    monkeypatch.setenv("GRADIO_MCP_SERVER", "false")
    assert not mcp_server_enabled()
    monkeypatch.setenv("GRADIO_MCP_SERVER", "True")
    assert mcp_server_enabled()
