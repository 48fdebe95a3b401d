"""The built-in tools (names are part of the contract) and their dispatch onto a SessionSandbox."""

from __future__ import annotations

from typing import Any

from chambers.core.loop import ToolOutcome, ToolSpec
from chambers.sandbox.session import SessionSandbox, ToolResult

_PATH = {
    "type": "string",
    "description": "A path relative to the workspace.",
    "minLength": 1,
    "maxLength": 4096,
}

BUILTIN_TOOLS: list[ToolSpec] = [
    ToolSpec(
        "shell",
        "Run a bash command in the session's workspace (/workspace). The working directory and exported "
        "environment variables persist between calls. Background jobs end with the command; start a "
        "long-lived process with `setsid cmd >log 2>&1 &`. Output is truncated past a size limit.",
        {
            "type": "object",
            "properties": {
                "command": {"type": "string", "minLength": 1, "maxLength": 100_000},
                "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds (optional)."},
            },
            "required": ["command"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        "read_file",
        "Read a text file of the workspace, optionally a window of lines.",
        {
            "type": "object",
            "properties": {
                "path": _PATH,
                "offset_line": {"type": "integer", "minimum": 0},
                "limit_lines": {"type": "integer", "minimum": 1},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        "write_file",
        "Create or overwrite a file of the workspace (parent folders are created).",
        {
            "type": "object",
            "properties": {"path": _PATH, "content": {"type": "string"}},
            "required": ["path", "content"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        "edit_file",
        "Replace an exact string in a file. `old` must occur once unless replace_all is true.",
        {
            "type": "object",
            "properties": {
                "path": _PATH,
                "old": {"type": "string", "minLength": 1},
                "new": {"type": "string"},
                "replace_all": {"type": "boolean"},
            },
            "required": ["path", "old", "new"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        "list_files",
        "List a folder of the workspace, optionally recursively.",
        {
            "type": "object",
            "properties": {"path": _PATH, "recursive": {"type": "boolean"}},
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        "grep",
        "Search the workspace's files for a regular expression; answers `file:line: text`.",
        {
            "type": "object",
            "properties": {
                "pattern": {"type": "string", "minLength": 1, "maxLength": 1000},
                "path": _PATH,
                "glob": {"type": "string", "maxLength": 200},
            },
            "required": ["pattern"],
            "additionalProperties": False,
        },
    ),
]
TOOL_NAMES = frozenset(t.name for t in BUILTIN_TOOLS)


async def run_tool(sandbox: SessionSandbox, name: str, args: dict[str, Any]) -> ToolOutcome:
    """Run a built-in tool. The sandbox validates every argument (they come from the model)."""
    result: ToolResult
    if name == "shell":
        result = await sandbox.shell(args.get("command"), args.get("timeout"))  # type: ignore[arg-type]
    elif name == "read_file":
        result = await sandbox.read_file(
            args.get("path"),  # type: ignore[arg-type]
            args.get("offset_line", 0),
            args.get("limit_lines"),
        )
    elif name == "write_file":
        result = await sandbox.write_file(args.get("path"), args.get("content"))  # type: ignore[arg-type]
    elif name == "edit_file":
        result = await sandbox.edit_file(
            args.get("path"),  # type: ignore[arg-type]
            args.get("old"),  # type: ignore[arg-type]
            args.get("new"),  # type: ignore[arg-type]
            bool(args.get("replace_all", False)),
        )
    elif name == "list_files":
        result = await sandbox.list_files(args.get("path", "."), bool(args.get("recursive", False)))
    elif name == "grep":
        result = await sandbox.grep(args.get("pattern"), args.get("path", "."), args.get("glob"))  # type: ignore[arg-type]
    else:
        return ToolOutcome(ok=False, output=f"unknown tool {name!r}")
    return ToolOutcome(ok=result.ok, output=result.output, truncated=result.truncated)
