"""`chambers agents`: create, list, show, update and delete agents (the same service as /api/agents)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from chambers.cli.common import ConfigFile, DatabaseUrl, DataDir, settings_from
from chambers.cli.controller_common import operator, with_controller
from chambers.core.controller import Controller
from chambers.core.controller.models import Agent
from chambers.core.ports import Store

app = typer.Typer(
    no_args_is_help=True, help="Manage agents (model, prompt, tools, policy; identified by a DID)."
)

Org = Annotated[str, typer.Option(help="Organisation name.")]
Model = Annotated[str | None, typer.Option(help="Model as provider/model (default: the server's default).")]
Prompt = Annotated[str | None, typer.Option("--system-prompt", help="System prompt text.")]
PromptFile = Annotated[
    Path | None, typer.Option("--system-prompt-file", help="Read the system prompt from a file.")
]
Tools = Annotated[
    str | None,
    typer.Option(help="Comma-separated built-in tools, or 'all' (shell, read_file, write_file, …)."),
]
PolicyJson = Annotated[
    str | None, typer.Option("--policy", help="Policy as JSON, e.g. '{\"maxTurnsPerSession\": 20}'.")
]
SandboxJson = Annotated[
    str | None, typer.Option("--sandbox", help="Sandbox settings as JSON, e.g. '{\"cpuSeconds\": 60}'.")
]


def _json(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        typer.echo(f"chambers: --{what}: not valid JSON ({exc})", err=True)
        raise typer.Exit(2) from None


def _tools(value: str | None) -> list[str] | None:
    if value is None or value.strip() == "all":
        return None
    return [t.strip() for t in value.split(",") if t.strip()]


def _prompt(text: str | None, path: Path | None) -> str | None:
    if path is not None:
        return path.read_text()
    return text


def _show(agent: Agent, default_model: str) -> str:
    from chambers.api.agents import agent_out

    return json.dumps(agent_out(agent, default_model).model_dump(), indent=2)


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="The agent's name.")],
    org: Org = "default",
    model: Model = None,
    system_prompt: Prompt = None,
    system_prompt_file: PromptFile = None,
    tools: Tools = None,
    policy: PolicyJson = None,
    sandbox: SandboxJson = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Create an agent with a new Ed25519 key pair; print its DID on stdout."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(controller: Controller, store: Store) -> Agent:
        return await controller.agents.create(
            await operator(store, org),
            name=name,
            model=model,
            system_prompt=_prompt(system_prompt, system_prompt_file),
            tools=_tools(tools),
            sandbox=_json(sandbox, "sandbox"),
            policy=_json(policy, "policy"),
        )

    agent = with_controller(settings, work)
    typer.echo(f"created agent {agent.name!r} ({agent.id}) in {org}", err=True)
    typer.echo(agent.did)


@app.command("list")
def list_agents(
    org: Org = "default",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """List the organisation's agents (its default agent is made if missing)."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(controller: Controller, store: Store) -> list[Agent]:
        return await controller.agents.usable(await operator(store, org))

    typer.echo("DID\tNAME\tMODEL\tDEFAULT\tCREATED")
    for agent in with_controller(settings, work):
        default = "yes" if agent.is_default else "-"
        model = agent.model or f"{settings.default_model} (server default)"
        typer.echo(f"{agent.did}\t{agent.name}\t{model}\t{default}\t{agent.created_at.isoformat()}")


@app.command("show")
def show(
    did: Annotated[str, typer.Argument(help="The agent's DID.")],
    org: Org = "default",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Print an agent as JSON (never its private key)."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(controller: Controller, store: Store) -> Agent:
        return await controller.agents.by_did((await operator(store, org)).org_id, did)

    typer.echo(_show(with_controller(settings, work), settings.default_model))


@app.command("update")
def update(
    did: Annotated[str, typer.Argument(help="The agent's DID.")],
    org: Org = "default",
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    model: Model = None,
    system_prompt: Prompt = None,
    system_prompt_file: PromptFile = None,
    tools: Tools = None,
    policy: Annotated[
        str | None, typer.Option("--policy", help="Replace the policy (JSON; '{}' clears it).")
    ] = None,
    sandbox: SandboxJson = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Change the given fields of an agent and print it."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if model is not None:
        changes["model"] = model
    prompt = _prompt(system_prompt, system_prompt_file)
    if prompt is not None:
        changes["system_prompt"] = prompt
    if tools is not None:
        changes["tools"] = _tools(tools)
    if policy is not None:
        changes["policy"] = _json(policy, "policy")
    if sandbox is not None:
        changes["sandbox"] = _json(sandbox, "sandbox")

    async def work(controller: Controller, store: Store) -> Agent:
        return await controller.agents.update(await operator(store, org), did, changes)

    typer.echo(_show(with_controller(settings, work), settings.default_model))


@app.command("delete")
def delete(
    did: Annotated[str, typer.Argument(help="The agent's DID.")],
    org: Org = "default",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Delete an agent: it takes no more turns and its grants end; its session log stays verifiable."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(controller: Controller, store: Store) -> None:
        await controller.agents.delete(await operator(store, org), did)

    with_controller(settings, work)
    typer.echo(f"deleted {did}", err=True)
