"""`python -m kvferry.operator`: run the operator against the cluster it is in (or the
local kubeconfig), watching every namespace. Settings come from the environment
(`OperatorConfig.from_env`)."""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from kvferry.operator.apply import KubeApi
from kvferry.operator.handlers import register
from kvferry.operator.metrics import RouterMetricsSource
from kvferry.operator.settings import OperatorConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvferry.operator", description=__doc__)
    parser.add_argument("--namespace", action="append", default=[], help="watch only these")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz")
    parser.add_argument("--standalone", action="store_true", help="no peering (one replica)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = OperatorConfig.from_env()
    registry = kopf.get_default_registry()  # with kopf's login fallbacks (kubeconfig, SA)
    register(registry, config, KubeApi.from_environment, RouterMetricsSource())
    kopf.run(
        registry=registry,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
