"""`when: tools:` in the policy language: which tools a request offers the model, and which calls it carries back,
by name and by argument values; read from real provider bodies by the real parsers."""

from __future__ import annotations

import json
import textwrap

import pytest

import providers
from core.catalog import Catalog
from core.rulesfile import SHIPPED_RULES, RulesError
from policy.engine import Request, Subject, decide
from policy.language import load

CATALOG = Catalog.load(SHIPPED_RULES / "endpoints.yaml")


def policy(tmp_path, rules: str):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nrules:\n" + textwrap.indent(textwrap.dedent(rules).strip(), "  ") + "\n")
    return load(path, CATALOG)


def exchange(host: str, path: str, body: dict, service: str, formats: tuple[str, ...]):
    req = providers.HttpRequest.from_url_parts("POST", host, path, {"content-type": "application/json"},
                                               json.dumps(body).encode())
    return providers.parse_request(req, service, formats).exchange


def openai_chat(tools=(), calls=()) -> object:
    messages = [{"role": "user", "content": "hello"}]
    if calls:
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(calls)]})
    body = {"model": "gpt-4o", "messages": messages}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in tools]
    return exchange("api.openai.com", "/v1/chat/completions", body, "openai", ("openai",))


def anthropic_messages(tools=(), calls=()) -> object:
    messages = [{"role": "user", "content": "hello"}]
    if calls:
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"t{i}", "name": n, "input": a} for i, (n, a) in enumerate(calls)]})
    body = {"model": "claude-x", "max_tokens": 10, "messages": messages,
            "tools": [{"name": n, "input_schema": {"type": "object"}} for n in tools]}
    return exchange("api.anthropic.com", "/v1/messages", body, "anthropic", ("anthropic",))


def action(pol, x) -> str:
    service = CATALOG.services["openai"]
    return decide(pol, Subject(), Request(service, x, (), "inspected")).action


@pytest.mark.parametrize("build", [openai_chat, anthropic_messages])
def test_a_rule_matches_offered_tools_by_name_glob_and_regex(tmp_path, build):
    pol = policy(tmp_path, """
        - {id: no-shell, when: {tools: [shell, "re:exec_.*", "Write*"]}, action: block}
    """)
    assert action(pol, build(tools=["exec_python"])) == "block"
    assert action(pol, build(tools=["read_file", "write_file"])) == "block"  # globs ignore case
    assert action(pol, build(tools=["read_file", "executor"])) == "allow"  # a regex matches the whole name
    assert action(pol, build(calls=[("shell", {"command": "ls"})])) == "block"  # a call in the history counts too
    assert action(pol, build()) == "allow"


@pytest.mark.parametrize("build", [openai_chat, anthropic_messages])
def test_argument_conditions_hold_for_one_call(tmp_path, build):
    pol = policy(tmp_path, r"""
        - id: no-rm
          when: {tools: {names: [run*], args: {command: "re:rm\\s+-rf", cwd: ["/etc/*", "/root*"]}}}
          action: block
    """)
    assert action(pol, build(calls=[("run", {"command": "sudo rm -rf x", "cwd": "/etc/nginx"})])) == "block"
    # both conditions, but on two different calls: no match
    assert action(pol, build(calls=[("run", {"command": "rm -rf x", "cwd": "/tmp"}),
                                    ("run", {"command": "ls", "cwd": "/etc"})])) == "allow"
    assert action(pol, build(calls=[("other", {"command": "rm -rf x", "cwd": "/etc"})])) == "allow"
    assert action(pol, build(tools=["run"])) == "allow"  # an argument condition needs a call, not a definition


def test_argument_paths_reach_into_objects_and_lists(tmp_path):
    pol = policy(tmp_path, """
        - {id: no-etc, when: {tools: {args: {files.path: "/etc/*", force: "true"}}}, action: block}
    """)
    hit = {"files": [{"path": "/tmp/a"}, {"path": "/etc/shadow"}], "force": True}
    assert action(pol, openai_chat(calls=[("copy", hit)])) == "block"
    assert action(pol, openai_chat(calls=[("copy", {**hit, "force": False})])) == "allow"
    assert action(pol, openai_chat(calls=[("copy", {"files": "/etc/shadow", "force": True})])) == "allow"  # no path


@pytest.mark.parametrize("when, message", [
    ("{tools: {}}", "'tools' needs 'names' or 'args'"),
    ("{tools: {names: [x], argz: {a: b}}}", "argz"),
    ("{tools: {args: [a]}}", "'args' must map argument paths"),
    ("{tools: {args: {a..b: x}}}", "is not an argument path"),
    ("{tools: {args: {a: 're:('}}}", "bad regular expression"),
])
def test_a_bad_tools_condition_names_file_and_line(tmp_path, when, message):
    with pytest.raises(RulesError) as e:
        policy(tmp_path, f"- {{id: r, when: {when}, action: block}}")
    assert message in str(e.value) and "policy.yaml:3" in str(e.value)


def test_strip_names_the_offered_tools_it_removes_and_lets_later_rules_apply_otherwise(tmp_path):
    pol = policy(tmp_path, """
        - {id: no-shell, when: {tools: [shell, "exec_*"]}, action: strip}
        - {id: then-block, when: {tools: [shell]}, action: block}
    """)
    service = CATALOG.services["openai"]
    d = decide(pol, Subject(), Request(service, openai_chat(tools=["read_file", "shell", "exec_sql"]), (), "inspected"))
    assert (d.action, d.rule, d.strip_tools) == ("strip", "no-shell", ["exec_sql", "shell"])
    assert "strip tools exec_sql, shell" in d.reason
    # only called in the history, not offered: nothing to strip, the next rule decides
    d = decide(pol, Subject(), Request(service, openai_chat(calls=[("shell", {})]), (), "inspected"))
    assert (d.action, d.rule) == ("block", "then-block")


@pytest.mark.parametrize("build, paths", [
    (openai_chat, [("tools", 0), ("tools", 1)]),
    (anthropic_messages, [("tools", 0), ("tools", 1)]),
])
def test_parsers_record_where_each_offered_tool_is(build, paths):
    assert [t.path for t in build(tools=["a", "b"]).tools] == paths


def test_gemini_and_bedrock_tools_have_their_paths():
    gemini = exchange("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.0-flash:generateContent",
                      {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                       "tools": [{"functionDeclarations": [{"name": "a"}, {"name": "b"}]}]}, "gemini", ("gemini",))
    assert [(t.name, t.path) for t in gemini.tools] == [("a", ("tools", 0, "functionDeclarations", 0)),
                                                        ("b", ("tools", 0, "functionDeclarations", 1))]
    bedrock = exchange("bedrock-runtime.us-east-1.amazonaws.com", "/model/anthropic.claude-3/converse",
                       {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                        "toolConfig": {"tools": [{"toolSpec": {"name": "a", "inputSchema": {"json": {}}}}]}},
                       "bedrock", ("bedrock",))
    assert [(t.name, t.path) for t in bedrock.tools] == [("a", ("toolConfig", "tools", 0))]


@pytest.mark.parametrize("when", ["{models: [x]}", "{tools: {names: [x], args: {a: b}}}"])
def test_strip_needs_a_tools_condition_on_names(tmp_path, when):
    with pytest.raises(RulesError) as e:
        policy(tmp_path, f"- {{id: r, when: {when}, action: strip}}")
    assert "'action: strip'" in str(e.value) and "policy.yaml:3" in str(e.value)


def test_arguments_that_do_not_parse_one_way_are_judged_on_their_text(tmp_path):
    """A repeated key (one parser reads `ls`, another `rm -rf /`) or arguments cut off must not slip past a rule."""
    pol = policy(tmp_path, r"""
        - {id: no-rm, when: {tools: {names: [run], args: {command: "re:rm\\s+-rf"}}}, action: block}
    """)

    def chat(arguments: str):
        call = {"id": "c0", "type": "function", "function": {"name": "run", "arguments": arguments}}
        return exchange("api.openai.com", "/v1/chat/completions", {"model": "gpt-4o", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]}]},
            "openai", ("openai",))

    assert action(pol, chat('{"command": "rm -rf /", "command": "ls"}')) == "block"
    assert action(pol, chat('{"command": "rm -rf /tmp/x"')) == "block"  # cut off
    assert action(pol, chat('{"command": "ls", "command": "pwd"}')) == "allow"


def test_provider_hosted_mcp_servers_are_governed_by_server_url(tmp_path):
    """OpenAI Responses `tools[{type: mcp, server_url}]` and Anthropic `mcp_servers[{url}]`: the model provider
    calls the MCP server for the client, so the request is where the gateway can say no, by the server's host."""
    responses = exchange("api.openai.com", "/v1/responses", {
        "model": "gpt-4o", "input": "hi",
        "tools": [{"type": "mcp", "server_label": "wiki", "server_url": "https://mcp.example-wiki.com/sse"},
                  {"type": "function", "name": "lookup", "parameters": {}}]}, "openai", ("openai",))
    claude = exchange("api.anthropic.com", "/v1/messages", {
        "model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
        "mcp_servers": [{"type": "url", "url": "https://mcp.linear.app/mcp", "name": "linear"}]},
        "anthropic", ("anthropic",))
    assert [(t.name, t.server, t.path) for t in responses.tools] == [
        ("wiki", "mcp.example-wiki.com", ("tools", 0)), ("lookup", "", ("tools", 1))]
    assert [(t.name, t.server, t.path) for t in claude.tools] == [("linear", "mcp.linear.app", ("mcp_servers", 0))]
    pol = policy(tmp_path, """
        - id: approved-mcp-only
          when: {tools: {servers_not_in: [mcp.linear.app]}}
          action: block
        - {id: rest, action: allow}
    """)
    assert action(pol, responses) == "block"
    assert action(pol, claude) == "allow"
    assert action(pol, openai_chat(tools=["lookup"])) == "allow"  # a function tool has no server to approve
