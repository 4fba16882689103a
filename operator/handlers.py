"""kopf handlers: the thin shell around `desired()`, the planner and the status.

- An InferenceCluster (create/update/resume) is parsed, turned into its children by
  `desired()` and applied. An invalid spec gets `Ready=False` with reason
  `ValidationFailed` and a Warning Event, and is not retried until the spec changes.
  Transient API failures raise `kopf.TemporaryError` (retried after a delay).
- A timer per cluster refreshes the status (conditions, pool counts, latencies) and asks
  the planner for each autoscaled pool; a new count is written to the pool's WorkerPool.
- A WorkerPool (create/update/resume, e.g. after `kubectl scale`) makes its Deployment
  follow `spec.replicas`, clamped to its bounds, and reports the scale status.
- A worker pod that has been scheduled gets its node's topology labels copied into the
  `kvferry.io/topology` annotation, which the pod reads through the downward API.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from kvferry import topology
from kvferry.operator.apply import KubeApi, RejectedError, TransientApiError, apply_all, is_subset
from kvferry.operator.conditions import (
    Replicas,
    cluster_conditions,
    invalid_conditions,
    replicas_of,
)
from kvferry.operator.crd.manifests import INFERENCE_CLUSTER_PLURAL, WORKER_POOL_PLURAL
from kvferry.operator.crd.schema import SpecError, parse
from kvferry.operator.crd.spec import API_VERSION, GROUP, VERSION, InferenceClusterSpec, Role
from kvferry.operator.crd.status import Reason
from kvferry.operator.crd.workerpool import WorkerPoolSpec
from kvferry.operator.desired import naming
from kvferry.operator.desired.naming import ClusterRef
from kvferry.operator.desired.objects import Observed, ObservedPool, clamp, desired, parse_spec
from kvferry.operator.metrics import ClusterSample, MetricsSource
from kvferry.operator.planner import PoolBounds, PoolHistory, PoolObservation, plan
from kvferry.operator.settings import OperatorConfig

log = logging.getLogger(__name__)

TOPOLOGY_ANNOTATION = naming.TOPOLOGY_ANNOTATION
TOPOLOGY_KEYS_ANNOTATION = naming.TOPOLOGY_KEYS_ANNOTATION


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ref(body: kopf.Body) -> ClusterRef:
    meta = body.get("metadata", {})
    return ClusterRef(
        name=str(meta["name"]),
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
    )


async def _observe(api: KubeApi, c: ClusterRef, image: str) -> Observed:
    pools: dict[Role, ObservedPool] = {}
    for role in Role:
        wp = await api.get(API_VERSION, "WorkerPool", c.namespace, naming.pool_name(c, role))
        if wp is None:
            continue
        seed = (wp.get("metadata", {}).get("annotations") or {}).get(naming.SEED_ANNOTATION)
        pools[role] = ObservedPool(
            replicas=int(wp.get("spec", {}).get("replicas", 0)),
            seeded_from=int(seed) if seed is not None and str(seed).isdigit() else None,
        )
    return Observed(image=image, pools=pools)


async def _cluster_status(
    api: KubeApi, c: ClusterRef, previous: list[dict[str, Any]]
) -> dict[str, Any]:
    router = replicas_of(await api.get("apps/v1", "Deployment", c.namespace, naming.router_name(c)))
    pools: dict[Role, Replicas] = {}
    for role in Role:
        dep = await api.get("apps/v1", "Deployment", c.namespace, naming.pool_name(c, role))
        pools[role] = replicas_of(dep)
    return {
        "observedGeneration": c.generation,
        "conditions": cluster_conditions(router, pools, c.generation, _now(), previous),
        "router": router.as_status(),
        **{role.value: r.as_status() for role, r in pools.items()},
    }


def _set_status(patch: kopf.Patch, current: Any, new: dict[str, Any]) -> None:
    """Write only what changed (ignoring condition timestamps) so an idle timer is quiet."""
    old = dict(current or {})
    comparable = {k: v for k, v in new.items() if k != "conditions"}
    old_conds = [
        {k: v for k, v in x.items() if k != "lastTransitionTime"}
        for x in old.get("conditions") or []
    ]
    new_conds = [
        {k: v for k, v in x.items() if k != "lastTransitionTime"}
        for x in new.get("conditions") or []
    ]
    if is_subset(comparable, old) and old_conds == new_conds:
        return
    for key, value in new.items():
        patch.status[key] = value


def register(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    api_factory: Callable[[], Awaitable[KubeApi]],
    metrics: MetricsSource,
) -> None:
    """Register every handler into `registry` (tests use a fresh one per operator)."""
    ic = (GROUP, VERSION, INFERENCE_CLUSTER_PLURAL)
    wp = (GROUP, VERSION, WORKER_POOL_PLURAL)

    @kopf.on.startup(registry=registry)
    async def startup(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # Events for problems, not chatter
        # A deleted cluster waits for its timer to stop before kopf's finalizer goes:
        # check often rather than kopf's default of once a minute.
        settings.background.cancellation_polling = min(2.0, config.status_interval_s)
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        memo["api"] = await api_factory()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        api = memo.get("api")
        if api is not None:
            await api.close()

    @kopf.on.resume(*ic, registry=registry)
    @kopf.on.create(*ic, registry=registry)
    @kopf.on.update(*ic, registry=registry)
    async def reconcile_cluster(
        body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
        memo: kopf.Memo, logger: kopf.Logger, **_: Any,
    ) -> None:  # fmt: skip
        api: KubeApi = memo["api"]
        c = _ref(body)
        previous = list(status.get("conditions") or [])
        try:
            parsed = parse_spec(spec)
        except SpecError as exc:
            _set_status(
                patch,
                status,
                {
                    "observedGeneration": c.generation,
                    "conditions": invalid_conditions(str(exc), c.generation, _now(), previous),
                },
            )
            kopf.event(
                body, type="Warning", reason=Reason.VALIDATION_FAILED.value, message=str(exc)
            )
            logger.info("invalid spec, not retried until it changes: %s", exc)
            return
        try:
            observed = await _observe(api, c, config.default_image)
            changed = await apply_all(api, desired(c, parsed, observed))
            _set_status(patch, status, await _cluster_status(api, c, previous))
        except TransientApiError as exc:
            raise kopf.TemporaryError(str(exc), delay=config.retry_delay_s) from exc
        except RejectedError as exc:
            kopf.event(body, type="Warning", reason="Rejected", message=str(exc))
            raise kopf.PermanentError(f"the API server rejected a child: {exc}") from exc
        if changed:
            logger.info("reconciled: %s", ", ".join(changed))

    @kopf.timer(*ic, interval=config.status_interval_s, registry=registry)
    async def tick(
        body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
        memo: kopf.Memo, **_: Any,
    ) -> None:  # fmt: skip
        api: KubeApi = memo["api"]
        c = _ref(body)
        try:
            parsed = parse_spec(spec)
        except SpecError:
            return  # reported by reconcile_cluster
        sample = await metrics.sample(c, parsed)
        try:
            if sample is not None:
                await _autoscale(api, c, parsed, memo, sample, config)
            new = await _cluster_status(api, c, list(status.get("conditions") or []))
            for role in Role:
                await _pool_status(api, c.namespace, naming.pool_name(c, role))
        except TransientApiError as exc:
            raise kopf.TemporaryError(str(exc), delay=config.retry_delay_s) from exc
        if sample is not None and (sample.ttft_ms is not None or sample.tpot_ms is not None):
            new["observed"] = {
                "ttftMs": sample.ttft_ms,
                "tpotMs": sample.tpot_ms,
                "sampledAt": _now(),
            }
        _set_status(patch, status, new)

    @kopf.on.resume(*wp, registry=registry)
    @kopf.on.create(*wp, registry=registry)
    @kopf.on.update(*wp, registry=registry)
    async def reconcile_pool(
        spec: kopf.Spec, name: str, namespace: str | None, memo: kopf.Memo, logger: kopf.Logger,
        **_: Any,
    ) -> None:  # fmt: skip
        api: KubeApi = memo["api"]
        try:
            pool = parse(WorkerPoolSpec, dict(spec), "spec")
            namespace = namespace or "default"
        except SpecError as exc:
            raise kopf.PermanentError(str(exc)) from exc
        target = max(pool.min_replicas, min(pool.max_replicas, pool.replicas))
        try:
            dep = await api.get("apps/v1", "Deployment", namespace, name)
            if dep is not None and dep.get("spec", {}).get("replicas") != target:
                await api.merge_patch(
                    "apps/v1", "Deployment", namespace, name, {"spec": {"replicas": target}}
                )
                logger.info("deployment %s scaled to %d", name, target)
            await _pool_status(api, namespace, name)
        except TransientApiError as exc:
            raise kopf.TemporaryError(str(exc), delay=config.retry_delay_s) from exc

    @kopf.on.event(
        "v1", "pods", labels={"app.kubernetes.io/managed-by": naming.MANAGED_BY}, registry=registry
    )
    async def copy_topology(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        api: KubeApi = memo["api"]
        node_name = body.get("spec", {}).get("nodeName")
        annotations = body.get("metadata", {}).get("annotations") or {}
        keys = annotations.get(TOPOLOGY_KEYS_ANNOTATION)
        if not node_name or not keys or TOPOLOGY_ANNOTATION in annotations:
            return
        try:
            levels = json.loads(keys)
            if not isinstance(levels, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:  # edited by hand; the pod template always writes JSON
            log.warning(
                "pod on %s: bad %s annotation (%s)", node_name, TOPOLOGY_KEYS_ANNOTATION, exc
            )
            return
        try:
            node = await api.get("v1", "Node", None, node_name)
            labels = (node or {}).get("metadata", {}).get("labels") or {}
            value = json.dumps(topology_of(node_name, labels, levels), sort_keys=True)
            meta = body["metadata"]
            await api.merge_patch(
                "v1", "Pod", meta["namespace"], meta["name"],
                {"metadata": {"annotations": {TOPOLOGY_ANNOTATION: value}}},
            )  # fmt: skip
        except TransientApiError as exc:
            raise kopf.TemporaryError(str(exc), delay=config.retry_delay_s) from exc


def topology_of(
    node_name: str, node_labels: dict[str, str], keys: dict[str, str]
) -> dict[str, str]:
    """The pod's topology in canonical levels (`kvferry.topology`): its node, plus each
    level whose configured label the node has."""
    found = {level: node_labels[key] for level, key in keys.items() if node_labels.get(key)}
    return {topology.NODE: node_name, **found}


async def _pool_status(api: KubeApi, namespace: str, name: str) -> None:
    pool = await api.get(API_VERSION, "WorkerPool", namespace, name)
    if pool is None:
        return
    dep = await api.get("apps/v1", "Deployment", namespace, name)
    counts = replicas_of(dep)
    cluster = str(pool.get("spec", {}).get("cluster", ""))
    role = str(pool.get("spec", {}).get("role", ""))
    selector = f"{naming.CLUSTER_LABEL}={cluster},{naming.COMPONENT_LABEL}={role}"
    new = {
        "replicas": counts.replicas,
        "readyReplicas": counts.ready,
        "selector": selector,
        "observedGeneration": int(pool.get("metadata", {}).get("generation") or 0),
    }
    if not is_subset(new, pool.get("status") or {}):
        await api.merge_patch(API_VERSION, "WorkerPool", namespace, name, {"status": new}, "status")


async def _autoscale(
    api: KubeApi,
    c: ClusterRef,
    spec: InferenceClusterSpec,
    memo: kopf.Memo,
    sample: ClusterSample,
    config: OperatorConfig,
) -> None:
    if not (spec.prefill.autoscale or spec.decode.autoscale):
        return
    histories: dict[Role, PoolHistory] = memo.setdefault("planner", {})
    clock: Callable[[], float] = memo.get("clock") or _monotonic
    now = clock()
    for role in Role:
        pool = spec.pool(role)
        if not pool.autoscale:
            continue
        name = naming.pool_name(c, role)
        wp = await api.get(API_VERSION, "WorkerPool", c.namespace, name)
        if wp is None:
            continue
        current = int(wp.get("spec", {}).get("replicas", 0))
        obs = sample.pools.get(role, PoolObservation())
        if role is Role.PREFILL and sample.ttft_ms is not None:
            obs = PoolObservation(
                obs.requests, sample.ttft_ms, None, obs.prefill_tokens_waiting, None
            )
        if role is Role.DECODE and sample.tpot_ms is not None:
            obs = PoolObservation(obs.requests, None, sample.tpot_ms, None, obs.kv_utilization)
        bounds = PoolBounds(clamp(current, pool), pool.min_replicas, pool.max_replicas)
        decision = plan(
            role,
            obs,
            spec.objectives,
            bounds,
            histories.get(role, PoolHistory()),
            now,
            config.planner,
        )
        histories[role] = decision.history
        if decision.replicas != current:
            log.info(
                "cluster %s/%s %s: %d -> %d (%s)",
                c.namespace,
                c.name,
                role.value,
                current,
                decision.replicas,
                decision.reason,
            )
            await api.merge_patch(
                API_VERSION,
                "WorkerPool",
                c.namespace,
                name,
                {"spec": {"replicas": decision.replicas}},
            )


def _monotonic() -> float:
    import time

    return time.monotonic()
