"""Which recipe a run trains with: preset < ``--config`` < flags, or, when it resumes, the
checkpoint's recipe with the settings named explicitly this time on top."""
from __future__ import annotations

from ..recipes import Recipe, load_config, preset, preset_for, recipe_fields


def explicit_flags(args) -> dict:
    """The recipe settings given as flags (the parser leaves the others unset)."""
    return {k: getattr(args, k) for k in recipe_fields() if hasattr(args, k)}


def resolve_recipe(args) -> tuple[Recipe, str]:
    """Preset < config < flags; returns the recipe and a line saying where it came from."""
    config = load_config(args.config) if args.config else {}
    flags = explicit_flags(args)
    name = args.preset or config.pop("preset", None)
    config.pop("preset", None)
    base, origin = {}, "defaults (DESIGN.md section 3)"
    if name:
        base, origin = dict(preset(name).recipe), f"preset {name}"
    else:
        merged = {**config, **flags}
        found = preset_for(merged.get("model"), merged.get("dataset"))
        if found:
            base, origin = dict(found.recipe), f"preset {found.name} (the paper's recipe for this model and dataset)"
    values = {**base, **config, **flags}
    if config:
        origin += f" + {args.config}"
    if flags:
        origin += " + flags (" + ", ".join(sorted(flags)) + ")"
    recipe = Recipe(**values)
    return recipe, origin


def resumed_recipe(args, saved: dict, resume_path: str) -> tuple[Recipe, str]:
    """The checkpoint's recipe with this run's config and flags on top (a preset's defaults do
    not override what the checkpoint trained with); the origin line names what changed."""
    explicit = {**(load_config(args.config) if args.config else {}), **explicit_flags(args)}
    explicit.pop("preset", None)
    changed = {k: (saved.get(k), v) for k, v in explicit.items() if saved.get(k) != v}
    recipe = Recipe(**{**saved, **explicit})
    return recipe, f"checkpoint {resume_path}" + (f" with changes {changed}" if changed else "")
