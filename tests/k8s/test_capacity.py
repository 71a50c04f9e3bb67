"""The autoscalers can reach every replica they declare, and their targets fit the timeouts.

Recomputes the derivation of docs/deploy.md ("Capacity and autoscaling") from the measured
costs in k8s/capacity.yaml, the rendered overlays (HPAs, CPU requests, gateway settings) and
the served model's config.pbtxt (max_batch_size, batcher delay, default_queue_policy), read
with `triton_config.load`, never copied here.

A gateway pod's capacity: requests/s = min(CPUs x 1000 / CPU-ms per request, each thread
pool's rate). A Triton pod's: images/s at the model's max_batch_size. Queue time in Triton
grows once arrivals exceed what a pod executes; with `k` executions' worth of images queued
ahead, a request waits about `k x call_ms(max_batch)`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from service.gateway.settings import Settings, resolve
from service.model import triton_config
from service.spec import ModelSpec
from tests.k8s.manifests import (
    GATEWAY,
    K8S,
    ROOT,
    TRITON,
    Manifest,
    container,
    one,
    quantity,
    workload_by_label,
)

CAPACITY = K8S / "capacity.yaml"
REPOSITORY = ROOT / "model_repository"
# Scale well before Triton starts rejecting: the mean queue time target is at most this
# fraction of the queue policy's timeout (queue times spread: the tail reaches it first).
TARGET_SHARE_OF_REJECT_TIMEOUT = 0.25
# ...and the gateway's queue-wait target at most this fraction of CA_REQUEST_TIMEOUT_S.
TARGET_SHARE_OF_REQUEST_TIMEOUT = 0.1


@dataclass(frozen=True)
class Costs:
    preprocess_ms: float
    http_ms: float
    onnxruntime_ms: float
    call_ms: dict[int, float]  # one Triton pod: ms per call at each measured batch size
    tolerance: float

    def at_batch(self, batch: int) -> tuple[float, float]:
        """(images/s, ms per call) of one Triton pod at `batch`, interpolated linearly
        between the measured batch sizes (never extrapolated)."""
        sizes = sorted(self.call_ms)
        if not sizes[0] <= batch <= sizes[-1]:
            pytest.fail(
                f"k8s/capacity.yaml has no GPU measurement around batch {batch} (the served "
                f"model's max_batch_size); measured: {sizes}"
            )
        low = max(s for s in sizes if s <= batch)
        high = min(s for s in sizes if s >= batch)
        share = 0.0 if high == low else (batch - low) / (high - low)
        call_ms = self.call_ms[low] + share * (self.call_ms[high] - self.call_ms[low])
        return batch * 1000 / call_ms, call_ms


def costs() -> Costs:
    data = yaml.safe_load(CAPACITY.read_text())
    gateway, triton = data["gateway"], data["triton"]
    return Costs(
        preprocess_ms=float(gateway["preprocess_ms"]),
        http_ms=float(gateway["http_ms"]),
        onnxruntime_ms=float(gateway["onnxruntime_ms"]),
        call_ms={int(k): float(v) for k, v in triton["call_ms"].items()},
        tolerance=float(data["hpa_tolerance"]),
    )


@dataclass(frozen=True)
class Autoscaler:
    min_replicas: int
    max_replicas: int
    cpu_utilisation: float | None  # target, as a fraction of the CPU request
    pods: dict[str, float]  # custom metric -> average value target


def autoscaler(objects: list[Manifest], name: str) -> Autoscaler:
    spec = one(objects, "HorizontalPodAutoscaler", name)["spec"]
    cpu, pods = None, {}
    for metric in spec["metrics"]:
        if metric["type"] == "Resource" and metric["resource"]["name"] == "cpu":
            cpu = metric["resource"]["target"]["averageUtilization"] / 100
        elif metric["type"] == "Pods":
            target = metric["pods"]["target"]
            assert target["type"] == "AverageValue", name
            pods[metric["pods"]["metric"]["name"]] = quantity(target["averageValue"])
    return Autoscaler(spec["minReplicas"], spec["maxReplicas"], cpu, pods)


def gateway_settings(objects: list[Manifest]) -> Settings:
    """Settings as the gateway pods build them from their ConfigMap (defaults included)."""
    config = one(objects, "ConfigMap", "ca-serve-gateway-config")["data"]
    saved = {k: v for k, v in os.environ.items() if k.startswith("CA_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(config)
        return Settings()
    finally:
        for key in config:
            os.environ.pop(key, None)
        os.environ.update(saved)


@dataclass(frozen=True)
class GatewayPod:
    cpus: float
    per_request_ms: float
    requests_per_s: float  # at full load: CPU or a thread pool, whichever binds first

    @property
    def busy_share(self) -> float:
        """The share of the pod's CPU request in use at that rate."""
        return self.requests_per_s * self.per_request_ms / 1000 / self.cpus


def gateway_pod(objects: list[Manifest], c: Costs) -> GatewayPod:
    settings = gateway_settings(objects)
    gateway = container(workload_by_label(objects, GATEWAY), "gateway")
    cpus = quantity(gateway["resources"]["requests"]["cpu"])
    embedded = settings.backend == "embedded"
    per_request = c.preprocess_ms + c.http_ms + (c.onnxruntime_ms if embedded else 0.0)
    # Thread counts of 0 mean one per core: the pod's cores, not this test machine's.
    effective = resolve(settings, ModelSpec.load(served_model(objects)), cores=math.ceil(cpus))
    rates = [cpus * 1000 / per_request, effective.preprocess_threads * 1000 / c.preprocess_ms]
    if embedded:
        rates.append(effective.inference_threads * 1000 / c.onnxruntime_ms)
    return GatewayPod(cpus, per_request, min(rates))


@dataclass(frozen=True)
class QueuePolicy:
    timeout_s: float
    max_queue_size: int


def served_model(objects: list[Manifest]) -> Path:
    return REPOSITORY / gateway_settings(objects).model_name


def queue_policy(model_dir: Path) -> QueuePolicy:
    """The served model's bounded queue; a clear failure where there is none."""
    config = triton_config.load(model_dir)
    where = f"model_repository/{model_dir.name}/config.pbtxt"
    batching = config.dynamic_batching
    if not config.HasField("dynamic_batching") or not batching.HasField("default_queue_policy"):
        pytest.fail(
            f"{where} has no dynamic_batching.default_queue_policy: Triton's queue is "
            "unbounded, so requests wait past the gateway's timeout instead of being "
            "rejected, and the Triton HPA's latency budget has no ceiling to fit under"
        )
    policy = batching.default_queue_policy
    assert policy.timeout_action == policy.REJECT, f"{where}: the queue policy must REJECT"
    assert policy.default_timeout_microseconds > 0, f"{where}: a queue timeout of 0 is none"
    assert policy.max_queue_size > 0, f"{where}: max_queue_size 0 is an unbounded queue"
    return QueuePolicy(policy.default_timeout_microseconds / 1e6, policy.max_queue_size)


# --- gateways --------------------------------------------------------------------------------


def test_the_gateway_cpu_target_is_reachable(overlay: str, objects: list[Manifest]) -> None:
    """A saturated gateway pod must use more CPU than the HPA's target, or the CPU metric
    never asks for another pod (4 CPUs with 2 inference streams top out near 63%)."""
    c, hpa = costs(), autoscaler(objects, GATEWAY)
    pod = gateway_pod(objects, c)
    assert hpa.cpu_utilisation is not None
    assert pod.busy_share > hpa.cpu_utilisation * (1 + c.tolerance), (
        f"{overlay}: a saturated gateway uses {pod.busy_share:.0%} of its {pod.cpus:g} CPUs, "
        f"the HPA waits for {hpa.cpu_utilisation:.0%}: give its thread pools the CPUs"
    )


def test_the_gateway_queue_wait_target_fits_the_timeouts(
    overlay: str, objects: list[Manifest]
) -> None:
    c, hpa, settings = costs(), autoscaler(objects, GATEWAY), gateway_settings(objects)
    target = hpa.pods["ca_gateway_queue_wait_seconds"]
    # The batching window alone counts as queue wait: it must not breach the target.
    assert target > settings.max_batch_delay_ms / 1000
    assert target <= TARGET_SHARE_OF_REQUEST_TIMEOUT * settings.request_timeout_s
    if settings.backend == "embedded":
        # With every stream busy a request waits about half a batch's run: the target is
        # crossed by then, so queue wait adds pods when the streams saturate.
        half_batch_s = settings.max_batch_size * c.onnxruntime_ms / 1000 / 2
        assert target <= half_batch_s, f"{overlay}: the queue-wait target is never reached"


# --- Triton -----------------------------------------------------------------------------------


def test_the_gateway_batch_fits_triton(gpu: list[Manifest]) -> None:
    settings = gateway_settings(gpu)
    config = triton_config.load(served_model(gpu))
    assert settings.max_batch_size <= config.max_batch_size, (
        "Triton rejects a request larger than the model's max_batch_size"
    )


def test_the_triton_target_fits_the_queue_policy_and_the_request_timeout(
    gpu: list[Manifest],
) -> None:
    c, hpa, settings = costs(), autoscaler(gpu, TRITON), gateway_settings(gpu)
    config = triton_config.load(served_model(gpu))
    policy = queue_policy(served_model(gpu))
    target = hpa.pods["nv_inference_queue_seconds_per_request"]
    _, call_ms = c.at_batch(config.max_batch_size)
    call_s = call_ms / 1000
    delay_s = config.dynamic_batching.max_queue_delay_microseconds / 1e6
    # A pod that merely batches (waits out the delay, then a full batch ahead) stays under
    # the target, or the HPA would sit at maxReplicas on any load.
    assert target >= 2 * (delay_s + call_s), (
        f"queue-time target {target * 1000:g} ms < 2 x (batcher delay + one full batch) = "
        f"{2 * (delay_s + call_s) * 1000:.1f} ms"
    )
    assert target <= TARGET_SHARE_OF_REJECT_TIMEOUT * policy.timeout_s, (
        f"queue-time target {target * 1000:g} ms is too close to the queue policy's "
        f"{policy.timeout_s * 1000:g} ms reject timeout: scale before requests are rejected"
    )
    # Triton rejects a request it cannot start in time while the gateway can still answer
    # (or retry on another pod) within its own timeout.
    assert policy.timeout_s + call_s < settings.request_timeout_s, (
        f"Triton's queue timeout {policy.timeout_s:g} s outlasts CA_REQUEST_TIMEOUT_S "
        f"{settings.request_timeout_s:g} s: the gateway gives up first, Triton still runs it"
    )
    # The bounded queue can hold enough to reach the target: a request behind k full batches
    # waits about k calls.
    queued_images = policy.max_queue_size * settings.max_batch_size
    needed = (1 + c.tolerance) * target / call_s * config.max_batch_size
    assert queued_images >= needed, (
        f"max_queue_size {policy.max_queue_size} x {settings.max_batch_size} images cannot "
        f"queue the {needed:.0f} images a {target * 1000:g} ms wait takes: the target is "
        "unreachable"
    )


def test_triton_max_replicas_is_reachable(gpu: list[Manifest]) -> None:
    """At maxReplicas - 1 Triton pods, the gateways at their maximum must (a) send more
    images than those pods execute and (b) keep enough in flight to queue a target's worth
    on each. (The old pending-request target failed (b): 20 gateways x 4 batches = 80
    requests could never average 32 per pod beyond 3 of 8 pods.)"""
    c, settings = costs(), gateway_settings(gpu)
    triton, gateways = autoscaler(gpu, TRITON), autoscaler(gpu, GATEWAY)
    assert 2 <= triton.min_replicas < triton.max_replicas
    config = triton_config.load(served_model(gpu))
    images_per_s, call_ms = c.at_batch(config.max_batch_size)
    target = triton.pods["nv_inference_queue_seconds_per_request"]
    below_max = triton.max_replicas - 1
    offered = gateways.max_replicas * gateway_pod(gpu, c).requests_per_s
    absorbed = below_max * images_per_s * (1 + c.tolerance)
    assert offered > absorbed, (
        f"{gateways.max_replicas} gateways send at most {offered:,.0f} images/s; "
        f"{below_max} Triton pods absorb {absorbed:,.0f} at batch {config.max_batch_size}: "
        "Triton never scales past "
        f"{below_max} of {triton.max_replicas}"
    )
    slots = settings.max_concurrent_batches
    assert slots > 0, "set CA_MAX_CONCURRENT_BATCHES in the gpu overlay: the derivation uses it"
    in_flight = gateways.max_replicas * slots * settings.max_batch_size
    per_pod = config.max_batch_size * (1 + (1 + c.tolerance) * target * 1000 / call_ms)
    assert in_flight >= below_max * per_pod, (
        f"gateways keep at most {in_flight} images in flight; queueing {target * 1000:g} ms "
        f"on {below_max} pods takes {below_max * per_pod:,.0f}"
    )


def test_gateway_max_replicas_is_reachable_in_front_of_triton(gpu: list[Manifest]) -> None:
    """The gateway HPA's CPU metric only reaches maxReplicas if Triton, at its own maximum,
    absorbs what that many gateways send at the CPU target; otherwise they wait on Triton
    with idle CPUs."""
    c = costs()
    triton, gateways = autoscaler(gpu, TRITON), autoscaler(gpu, GATEWAY)
    config = triton_config.load(served_model(gpu))
    images_per_s, _ = c.at_batch(config.max_batch_size)
    assert gateways.cpu_utilisation is not None
    at_target = (
        (gateways.max_replicas - 1)
        * gateway_pod(gpu, c).requests_per_s
        * gateways.cpu_utilisation
        * (1 + c.tolerance)
    )
    assert triton.max_replicas * images_per_s >= at_target, (
        f"{triton.max_replicas} Triton pods absorb {triton.max_replicas * images_per_s:,.0f} "
        f"images/s at batch {config.max_batch_size}; gateways near their maximum send "
        f"{at_target:,.0f} at the CPU target"
    )


def test_gateway_slots_are_not_the_bottleneck(gpu: list[Manifest]) -> None:
    """While Triton stays within its queue-time budget, a gateway's batches in flight carry
    more than its CPU can prepare: its own queue wait then stays near zero, and rises only
    when Triton answers far slower than its budget."""
    c, settings = costs(), gateway_settings(gpu)
    triton = autoscaler(gpu, TRITON)
    config = triton_config.load(served_model(gpu))
    _, call_ms = c.at_batch(config.max_batch_size)
    round_trip_s = triton.pods["nv_inference_queue_seconds_per_request"] + call_ms / 1000
    carried = settings.max_concurrent_batches * settings.max_batch_size / round_trip_s
    assert carried >= gateway_pod(gpu, c).requests_per_s


def test_the_docs_state_each_autoscaler_range(overlays: dict[str, list[Manifest]]) -> None:
    """docs/deploy.md's capacity section names each HPA's range as the manifests set it."""
    docs = (ROOT / "docs" / "deploy.md").read_text()
    section = re.split(r"^## (?:\d+\. )?Capacity and autoscaling$", docs, maxsplit=1, flags=re.M)
    assert len(section) == 2, "docs/deploy.md has no 'Capacity and autoscaling' section"
    text = section[1].split("\n## ", 1)[0]
    for overlay, objects in overlays.items():
        for name in (GATEWAY, TRITON):
            try:
                hpa = autoscaler(objects, name)
            except LookupError:
                continue
            wanted = f"{hpa.min_replicas}–{hpa.max_replicas}"
            assert wanted in text, f"{overlay} overlay, HPA {name}: no {wanted} in the section"
