"""``mlapi models [NAME]``: the models on the server, or one model's contract."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mlapi_client.cli.common import connection_options, run_command
from mlapi_client.results import ModelContract, ModelEntry
from mlapi_client.sync_client import Client


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mlapi models`` to the command line."""
    models = subparsers.add_parser(
        "models",
        parents=[connection_options()],
        help="list models and versions, or show one model's tensors",
    )
    models.add_argument("name", nargs="?", help="show this model's contract")
    models.add_argument("--version", type=int, help="with NAME: that version's contract")
    models.set_defaults(run=run_models)


def run_models(args: argparse.Namespace) -> int:
    """List the repository's models, or show one model's contract."""
    if args.name:

        def contract(client: Client) -> ModelContract:
            return client.contract(args.name, args.version)

        return run_command(args, contract, render_contract, dataclasses.asdict)
    return run_command(args, lambda client: client.list_models(), render_entries, _entries_json)


def _entries_json(entries: list[ModelEntry]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(entry) for entry in entries]


def render_entries(entries: list[ModelEntry]) -> str:
    """Render repository entries as an aligned text table."""
    rows = [("MODEL", "VERSION", "STATE", "REASON")]
    rows += [(e.name, e.version or "-", e.state or "-", e.reason or "") for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for name, version, state, reason in rows:
        cells = (name.ljust(widths[0]), version.ljust(widths[1]), state.ljust(widths[2]), reason)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_contract(contract: ModelContract) -> str:
    """Render a model's contract (versions, batching, tensors) as text."""
    lines = [
        f"model: {contract.name}",
        f"versions: {', '.join(contract.versions) or '-'}",
        f"platform: {contract.platform}",
        f"max batch size: {contract.max_batch_size}"
        + (" (shapes below include the batch dimension)" if contract.max_batch_size else ""),
        f"streaming (decoupled): {'yes' if contract.decoupled else 'no'}",
    ]
    for title, tensors in (("inputs", contract.inputs), ("outputs", contract.outputs)):
        lines.append(f"{title}:")
        for t in tensors:
            shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
            lines.append(f"  {t.name}  {t.datatype} {shape}{'  (optional)' if t.optional else ''}")
    return "\n".join(lines)
