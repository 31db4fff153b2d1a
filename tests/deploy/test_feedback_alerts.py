"""The feedback and drift alert rules: promtool's unit tests, and one threshold shared with code."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from service.model.drift import DRIFT_THRESHOLD
from tests.conftest import REPO_ROOT

RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
RULES = RULES_DIR / "mnist-feedback.rules.yml"
TESTS = RULES_DIR / "mnist-feedback.test.yml"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install prometheus (make system-packages)")
    return found


def test_the_rules_are_valid_and_their_promtool_tests_pass() -> None:
    check = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        [promtool(), "test", "rules", TESTS.name],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


def test_the_drift_alert_uses_the_services_threshold() -> None:
    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    threshold = re.search(r"\)\s*>\s*([0-9.]+)", rules["MnistInputDrift"]["expr"])
    assert threshold is not None and float(threshold[1]) == DRIFT_THRESHOLD
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    checked = {c["alertname"] for case in tests for c in case["alert_rule_test"]}
    assert checked == set(rules)
