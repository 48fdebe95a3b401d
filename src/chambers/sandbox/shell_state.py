"""The persistent state of a session's shell: its working directory and exported variables.

Each `shell` call runs in a fresh bash that first restores this state and, when it exits, reports
the new one on a side channel. The state file (JSON, UTF-8, written atomically) looks like:

    {
      "version": 1,
      "cwd": "src/app",          // relative to the workspace root ("." = the root), or an
                                 // absolute sandbox path when the shell left the workspace (/tmp)
      "env": {"FOO": "1"},       // exported variables set or changed against the base environment
      "unset": ["TERM"]          // base variables the shell unset
    }

Only `cd` and exported variables persist: shell functions, aliases, unexported variables and
background jobs' shell bookkeeping do not. A command that ends by `exec`-ing another program, or
that is killed (timeout), keeps the previous state.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import string
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = 1
MAX_STATE_BYTES = 256 * 1024
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VOLATILE = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "CHAMBERS_SIDE"})

_ALL_VARIABLES = " ".join(f"${{!{first}@}}" for first in string.ascii_letters + "_")
"""Every variable name, by first character: listing them needs no subshell (a fork) in bash."""
_SAVE = (
    r"""
readonly __chambers_side="$CHAMBERS_SIDE"
unset CHAMBERS_SIDE
__chambers_save() {
  [ -n "${__chambers_saved-}" ] && return
  __chambers_saved=1
  {
    printf '%s\0' "$PWD"
    for __chambers_n in ALL_VARIABLES; do
      [[ ${!__chambers_n@a} == *x* ]] && printf '%s=%s\0' "$__chambers_n" "${!__chambers_n}"
    done
  } >"$__chambers_side" 2>/dev/null
}
trap __chambers_save EXIT
"""
).replace("ALL_VARIABLES", _ALL_VARIABLES)


class StateError(ValueError):
    """A state file or a reported state that is not valid."""


@dataclass(frozen=True)
class ShellState:
    cwd: str = "."
    env: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "cwd": self.cwd, "env": dict(self.env), "unset": list(self.unset)}

    @classmethod
    def from_json(cls, data: object) -> ShellState:
        if not isinstance(data, Mapping) or data.get("version") != VERSION:
            raise StateError("not a version 1 shell state")
        cwd, env, unset = data.get("cwd", "."), data.get("env", {}), data.get("unset", [])
        if not isinstance(cwd, str) or not cwd or "\0" in cwd:
            raise StateError("cwd must be a non-empty string")
        if not isinstance(env, Mapping) or not isinstance(unset, list):
            raise StateError("env must be an object and unset a list")
        for name, value in env.items():
            _check_variable(name, value)
        for name in unset:
            if not isinstance(name, str) or not _NAME.match(name):
                raise StateError(f"invalid variable name {name!r}")
        return cls(cwd=cwd, env=dict(env), unset=tuple(unset))


def _check_variable(name: object, value: object) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise StateError(f"invalid variable name {name!r}")
    if not isinstance(value, str) or "\0" in value:
        raise StateError(f"variable {name} must be a string without NUL")


def load_state(path: Path) -> ShellState:
    """The state in `path`; a missing file is the initial state. A corrupt one raises `StateError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ShellState()
    if len(raw) > MAX_STATE_BYTES:
        raise StateError(f"state file {path} is larger than {MAX_STATE_BYTES} bytes")
    try:
        return ShellState.from_json(json.loads(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateError(f"state file {path} is not valid JSON: {error}") from error


def write_state(path: Path, state: ShellState | Mapping[str, Any]) -> None:
    """Write a state (or its JSON form, e.g. what a snapshot restore returned) atomically."""
    if not isinstance(state, ShellState):
        state = ShellState.from_json(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(state.to_json(), ensure_ascii=False, sort_keys=True).encode()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def absolute_cwd(state: ShellState, view_root: str) -> str:
    if posixpath.isabs(state.cwd):
        return posixpath.normpath(state.cwd)
    return posixpath.normpath(posixpath.join(view_root, state.cwd))


def build_script(command: str, state: ShellState, view_root: str) -> str:
    """A bash script that restores `state`, runs `command` (stderr merged into stdout) and reports back."""
    cwd = absolute_cwd(state, view_root)
    notice = f"[the previous working directory {cwd} no longer exists; now in {view_root}]"
    lines = [
        "exec 2>&1",
        f"cd -- {shlex.quote(cwd)} 2>/dev/null || {{ printf '%s\\n' {shlex.quote(notice)}; "
        f"cd -- {shlex.quote(view_root)}; }}",
    ]
    if state.unset:
        lines.append("unset -v " + " ".join(state.unset))
    lines += [f"export {name}={shlex.quote(value)}" for name, value in state.env.items()]
    return "\n".join(lines) + _SAVE + f"eval {shlex.quote(command)}\n"


def parse_report(report: bytes, view_root: str, base_env: Mapping[str, str]) -> ShellState:
    """The state a finished command reported (`cwd\\0NAME=value\\0...`)."""
    if len(report) > MAX_STATE_BYTES:
        raise StateError("the shell state is too large to keep")
    fields = report.decode("utf-8", errors="surrogateescape").split("\0")
    if len(fields) < 2 or fields[-1] != "" or not posixpath.isabs(fields[0]):
        raise StateError("incomplete shell state")
    cwd = posixpath.normpath(fields[0])
    exported: dict[str, str] = {}
    for entry in fields[1:-1]:
        name, sep, value = entry.partition("=")
        if not sep or name in _VOLATILE or not _NAME.match(name):
            continue
        exported[name] = value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    if cwd == view_root:
        relative = "."
    elif cwd.startswith(view_root.rstrip("/") + "/"):
        relative = posixpath.relpath(cwd, view_root)
    else:
        relative = cwd
    env = {name: value for name, value in exported.items() if base_env.get(name) != value}
    unset = tuple(sorted(name for name in base_env if name not in exported))
    return ShellState(cwd=relative, env=env, unset=unset)
