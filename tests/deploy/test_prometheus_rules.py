"""Alert rules under deploy/prometheus/rules: valid, and each one tested firing and not firing.

Every ``*.rules.yml`` there is checked with ``promtool check rules``; every ``*.test.yml`` runs
with ``promtool test rules`` (Debian's `prometheus` package, installed by `make test`). Any alert
in any rules file must appear in some test both with expected alerts (it fires) and with none
(it does not), so rules added beside these get the same discipline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.deploy.conftest import run_tool

RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
TEST_FILES = sorted(RULES_DIR.glob("*.test.yml"))


def _alert_names(path: Path) -> list[str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_there_are_rules_and_tests() -> None:
    assert RULE_FILES and TEST_FILES
    assert {"MnistHighErrorRate", "MnistHighP99Latency", "MnistModelReloadFailures"} <= {
        name for path in RULE_FILES for name in _alert_names(path)
    }


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_file_is_valid(path: Path, require_tool: Callable[[str], str]) -> None:
    result = run_tool([require_tool("promtool"), "check", "rules", str(path)], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path: Path, require_tool: Callable[[str], str]) -> None:
    result = run_tool(
        [require_tool("promtool"), "test", "rules", str(path.relative_to(REPO_ROOT))], timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_test() -> None:
    fired: dict[str, int] = defaultdict(int)
    quiet: dict[str, int] = defaultdict(int)
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                counts = fired if check.get("exp_alerts") else quiet
                counts[check["alertname"]] += 1
    alerts = [name for path in RULE_FILES for name in _alert_names(path)]
    assert len(alerts) == len(set(alerts)), "alert names must be unique across rules files"
    missing = [a for a in alerts if not fired[a] or not quiet[a]]
    assert not missing, f"alerts without a firing and a non-firing promtool test: {missing}"


def test_prometheus_config_is_valid(require_tool: Callable[[str], str]) -> None:
    config = REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml"
    result = run_tool(
        [require_tool("promtool"), "check", "config", "--syntax-only", str(config)], timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    scrape = yaml.safe_load(config.read_text())["scrape_configs"]
    [mnist] = [job for job in scrape if job["job_name"] == "mnist"]
    assert mnist["dns_sd_configs"] == [
        {"names": ["mnist"], "type": "A", "port": 8000, "refresh_interval": "5s"}
    ]
