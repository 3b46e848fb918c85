"""Canonical site names (TransformerLens's) and how a request for sites is resolved.

Names:

* ``hook_embed``, ``hook_pos_embed`` — token and (absolute) position embeddings ``[..., d_model]``
* ``blocks.{L}.hook_resid_pre`` — block ``L``'s input
* ``blocks.{L}.attn.hook_q|hook_k|hook_v|hook_z`` — per head, ``[..., n_heads, d_head]``
  (q/k before rotary embeddings; with grouped-query attention k/v have ``n_kv_heads`` heads,
  not repeated: see ``docs/sites.md``)
* ``blocks.{L}.hook_attn_out``, ``blocks.{L}.hook_mlp_out`` — sublayer outputs ``[..., d_model]``
* ``blocks.{L}.hook_resid_mid`` — between attention and MLP (not in parallel-attention blocks)
* ``blocks.{L}.hook_resid_post`` — block output (BERT: before the block's final LayerNorm,
  whose output is ``blocks.{L}.hook_normalized_resid_post``)
* ``ln_final.hook_normalized`` — the final norm's output (causal families)
* ``hidden.{i}`` — exactly Hugging Face's ``output_hidden_states[i]``: ``hidden.0`` is the
  embedding output, ``hidden.{i}`` block ``i-1``'s output, *except* that for GPT-2, GPT-NeoX and
  Llama the last one (``hidden.{n_layers}``) is after the final norm, unlike
  ``blocks.{n_layers-1}.hook_resid_post``
* ``module:<dotted.path>`` — the output of any submodule (path as in ``print(model.hf_model)``)

Requests accept exact names, globs (``blocks.*.hook_resid_post``), the short form
``resid_post.4`` / ``q.3`` / ``resid_post.*``, and ``module:`` paths.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

import torch.nn as nn

from lamina.errors import UnknownSiteError, UnsupportedArchitectureError, suggest
from lamina.families import SUPPORTED_FAMILIES, Dims, Family, HookPoint

BLOCK_SITES = (
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
    "hook_normalized_resid_post",
)
PER_HEAD = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z")
SHORT = {s.rsplit(".", 1)[-1].removeprefix("hook_"): s for s in BLOCK_SITES}
GLOBAL_SHORT = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final": "ln_final.hook_normalized",
    "normalized": "ln_final.hook_normalized",
}


@dataclass(frozen=True)
class Site:
    """A resolved site: its ``name``, where to hook (``point``, path from the model root) and
    ``depth``, the last block that must run before it is available (``-1``: before any block;
    ``None``: only known after the whole forward pass)."""

    name: str
    point: HookPoint
    depth: int | None

    @property
    def per_head(self) -> bool:
        return self.name.endswith(PER_HEAD)

    @property
    def layer(self) -> int | None:
        """Block index for ``blocks.{L}.*`` sites, ``i`` for ``hidden.{i}``, else ``None``."""
        layer = layer_of(self.name)
        return layer if layer >= 0 else None


def layer_of(name: str) -> int:
    """Block index of ``blocks.{L}.*``, ``i`` of ``hidden.{i}``; -1 for other sites."""
    m = re.match(r"^(?:blocks|hidden)\.(\d+)", name)
    return int(m.group(1)) if m else -1


def site_shape(name: str, dims: Dims) -> tuple[int, ...]:
    """Shape of one position's vector at canonical site ``name``, from the model's dims:
    ``(n_heads or n_kv_heads, d_head)`` per head (k/v of grouped-query attention have
    ``n_kv_heads``), else ``(d_model,)``."""
    if name.endswith(("attn.hook_k", "attn.hook_v")):
        return (dims.n_kv_heads, dims.d_head)
    if name.endswith(PER_HEAD):
        return (dims.n_heads, dims.d_head)
    return (dims.d_model,)


def _prefixed(prefix: str, point: HookPoint) -> HookPoint:
    path = f"{prefix}.{point.module}" if prefix else point.module
    return HookPoint(path, point.side, point.transform)


def build_catalog(family: Family, dims: Dims, config: object, prefix: str) -> dict[str, Site]:
    """Every canonical site of a model of ``family``, in forward order (``prefix``: the base
    model's path inside the loaded module)."""
    sites: dict[str, Site] = {}

    def add(name: str, point: HookPoint | None, depth: int | None) -> None:
        if point is not None:
            sites[name] = Site(name, _prefixed(prefix, point), depth)

    n = dims.n_layers
    add("hook_embed", HookPoint(family.embed), -1)
    if family.pos_embed:
        add("hook_pos_embed", HookPoint(family.pos_embed), -1)
    add("hidden.0", HookPoint(family.block(0), "input"), -1)
    for layer in range(n):
        for suffix in BLOCK_SITES:
            make = family.block_sites.get(suffix)
            if make is not None:
                add(f"blocks.{layer}.{suffix}", make(layer, dims, config), layer)
        if layer < n - 1 or family.final_norm is None:
            add(f"hidden.{layer + 1}", HookPoint(family.block(layer)), layer)
    if family.final_norm is not None:
        add(f"hidden.{n}", HookPoint(family.final_norm), None)
        add("ln_final.hook_normalized", HookPoint(family.final_norm), None)
    return sites


def _expand_short(pattern: str) -> str:
    """``resid_post.4`` -> ``blocks.4.hook_resid_post``; ``q.*`` -> ``blocks.*.attn.hook_q``."""
    if pattern in GLOBAL_SHORT:
        return GLOBAL_SHORT[pattern]
    if pattern in SHORT:
        return f"blocks.*.{SHORT[pattern]}"
    if pattern == "hidden":
        return "hidden.*"
    m = re.match(r"^([a-z_]+)\.(\d+|\*)$", pattern)
    if m and m.group(1) in SHORT:
        return f"blocks.{m.group(2)}.{SHORT[m.group(1)]}"
    return pattern


def resolve_sites(
    request: str | Iterable[str],
    catalog: dict[str, Site],
    root: nn.Module,
    family: Family | None,
) -> list[Site]:
    """Turn a request (names, globs, short forms, ``module:`` paths) into sites, in forward
    order, without duplicates. Raises :class:`UnknownSiteError` with the closest names."""
    patterns = _patterns(request)
    chosen: dict[str, Site] = {}
    extra: list[Site] = []
    for raw in patterns:
        if raw.startswith("module:"):
            extra.append(_module_site(raw, root))
            continue
        pattern = _expand_short(raw)
        if family is None:
            raise UnsupportedArchitectureError(
                f"Site {raw!r} needs a known architecture family, and this model "
                f"({type(root).__name__}) has none. Supported families: {SUPPORTED_FAMILIES}. "
                "For any other model, capture a submodule's output with 'module:<dotted.path>' "
                "(paths as printed by print(model.hf_model)).",
                cli=f"Site {raw!r} needs a known architecture family, and this model "
                f"({type(root).__name__}) has none. Supported families: {SUPPORTED_FAMILIES}. "
                "For any other model, capture a submodule's output with --site "
                "'module:<dotted.path>' (paths from `lamina sites --modules`).",
            )
        if any(ch in pattern for ch in "*?["):
            hits = [name for name in catalog if fnmatch.fnmatchcase(name, pattern)]
            if not hits:
                hint = f"No site matches {raw!r}.{suggest(pattern, catalog)} "
                raise UnknownSiteError(hint + "See model.sites for the full list.",
                                       cli=hint + "Run `lamina sites` for the full list.")
        elif pattern in catalog:
            hits = [pattern]
        else:
            hint = f"Unknown site {raw!r}.{suggest(pattern, catalog)} "
            kinds = f" (this model has: {_summary(catalog)})."
            raise UnknownSiteError(hint + "See model.sites for the list" + kinds,
                                   cli=hint + "Run `lamina sites` for the list" + kinds)
        for name in hits:
            chosen[name] = catalog[name]
    ordered = [site for name, site in catalog.items() if name in chosen]
    for site in extra:
        if all(site.name != s.name for s in ordered):
            ordered.append(site)
    return ordered


def _patterns(request: object) -> Sequence[str]:
    """``request`` as a non-empty list of strings, or an :class:`UnknownSiteError`."""
    example = "e.g. sites='blocks.*.hook_resid_post' or ['hidden.0', 'resid_post.3']"
    cli = "Give sites with --site, e.g. --site 'resid_post.*'."
    if isinstance(request, str):
        request = [request]
    elif request is None or isinstance(request, (bytes, Mapping, Set)) or not isinstance(
            request, Iterable):
        raise UnknownSiteError(f"sites must be a site name or a list of names, not "
                               f"{type(request).__name__} {request!r}: {example}.", cli=cli)
    patterns = list(request)
    if not patterns:
        raise UnknownSiteError(f"No site was requested: pass {example}.",
                               cli="No site was requested: " + cli)
    bad = [p for p in patterns if not isinstance(p, str) or not p.strip()]
    if bad:
        raise UnknownSiteError(f"Site names are non-empty strings; sites holds {bad[0]!r} "
                               f"({type(bad[0]).__name__}): {example}.",
                               cli=f"--site {bad[0]!r} is empty. " + cli)
    return patterns


def _module_site(raw: str, root: nn.Module) -> Site:
    path = raw.removeprefix("module:")
    names = [name for name, _ in root.named_modules() if name]
    if path not in names:
        hint = f"{type(root).__name__} has no submodule {path!r}.{suggest(path, names)} "
        raise UnknownSiteError(hint + "Use a dotted path as printed by print(model.hf_model).",
                               cli=hint + "Run `lamina sites --modules` for the paths.")
    return Site(raw, HookPoint(path), None)


def _summary(catalog: dict[str, Site]) -> str:
    kinds = sorted({re.sub(r"^blocks\.\d+\.", "blocks.{L}.", n) for n in catalog
                    if not n.startswith("hidden.")})
    return ", ".join(kinds) + ", hidden.{i}"
