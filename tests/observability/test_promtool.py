"""The Prometheus config and rules pass promtool's checks and their unit tests."""

from __future__ import annotations

import subprocess
from collections import defaultdict

from tests.observability.artifacts import (
    PROMETHEUS_DIR,
    RULE_FILES,
    alert_rules,
    load_yaml,
    require_binary,
)

UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
REQUIRED_ANNOTATIONS = {"summary", "description", "runbook"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


CONFIGS = ("prometheus.yml", "prometheus-cpu.yml")  # with Triton; gateway only


def test_check_config() -> None:
    for config in CONFIGS:
        result = promtool("check", "config", config)
        assert result.returncode == 0, config + ": " + result.stdout + result.stderr


def test_the_cpu_config_scrapes_the_gateway_as_the_full_one_does() -> None:
    """prometheus-cpu.yml is prometheus.yml without the Triton job: same globals, same rule
    files, the same gateway job, so dashboards and alerts see the same labels."""
    full, cpu = (load_yaml(PROMETHEUS_DIR / name) for name in CONFIGS)
    jobs = {job["job_name"]: job for job in full["scrape_configs"]}
    assert set(jobs) == {"ca-serve-gateway", "triton"}
    assert cpu["scrape_configs"] == [jobs["ca-serve-gateway"]]
    assert cpu["global"] == full["global"] and cpu["rule_files"] == full["rule_files"]


def test_check_rules() -> None:
    result = promtool("check", "rules", *(str(p) for p in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests/"
    result = promtool("test", "rules", *(str(p) for p in UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_annotated() -> None:
    alerts = alert_rules()
    assert {a["alert"] for a in alerts} >= {
        "CaServeHighP99Latency",
        "CaServeHighErrorRatio",
        "CaServeOverloaded",
        "CaServeBackendNotReady",
        "CaServeTritonQueueTimeGrowing",
        "CaServeGpuMemoryNearFull",
    }
    for alert in alerts:
        missing = REQUIRED_ANNOTATIONS - set(alert.get("annotations", {}))
        assert not missing, f"{alert['alert']} lacks annotations {missing}"
        assert alert.get("labels", {}).get("severity") in {"warning", "critical"}, alert["alert"]
        anchor = f"docs/observability.md#{alert['alert'].lower()}"
        assert anchor in alert["annotations"]["runbook"], f"{alert['alert']} runbook: {anchor}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """Each alert is made to fire by some unit test, and asserted silent by another eval."""
    fired: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for path in UNIT_TESTS:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet)[check["alertname"]] += 1
    for alert in alert_rules():
        name = alert["alert"]
        assert fired[name], f"no promtool test makes {name} fire"
        assert quiet[name], f"no promtool test checks {name} stays quiet"
