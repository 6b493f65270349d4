"""Catalog column mappings for `reviewgen generate`: which source columns feed each contract field.

Contract fields: ``product_id`` and ``title`` (required), ``category``, ``brand``, ``description``, ``price``
(optional); the per-row rules that apply to them are in ``reviewgen.generate.catalog``.

Mapping (a dict, a YAML file, or a preset name from ``configs/catalogs/<name>.yaml``)::

    columns:
      product_id: index                  # one source column
      price: [sale_price, market_price]  # or a list: first non-null per row wins
      category: {column: product_category_tree, transform: category_tree_first}

Without a mapping every contract field is read from the column of the same name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from reviewgen.core.errors import ReviewgenError

FIELDS = ("product_id", "title", "category", "brand", "description", "price")
REQUIRED = ("product_id", "title")
TRANSFORMS = ("category_tree_first",)
PRESET_DIR = Path(__file__).resolve().parents[1] / "catalogs"


class CatalogError(ReviewgenError, ValueError):
    """A mapping or catalog option is invalid; the message names the file/field."""


def presets() -> list[str]:
    """Names of the bundled presets (configs/catalogs/*.yaml)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) if PRESET_DIR.is_dir() else []


def resolve_mapping(mapping: None | str | Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Normalise a mapping (None, preset name, YAML path or dict) to {field: [{column, transform}]}.

    Each field maps to a list of candidate sources, tried per row in order (first non-null wins).
    """
    doc = _mapping_doc(mapping)
    cols = doc.get("columns", doc)
    if not isinstance(cols, Mapping):
        raise CatalogError(f"mapping 'columns' must be a dict, got {type(cols).__name__}")
    unknown = set(cols) - set(FIELDS)
    if unknown:
        raise CatalogError(f"mapping names unknown fields {sorted(unknown)} (fields: {', '.join(FIELDS)})")
    out: dict[str, list[dict[str, Any]]] = {}
    for field in FIELDS:
        spec = cols.get(field, field if mapping is None else None)
        if spec is None:
            if field in REQUIRED:
                raise CatalogError(f"mapping must name a source column for required field {field!r}")
            out[field] = []
            continue
        out[field] = _field_sources(field, spec)
    return out


def _mapping_doc(mapping: None | str | Mapping[str, Any]) -> Any:
    """The mapping document as given: the identity mapping for None, a dict as is, else the YAML of a file
    or, when no such file exists, of the preset of that name."""
    if mapping is None:
        return {"columns": {f: f for f in FIELDS}}
    if isinstance(mapping, Mapping):
        return dict(mapping)
    if not isinstance(mapping, (str, Path)):
        raise CatalogError(f"mapping must be None, a preset name, a YAML path or a dict, got {type(mapping).__name__}")
    path = Path(mapping)
    if not path.is_file():
        path = PRESET_DIR / f"{mapping}.yaml"
        if not path.is_file():
            raise CatalogError(
                f"mapping {mapping!r} is neither a YAML file nor a preset (presets: {', '.join(presets()) or 'none'})"
            )
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CatalogError(f"{path}: invalid YAML ({e})") from e
    if not isinstance(doc, dict):
        raise CatalogError(f"{path}: expected a mapping with a 'columns' key")
    return doc


def _field_sources(field: str, spec: Any) -> list[dict[str, Any]]:
    """One field's candidate sources ({column, transform} each) from its spec: a column name, a
    {column, transform} dict, or a list of those."""
    srcs = []
    for it in spec if isinstance(spec, list) else [spec]:
        if isinstance(it, str):
            srcs.append({"column": it, "transform": None})
        elif isinstance(it, Mapping) and isinstance(it.get("column"), str):
            tr = it.get("transform")
            if tr is not None and tr not in TRANSFORMS:
                raise CatalogError(f"mapping field {field!r}: unknown transform {tr!r} (known: {TRANSFORMS})")
            srcs.append({"column": it["column"], "transform": tr})
        else:
            raise CatalogError(
                f"mapping field {field!r}: expected a column name, a list, or {{column, transform}}, got {it!r}"
            )
    return srcs


def category_tree_first(v: Any) -> Any:
    """First level of a Flipkart category tree string '["A >> B >> C"]' -> 'A'."""
    if not isinstance(v, str):
        return v
    s = v.strip()
    try:
        parsed = json.loads(s)
        if isinstance(parsed, list) and parsed:
            s = str(parsed[0])
    except (json.JSONDecodeError, ValueError):
        s = s.strip("[]\"' ")
    first = s.split(">>")[0].strip()
    return first or None
