"""The router's placement file (`--placement-config`), from `spec.router.placement`.

The operator checks it with the router's own parser, so a bad key is a `ValidationFailed`
condition naming the field, not a router that crash-loops.
"""

from __future__ import annotations

from typing import Any

import yaml

from kvferry.errors import ConfigError
from kvferry.operator.crd.schema import SpecError
from kvferry.operator.crd.spec import InferenceClusterSpec
from kvferry.services.router.placement import named_config, parse_placement_config

FILE = "placement.yaml"
PATH = "spec.router.placement"


def placement_data(spec: InferenceClusterSpec) -> dict[str, Any]:
    """The file's keys: the policy, then the spec's overrides. Raises SpecError when the
    router would refuse them."""
    placement = spec.router.placement
    config = dict(placement.config or {})
    if "policy" in config:
        raise SpecError(f"{PATH}.config.policy", f"set the policy in {PATH}.policy instead")
    try:
        parse_placement_config(config, named_config(placement.policy.value))
    except ConfigError as err:
        raise SpecError(f"{PATH}.config", str(err)) from None
    return {"policy": placement.policy.value, **config}


def placement_file(spec: InferenceClusterSpec) -> str:
    return str(yaml.safe_dump(placement_data(spec), sort_keys=False))
