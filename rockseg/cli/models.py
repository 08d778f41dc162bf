"""``rockseg models [MODEL]``: the shipped models, or one model file, with its model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from rockseg.cli.common import app, command, out_console


@app.command()
@command
def models(
    model: Annotated[Optional[str], typer.Argument(help="a model file, or a shipped model's name (default: the model predict uses)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")] = False,
) -> None:
    """Show a model: network, phases, tile, training and its model card (trained on, measured figures, limits)."""
    from rockseg.models import describe_model, resolve_model, shipped_models

    doc = describe_model(resolve_model(model))
    if json_out:
        print(json.dumps(doc))
        return
    if model is None:
        out_console.print("shipped models: " + ", ".join(f"{p.stem}{' (default)' if i == 0 else ''}"
                                                        for i, p in enumerate(shipped_models())))
    out_console.print(card_text(doc), markup=False, highlight=False)


def card_text(doc: dict[str, Any]) -> str:
    """The description of :func:`rockseg.models.describe_model` as plain text, one fact per line."""
    t = doc["training"]
    lines = [
        f"{doc['name']}{' (default for rockseg predict)' if doc['default'] else ''}: {Path(doc['model'])}",
        f"  network: {doc['spatial_dims']}D {doc['arch']}, base {doc['base_channels']}, depth {doc['depth']}, "
        f"{doc['parameters']:,} parameters; tile {doc['tile']}, halo {doc['halo']}",
        "  phases: " + ", ".join(f"{k}={v}" for k, v in doc["phases"].items()),
        f"  training: {t['epochs_run']} epochs, {t['steps']} steps, loss {t['loss']}, schedule {t['schedule']}, "
        f"best validation mean IoU {t['best_val_mean_iou']} (epoch {t['best_epoch']})",
        f"  predict removes specks of up to {doc['specks']} voxels (--specks to change)" if doc["specks"]
        else "  predict keeps every speck (--specks N to remove isolated pieces of up to N voxels)",
    ]
    card = doc["card"]
    if not card:
        return "\n".join([*lines, "  no model card"])
    for key, value in card.items():
        title = key.replace("_", " ")
        if key == "figures":
            lines.append(f"  {title}:")
            lines += [f"    - {', '.join(f'{k} {v}' for k, v in row.items())}" for row in value]
        elif isinstance(value, list):
            lines.append(f"  {title}:")
            lines += [f"    - {item}" for item in value]
        else:
            lines.append(f"  {title}: {value}")
    return "\n".join(lines)
