"""Named method variants of cmrl: sets of config fields, so an ablation row is one name to rerun.

`python -m cmrl train --variant NAME` applies a variant's fields on top of the defaults (flags and
`--set` given after it still win). Every field is an ordinary config field, saved with the run; a
name only saves typing. The screening order and the rule that picked the default are in
`docs/method_selection.md` (stage 2 kept `baseline`: no finalist beat it on the leave-one-task-out split); the README's ablation table has every variant's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError, RunConfig


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    fields: dict
    """{"section.field": value} applied to a RunConfig."""


_TASK_ROUTING = {"net.routing_input": "cond", "net.obs_takes_context": False}
_TASK_ROUTING_MLP = {**_TASK_ROUTING, "net.cond_embed": "mlp"}
_RELABEL_CONTEXT = {"sac.context_relabel": 1.0, "sac.meta_batch": 8, "sac.kl_weight": 1.0}

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline", "the first cmrl: routing from observation x z, z also fed to the modules",
            {}),
    Variant("routing-only-mlp", "z drives the routing only (modules read the state alone), MLP "
            "condition embedding; routing still reads observation x z",
            {"net.obs_takes_context": False, "net.cond_embed": "mlp"}),
    Variant("task-routing", "routing from z alone (task-level), modules read the state alone",
            _TASK_ROUTING),
    Variant("task-routing-mlp", "task-routing with an MLP condition embedding", _TASK_ROUTING_MLP),
    Variant("context-dropout", "task-routing-mlp; 30% of updates give a task no transitions (text "
            "alone), the rest 1-64", {**_TASK_ROUTING_MLP, "sac.context_dropout": 0.3}),
    Variant("text-prior", "context-dropout, and the KL measured against the text's own factor",
            {**_TASK_ROUTING_MLP, "sac.context_dropout": 0.3, "sac.kl_prior": "text"}),
    Variant("text-routing", "task-routing-mlp; the routing also reads the goal-text embedding",
            {**_TASK_ROUTING_MLP, "net.text_routing": True}),
    Variant("verb-object-encoder", "task-routing-mlp; goal text embedded as [verb ; object]",
            {**_TASK_ROUTING_MLP, "net.goal_encoding": "verb_object"}),
    Variant("verb-object-routing", "verb-object-encoder; the object part drives the first routing "
            "layer, the verb part the later ones (the seed's Fig. 7)",
            {**_TASK_ROUTING_MLP, "net.goal_encoding": "verb_object", "net.text_routing": True}),
    Variant("contrastive", "task-routing-mlp; InfoNCE task discrimination on the transitions' "
            "posterior (weight 1)", {**_TASK_ROUTING_MLP, "sac.z_contrastive": 1.0}),
    Variant("td3bc", "task-routing-mlp with TD3+BC's own weighting of the behaviour term",
            {**_TASK_ROUTING_MLP, "sac.bc_form": "td3bc"}),
    Variant("relabel-context", "contexts of other variations with rewards recomputed for this "
            "one's goal (all of them), 8 variations per task and update, KL weight 1 (so prior "
            "samples stay near the goals the posteriors cover); any context agent",
            _RELABEL_CONTEXT),
)}


DEFAULT_VARIANT = "baseline"
"""The variant the recipes, the app's training presets and the shipped checkpoint use: chosen by the
rule in docs/method_selection.md. Stage 2 kept `baseline`: neither finalist (text-prior,
context-dropout) beat it on the leave-one-task-out split, where every run scored 0."""


def variant_fields(name: str) -> dict:
    """The {"section.field": value} of a named variant."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return dict(VARIANTS[name].fields)


def variant_of(cfg: RunConfig) -> str | None:
    """The name of the variant whose fields a config has (all fields any variant touches must
    match; the rest of the config is ignored), or None."""
    touched = {k for v in VARIANTS.values() for k in v.fields}
    data, defaults = cfg.to_dict(), RunConfig().to_dict()

    def get(d, key):
        section, field = key.split(".")
        return d[section][field]

    have = {k: get(data, k) for k in touched}
    for v in VARIANTS.values():
        if have == {k: v.fields.get(k, get(defaults, k)) for k in touched}:
            return v.name
    return None
