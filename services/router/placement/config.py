"""A placement pipeline declared as data (a YAML file, a dict, a Helm value), validated
with errors that name the bad key.

    policy: kvferry             # start from a built-in (see builtin.py); keys below override
    short_prompt_tokens: 64
    candidates: 32
    shortlist: 4
    local_candidates: 4
    picker: max_score
    seed: 0
    filters: [healthy, not_excluded, compatible_layout]
    scorers:
      - {name: prefix_hits, weight: 2.0}
      - {name: queued_prefill_tokens, weight: 1.0, token_scale: 4096}
      - {name: transfer_time, weight: 1.0, time_scale_s: 0.01}
    transfer:
      tier_gbps: {same_node: 300, same_nvlink_domain: 200, same_rack: 50, same_zone: 25,
                  elsewhere: 5}
      ewma_alpha: 0.2
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kvferry.errors import ConfigError

from .bandwidth import TransferConfig
from .filters import PAIR_FILTERS, REQUIRED_FILTERS, WORKER_FILTERS, PairFilter, WorkerFilter
from .scorers import PAIR_SCORERS, WORKER_SCORERS, PairScorer, WorkerScorer

PICKERS = ("max_score", "random", "round_robin")
DEFAULT_SHORT_PROMPT_TOKENS = 64


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """One filter or scorer: its name, weight (scorers) and parameters."""

    name: str
    weight: float = 1.0
    params: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    name: str = "custom"
    """The built-in it started from (for logs and status)."""
    filters: tuple[PluginSpec, ...] = (
        PluginSpec("healthy"),
        PluginSpec("not_excluded"),
        PluginSpec("compatible_layout"),
    )
    scorers: tuple[PluginSpec, ...] = ()
    picker: str = "max_score"
    """max_score: the best-scoring option (ties at random); random: a uniform eligible
    decode worker, then prefill worker; round_robin: each side in turn by worker id."""
    candidates: int = 0
    """Workers per side drawn before scoring (prefix-cache holders first, then a seeded
    random sample); 0: every worker (exact, O(workers) per decision)."""
    shortlist: int = 4
    """Best workers per side, by their own scores, that are paired and scored jointly."""
    local_candidates: int = 0
    """Extra decode workers per shortlisted prefill worker drawn from its node and NVLink
    domain (so near pairs are scored even in a large cluster)."""
    short_prompt_tokens: int = DEFAULT_SHORT_PROMPT_TOKENS
    """A request runs whole on a decode worker (no prefill hop) when the part of its
    prompt that worker does not cache is at most this many tokens: moving KV for it costs
    more than computing it where it will be decoded."""
    seed: int = 0
    """Seeds sampling, tie breaks and the random picker (runs are reproducible)."""
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def __post_init__(self) -> None:
        if self.picker not in PICKERS:
            raise ConfigError(f"picker: unknown {self.picker!r}; known: {', '.join(PICKERS)}")
        for name in ("candidates", "local_candidates", "short_prompt_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.shortlist < 1:
            raise ConfigError(f"shortlist must be at least 1, got {self.shortlist}")
        names = [f.name for f in self.filters]
        for i, spec in enumerate(self.filters):
            if spec.name not in WORKER_FILTERS and spec.name not in PAIR_FILTERS:
                known = sorted({*WORKER_FILTERS, *PAIR_FILTERS})
                raise ConfigError(
                    f"filters[{i}]: unknown filter {spec.name!r}; known: {', '.join(known)}"
                )
        for required in REQUIRED_FILTERS:
            if required not in names:
                raise ConfigError(
                    f"filters must include {required!r}: without 'healthy' draining workers"
                    " get new requests, without 'not_excluded' retries repeat failed workers"
                )
        for i, spec in enumerate(self.scorers):
            if spec.name not in WORKER_SCORERS and spec.name not in PAIR_SCORERS:
                known = sorted({*WORKER_SCORERS, *PAIR_SCORERS})
                raise ConfigError(
                    f"scorers[{i}]: unknown scorer {spec.name!r}; known: {', '.join(known)}"
                )
            if not spec.weight >= 0:
                raise ConfigError(f"scorers[{i}].weight must be >= 0, got {spec.weight}")
        for where, specs, build in (
            ("filters", self.filters, build_filter),
            ("scorers", self.scorers, build_scorer),
        ):
            for i, spec in enumerate(specs):
                try:
                    build(spec)
                except (ValueError, TypeError) as err:
                    raise ConfigError(f"{where}[{i}] ({spec.name}): {err}") from None
        if self.picker == "max_score" and not any(s.weight > 0 for s in self.scorers):
            raise ConfigError(
                "picker 'max_score' needs at least one scorer with a positive weight"
                " (or use picker: random / round_robin)"
            )


def build_filter(spec: PluginSpec) -> WorkerFilter | PairFilter:
    cls: type[WorkerFilter] | type[PairFilter] = (
        WORKER_FILTERS[spec.name] if spec.name in WORKER_FILTERS else PAIR_FILTERS[spec.name]
    )
    return cls(**dict(spec.params))


def build_scorer(spec: PluginSpec) -> WorkerScorer | PairScorer:
    cls: type[WorkerScorer] | type[PairScorer] = (
        WORKER_SCORERS[spec.name] if spec.name in WORKER_SCORERS else PAIR_SCORERS[spec.name]
    )
    return cls(**dict(spec.params))


def parse_placement_config(data: Mapping[str, Any], base: PlacementConfig) -> PlacementConfig:
    """`base` with the keys of `data` applied (a `policy:` key is resolved by the caller)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a placement config is a mapping of keys, got {type(data).__name__}")
    known = {f.name for f in fields(PlacementConfig)} - {"name"}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key == "policy":
            continue
        if key not in known:
            raise ConfigError(
                f"unknown placement key {key!r}; known: policy, {', '.join(sorted(known))}"
            )
        if key == "filters":
            changes[key] = tuple(
                _plugin(v, f"filters[{i}]", False) for i, v in enumerate(_list(key, value))
            )
        elif key == "scorers":
            changes[key] = tuple(
                _plugin(v, f"scorers[{i}]", True) for i, v in enumerate(_list(key, value))
            )
        elif key == "transfer":
            changes[key] = _transfer(value, base.transfer)
        elif key == "picker":
            changes[key] = _typed(key, value, str)
        else:
            changes[key] = _typed(key, value, int)
    try:
        return replace(base, **changes)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"placement config: {err}") from None


def load_yaml(path: str | Path) -> Mapping[str, Any]:
    """Read a placement YAML (or JSON) file into a mapping."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read placement config {path}: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"placement config {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"placement config {path}: expected a mapping at the top level")
    return data


def _list(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
    return list(value)


def _typed(key: str, value: Any, kind: type) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def _plugin(entry: Any, where: str, scorer: bool) -> PluginSpec:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a name or a mapping with 'name', got {entry!r}")
    if "name" not in entry or not isinstance(entry["name"], str):
        raise ConfigError(f"{where} needs a 'name' (a string)")
    name = entry["name"]
    registry: Mapping[str, type[Any]] = (
        {**WORKER_SCORERS, **PAIR_SCORERS} if scorer else {**WORKER_FILTERS, **PAIR_FILTERS}
    )
    kind = "scorer" if scorer else "filter"
    if name not in registry:
        raise ConfigError(f"{where}: unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    allowed = registry[name].params
    weight = 1.0
    params: list[tuple[str, float]] = []
    for key, value in entry.items():
        if key == "name":
            continue
        if key == "weight" and scorer:
            weight = _number(f"{where}.weight", value)
        elif key in allowed:
            params.append((key, _number(f"{where}.{key}", value)))
        else:
            extra = ["weight"] if scorer else []
            options = ", ".join([*extra, *allowed]) or "none"
            raise ConfigError(
                f"{where}.{key}: unknown parameter of {kind} {name!r} (takes: {options})"
            )
    return PluginSpec(name, weight, tuple(params))


def _transfer(value: Any, base: TransferConfig) -> TransferConfig:
    if not isinstance(value, Mapping):
        raise ConfigError(f"transfer must be a mapping, got {type(value).__name__}")
    changes: dict[str, Any] = {}
    for key, item in value.items():
        if key == "tier_gbps":
            if not isinstance(item, Mapping):
                raise ConfigError("transfer.tier_gbps must be a mapping of tier -> GB/s")
            # Unnamed tiers keep their current value.
            tiers = dict(base.tier_gbps)
            tiers.update({str(k): _number(f"transfer.tier_gbps.{k}", v) for k, v in item.items()})
            changes[key] = tiers
        elif key == "ewma_alpha":
            changes[key] = _number("transfer.ewma_alpha", item)
        elif key in ("min_bytes", "min_samples"):
            changes[key] = _typed(f"transfer.{key}", item, int)
        else:
            raise ConfigError(
                f"transfer.{key}: unknown key (known: tier_gbps, ewma_alpha, min_bytes,"
                " min_samples)"
            )
    try:
        return replace(base, **changes)
    except ValueError as err:
        raise ConfigError(str(err)) from None
