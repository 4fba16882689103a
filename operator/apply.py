"""The thin I/O shell: read and write Kubernetes objects with `kubernetes.aio`.

Writes are server-side apply (field manager `kvferry-operator`, forced: the operator owns
the fields it sets, and only those). An object that does not exist yet is created when
the server answers 404 to the apply (API emulators without server-side apply).
Errors are typed: `TransientApiError` (5xx, 429, connection) for a retry with backoff,
`RejectedError` (400/422) for an object the server will never accept as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio.client.exceptions import ApiException

log = logging.getLogger(__name__)

FIELD_MANAGER = "kvferry-operator"

PLURALS: dict[str, str] = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "Pod": "pods",
    "Node": "nodes",
    "Event": "events",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "InferenceCluster": "inferenceclusters",
    "WorkerPool": "workerpools",
}
CLUSTER_SCOPED = frozenset({"Node"})


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class TransientApiError(ApiError):
    """Worth retrying: the server or the network failed, not the request."""


class RejectedError(ApiError):
    """The server refuses the object as it is (invalid): retrying will not help."""


def resource_path(
    api_version: str, kind: str, namespace: str | None, name: str | None = None
) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    plural = PLURALS[kind]
    path = base if kind in CLUSTER_SCOPED else f"{base}/namespaces/{namespace}"
    path = f"{path}/{plural}"
    return f"{path}/{name}" if name else path


def is_subset(want: Any, have: Any) -> bool:
    """Whether every field of `want` has the same value in `have` (lists element-wise)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and is_subset(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(is_subset(w, h) for w, h in zip(want, have, strict=True))
        )
    return (bool(want == have) and type(want) is type(have)) or _same_number(want, have)


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


class KubeApi:
    """The few verbs the operator needs, on plain dicts."""

    def __init__(self, api_client: kclient.ApiClient) -> None:
        self._client = api_client

    @classmethod
    def for_host(cls, host: str) -> KubeApi:
        """An unauthenticated client (tests against an API emulator)."""
        config = kclient.Configuration(host=host)
        return cls(kclient.ApiClient(config))

    @classmethod
    async def from_environment(cls) -> KubeApi:
        """In-cluster service account, else the local kubeconfig."""
        from kubernetes.aio import config as kconfig

        configuration = kclient.Configuration()
        try:
            kconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kconfig.ConfigException:
            await kconfig.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(kclient.ApiClient(configuration))

    async def close(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        try:
            m, url, hdrs, data, post = await self._client.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or None,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = await self._client.call_api(m, url, hdrs, data, post)
            raw = await response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:  # raised by the client's retry layer
            raise _classify(int(exc.status or 0), str(exc.reason)) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientApiError(0, f"{method} {path}: {exc}") from exc
        if not 200 <= response.status < 300:
            raise _classify(response.status, raw.decode(errors="replace")[:500])
        return json.loads(raw) if raw else None

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            obj = await self._request("GET", resource_path(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(obj)

    async def list(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else None
        data = await self._request("GET", resource_path(api_version, kind, namespace), query=query)
        return list(data.get("items") or [])

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj`; create it if the server says it does not exist."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        try:
            result = await self._request(
                "PATCH", path, dict(obj), query=query, content_type="application/apply-patch+yaml"
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            collection = resource_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
            result = await self._request("POST", collection, dict(obj), query=query[:1])
        return dict(result)

    async def merge_patch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        subresource: str = "",
    ) -> dict[str, Any]:
        path = resource_path(api_version, kind, namespace, name)
        if subresource:
            path = f"{path}/{subresource}"
        result = await self._request(
            "PATCH",
            path,
            dict(patch),
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
        )
        return dict(result)


def _classify(status: int, message: str) -> ApiError:
    if status in (400, 422):
        return RejectedError(status, message)
    if status == 0 or status == 429 or status >= 500:
        return TransientApiError(status, message)
    return ApiError(status, message)


async def apply_all(api: KubeApi, objects: list[dict[str, Any]]) -> list[str]:
    """Make each object match; return `Kind/name` of those that changed."""
    changed: list[str] = []
    for obj in objects:
        meta = obj["metadata"]
        have = await api.get(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        if have is not None and is_subset(obj, have):
            continue
        await api.apply(obj)
        changed.append(f"{obj['kind']}/{meta['name']}")
    if changed:
        log.info("applied %s", ", ".join(changed))
    return changed
