"""The inputs of :func:`lamina.compare`, resolved and streamed in step.

Each of ``a`` and ``b`` becomes a :class:`Side`: a model (run on the texts), activations
captured at every position (rows per text), or rows given outright (a dict of arrays, an
activation store, activations captured at one position). :func:`plan` checks that the two
sides give the same rows (the same texts; identical tokenization for token rows) before any
forward pass, and :func:`batches` walks the texts once: per batch of texts both models run and
the two sides' rows come out together, aligned row for row.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lamina.activations import Activations
from lamina.errors import LaminaError
from lamina.models import Model, load
from lamina.store import Store

#: The site request used when none is given; for arrays, stores and activations it falls
#: back to every site when no site name matches it.
DEFAULT_SITES = "hidden.*"
#: Rows of given arrays per step when neither side is run on texts.
ROW_BLOCK = 4096


@dataclass
class Side:
    """One input of :func:`lamina.compare`, resolved.

    Exactly one of ``model`` (run on the texts), ``acts`` (captured at every position: rows
    per text) and ``arrays`` (site -> ``[N, d]`` rows as given) is set. ``strings``: the texts
    behind the rows where known; ``ids``: token ids per text (filled by :func:`plan`).
    """

    label: str
    sites: list[str]
    model: Model | None = None
    acts: Activations | None = None
    arrays: dict[str, Any] | None = None
    strings: list[str] | None = None
    ids: list[list[int]] = field(default_factory=list)
    dims: dict[str, int] = field(default_factory=dict)

    @property
    def per_text(self) -> bool:
        return self.arrays is None

    @property
    def n_given(self) -> int:
        assert self.arrays is not None
        return len(next(iter(self.arrays.values())))


def _select(names: Sequence[str], request: Any, which: str) -> list[str]:
    """The names (in their own order) matching the request's globs; every name when the
    request is the default and matches none."""
    patterns = [request] if isinstance(request, str) else list(request or [])
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise LaminaError(f"sites_{which} must be a site name, a glob or a list of them, not "
                          f"{request!r}.", cli=f"--site-{which} must be a site name or glob.")
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen and patterns == [DEFAULT_SITES]:
        return list(names)
    if not chosen:
        raise LaminaError(f"No site of {which} matches {request!r}: it has "
                          f"{', '.join(map(str, names))}.",
                          cli=f"No site of model {which.upper()} matches --site-{which} "
                              f"{' '.join(patterns)}: it has {', '.join(map(str, names))}.")
    return chosen


def _array(site: str, value: Any, which: str) -> torch.Tensor:
    """One site's ``[N, d]`` rows of a dict input, as a tensor, checked."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise LaminaError(f"{which}[{site!r}] must hold numbers, not {value.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu()
    else:
        raise LaminaError(f"{which}[{site!r}] must be a numpy array or tensor [N, d], not "
                          f"{type(value).__name__}.")
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise LaminaError(f"{which}[{site!r}] has shape {tuple(t.shape)}: give [N, d] rows "
                          "(N inputs, d features), e.g. x.reshape(len(x), -1).")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise LaminaError(f"{which}[{site!r}] holds NaN or infinite values: remove or fix "
                          "those rows.")
    return t


def _from_dict(x: Mapping[Any, Any], request: Any, which: str) -> Side:
    if not x:
        raise LaminaError(f"{which} is an empty dict: give {{site: array [N, d]}}.")
    names = [str(k) for k in x]
    sites = _select(names, request, which)
    arrays = {s: _array(s, x[k], which) for k, s in zip(x, names, strict=True) if s in sites}
    sizes = {s: len(v) for s, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise LaminaError(f"The arrays of {which} have different numbers of rows ({sizes}): "
                          "every site must hold the same N inputs.")
    return Side("arrays", sites, arrays=arrays)


def _from_acts(acts: Activations, request: Any, which: str) -> Side:
    label = str(acts.meta.get("model", "activations"))
    sites = _select(acts.sites, request, which)
    if acts.all_positions:
        flat = [s for s in sites if acts[s].ndim < 3]
        if flat:
            raise LaminaError(f"{flat[0]} of {which} has no sequence axis: compare it on "
                              "activations captured at one position, or leave it out.")
        side = Side(label, sites, acts=acts, strings=list(acts.strings))
        side.ids = [acts.token_ids[i, : int(n)].tolist() for i, n in enumerate(acts.lengths)]
        side.dims = {s: int(np.prod(acts[s].shape[2:])) for s in sites}
        return side
    arrays = {s: _array(s, acts[s].flatten(1), which) for s in sites}
    return Side(label, sites, arrays=arrays, strings=list(acts.strings))


def _from_store(store: Store, request: Any, which: str) -> Side:
    store.require_complete()
    sites = _select(store.sites, request, which)
    return Side(f"{store.manifest['model']} (store)", sites,
                arrays={s: store[s].flat() for s in sites}, strings=store.strings)


def resolve(x: Any, request: Any, which: str) -> Side:
    """``x`` (a model, a model name or path, :class:`Activations`, a store or its path, a
    ``.safetensors`` file of :meth:`Activations.save`, or a dict ``{site: [N, d]}``) as a
    :class:`Side` whose sites match ``request``."""
    if isinstance(x, Mapping) and not isinstance(x, Activations):
        return _from_dict(x, request, which)
    if isinstance(x, Activations):
        return _from_acts(x, request, which)
    if isinstance(x, Store):
        return _from_store(x, request, which)
    if isinstance(x, (str, os.PathLike)) and str(x).strip():
        p = Path(x)
        if p.is_dir() and (p / "manifest.json").is_file():
            return _from_store(Store(p), request, which)
        if p.suffix == ".safetensors" and p.is_file():
            return _from_acts(Activations.load(p), request, which)
    if isinstance(x, (str, os.PathLike, Model, tuple)):
        model = load(x)
        sites = [s.name for s in model.resolve_sites(request)]
        return Side(model.name, sites, model=model)
    raise LaminaError(f"{which} must be a model (or its name or path), Activations, an "
                      f"activation store (or its path) or a dict {{site: array [N, d]}}, not "
                      f"{type(x).__name__}.")


def resolve_pair(a: Any, b: Any, sites_a: Any, sites_b: Any) -> tuple[Side, Side]:
    """Both sides; the same model (an equal name or path, or the same object) is loaded
    once and shared."""
    side_a = resolve(a, sites_a, "a")
    same = a is b or (isinstance(a, (str, os.PathLike)) and isinstance(b, (str, os.PathLike))
                      and str(a) == str(b))
    if same and side_a.model is not None:
        model = side_a.model
        return side_a, Side(model.name, [s.name for s in model.resolve_sites(sites_b)],
                            model=model)
    return side_a, resolve(b, sites_b, "b")


def read_texts(texts: Any, corpus: Any) -> list[str] | None:
    """The texts to run: ``texts`` (a list of strings) or ``corpus`` split into its
    non-empty lines (a :class:`~pathlib.Path` is read as a UTF-8 file; a ``str`` is the text
    itself, never a file name)."""
    from lamina.corpus import read_lines

    if texts is not None and corpus is not None:
        raise LaminaError("Give texts= or corpus=, not both.",
                          cli="Give one of --corpus, --lines and --text.")
    if corpus is not None:
        if isinstance(corpus, Path):
            return read_lines(corpus, option="corpus")
        if not isinstance(corpus, str):
            raise LaminaError(f"corpus must be a text (str) or a file (pathlib.Path), not "
                              f"{type(corpus).__name__}.")
        texts = [ln.strip() for ln in corpus.splitlines() if ln.strip()]
        if not texts:
            raise LaminaError("The corpus has no non-empty line.")
        return texts
    if texts is None:
        return None
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad or not texts:
        what = f"text {bad[0]} is {texts[bad[0]]!r}" if bad else "no texts were given"
        raise LaminaError(f"texts must be non-empty strings: {what}.",
                          cli=f"Every input must be a non-empty text: {what}.")
    return texts


@dataclass
class Plan:
    """What one pass will do: the texts (``None`` when both sides are given rows), the
    rows mode, and ``n``, the rows compared (after ``max_rows``)."""

    a: Side
    b: Side
    texts: list[str] | None
    rows: str
    pooling: str
    n: int
    n_available: int
    truncated: bool = False


def _same_tokens(a: Side, b: Side, texts: list[str]) -> None:
    """Refuse token rows unless the two sides tokenize every text identically."""
    def vocab(side: Side) -> Any:
        return side.model.tokenizer.get_vocab() if side.model is not None and \
            side.model.tokenizer is not None else None

    va, vb = vocab(a), vocab(b)
    differ = va is not None and vb is not None and va != vb
    where = next((i for i, (x, y) in enumerate(zip(a.ids, b.ids, strict=True)) if x != y), None)
    if differ or where is not None:
        why = ("their tokenizers differ" if where is None else
               f"text {where} is tokenized differently ({len(a.ids[where])} tokens for "
               f"{a.label}, {len(b.ids[where])} for {b.label}"
               + ("; other vocabularies)" if differ else ")"))
        raise LaminaError(
            f"rows='tokens' needs identical tokenization, but {why}: token positions cannot be "
            "aligned. Use rows='pooled' (one row per text: the mean over its tokens, or its "
            "last token with pooling='last').",
            cli=f"--rows tokens needs identical tokenization, but {why}: use --rows pooled.")


def same_tokenization(a: Model, b: Model, texts: Sequence[str], *, truncate: bool = False
                      ) -> bool:
    """Whether ``a`` and ``b`` have the same vocabulary and give every text the same token
    ids (then ``rows="tokens"`` applies; else compare pooled rows)."""
    if a is b:
        return True
    if a.tokenizer is None or b.tokenizer is None or \
            a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        return False
    return a.to_tokens(list(texts), truncate=truncate) == b.to_tokens(list(texts),
                                                                    truncate=truncate)


def _rows_per_text(side: Side, rows: str) -> int:
    return sum(len(s) for s in side.ids) if rows == "tokens" else len(side.ids)


def plan(a: Side, b: Side, texts: list[str] | None, rows: str, pooling: str,
         max_rows: int | None, truncate: bool) -> Plan:
    """Check that ``a`` and ``b`` give the same rows and count them (nothing runs yet)."""
    text_sides = [s for s in (a, b) if s.per_text]
    if text_sides:
        known = [s.strings for s in (a, b) if s.strings is not None]
        if texts is None and not known:
            raise LaminaError("A model needs texts to run on: give texts= (a list of strings) "
                              "or corpus= (a text, or a pathlib.Path of one).",
                              cli="Give the texts: --corpus FILE, --lines FILE or --text.")
        texts = list(known[0]) if texts is None else texts
        for s in known:
            if list(s) != texts:
                raise LaminaError("The two inputs hold different texts: stored activations "
                                  "can only be compared on the texts they were captured from.")
        for s in text_sides:
            if s.model is not None:
                s.ids = s.model.to_tokens(texts, truncate=truncate)
        if rows == "tokens" and len(text_sides) == 2:
            _same_tokens(a, b, texts)
        n = _rows_per_text(text_sides[0], rows)
    else:
        texts, n = None, a.n_given
    counts = {s.label + f" ({w})": (s.n_given if not s.per_text else n)
              for w, s in (("a", a), ("b", b))}
    if len(set(counts.values())) > 1:
        raise LaminaError(f"The two inputs give different numbers of rows ({counts}): they must "
                          "be the same inputs, row for row.")
    kept = n if max_rows is None else min(n, max_rows)
    if kept < 2:
        raise LaminaError(f"Only {kept} row(s) to compare: the measures need at least 2 "
                          "(more texts, or rows='tokens').")
    for s in (a, b):
        if s.model is not None:
            probe = s.model.collect(s.ids[:1], s.sites, positions="last", progress=False)
            s.dims = {site: int(np.prod(probe[site].shape[1:])) for site in s.sites}
        elif s.arrays is not None:
            s.dims = {site: int(np.prod(v.shape[1:])) for site, v in s.arrays.items()}
    return Plan(a, b, texts, rows, pooling, kept, n, kept < n)


def _pool(t: torch.Tensor, lengths: torch.Tensor, rows: str, pooling: str) -> torch.Tensor:
    """``[B, S, d]`` (zeros after each text's ``lengths`` tokens) -> token rows ``[sum, d]``
    in text order, or one row per text (mean over its tokens, or its last token)."""
    mask = torch.arange(t.shape[1])[None, :] < lengths[:, None]
    if rows == "tokens":
        return t[mask]
    if pooling == "last":
        return t[torch.arange(len(t)), lengths - 1]
    summed = (t * mask[:, :, None]).sum(1, dtype=torch.float64)
    return summed.div(lengths[:, None]).to(t.dtype)


def _text_rows(side: Side, lo: int, hi: int, p: Plan, batch_size: int,
               ran: dict[int, Any]) -> dict[str, torch.Tensor]:
    """The rows of texts ``lo..hi`` of a side that runs (or holds) them. ``ran``: the
    capture of this batch per model (a model on both sides runs once, on both sides' sites)."""
    if side.model is not None:
        key = id(side.model)
        if key not in ran:
            sites = list(dict.fromkeys(
                [*p.a.sites, *p.b.sites] if p.a.model is p.b.model else side.sites))
            ran[key] = side.model.collect(side.ids[lo:hi], sites, positions="all",
                                          batch_size=batch_size, progress=False)
        tensors, lengths = ran[key].tensors, ran[key].lengths
    else:
        assert side.acts is not None
        tensors = {s: side.acts[s][lo:hi] for s in side.sites}
        lengths = side.acts.lengths[lo:hi]
    return {s: _pool(tensors[s].flatten(2).float(), lengths, p.rows, p.pooling)
            for s in side.sites}


def _given_rows(side: Side, lo: int, hi: int) -> dict[str, torch.Tensor]:
    assert side.arrays is not None
    out = {}
    for s, arr in side.arrays.items():
        t = torch.as_tensor(arr[lo:hi])
        out[s] = t if t.dtype in (torch.float32, torch.float64) else t.float()
    return out


def batches(p: Plan, batch_size: int, progress: bool | None = None
            ) -> Iterator[tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """One pass: ``(first row, rows_a, rows_b)`` per step, the same rows on both sides
    (``rows_*[site]``: ``[B, d_site]``), until ``p.n`` rows."""
    from tqdm.auto import tqdm

    done = 0
    if p.texts is None:
        steps = range(0, p.n, ROW_BLOCK)
        bar = tqdm(total=p.n, unit="row", desc="compare",
                   disable=not (progress if progress is not None else p.n > ROW_BLOCK))
        for lo in steps:
            hi = min(lo + ROW_BLOCK, p.n)
            yield lo, _given_rows(p.a, lo, hi), _given_rows(p.b, lo, hi)
            bar.update(hi - lo)
        bar.close()
        return
    n_texts = len(p.texts)
    bar = tqdm(total=n_texts, unit="text", desc="compare",
               disable=not (progress if progress is not None else n_texts > batch_size))
    for lo in range(0, n_texts, batch_size):
        hi = min(lo + batch_size, n_texts)
        got: list[dict[str, torch.Tensor]] = []
        ran: dict[int, Any] = {}
        for side in (p.a, p.b):
            if side.per_text:
                got.append(_text_rows(side, lo, hi, p, batch_size, ran))
        m = len(next(iter(got[0].values())))
        ra, rb = [got.pop(0) if s.per_text else _given_rows(s, done, done + m)
                  for s in (p.a, p.b)]
        take = min(m, p.n - done)
        if take < m:
            ra = {s: t[:take] for s, t in ra.items()}
            rb = {s: t[:take] for s, t in rb.items()}
        yield done, ra, rb
        done += take
        bar.update(hi - lo)
        if done >= p.n:
            break
    bar.close()
