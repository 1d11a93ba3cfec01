"""JUnit XML for CI test reports: a test suite per rule, a failing test case
per finding, a skipped one per resource the rule could not judge (said out
loud, as the other reports do; a failing one with --fail-on-not-judged), a
passing one for a rule with nothing to report. A test case is named for its
finding's identity (resource, root module, file and what the finding is
about, as its fingerprint is), never its line: GitLab keeps one test case per
name and compares a merge request's tests with the target branch's by name."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from itertools import groupby

from iac_scanner.findings import ScanResult
from iac_scanner.report import inert


def render(result: ScanResult, color: bool = False) -> str:
    root = ET.Element("testsuites", name="portcullis scan")
    total = failures = skipped = 0
    by_rule = {
        rule_id: list(group)
        for rule_id, group in groupby(
            sorted(result.findings, key=lambda f: (f.rule.id, f.file, f.line, f.root_module)),
            key=lambda f: f.rule.id,
        )
    }
    # Per rule: each resource it could not judge, with why, and what accepts it.
    unjudged: dict[str, dict[tuple[str, str, int], set[str]]] = {}
    accepted: dict[tuple[str, str, str, int], str] = {}
    for item in result.not_judged:
        at = (item.resource, item.root_path or item.file, item.line)
        unjudged.setdefault(item.rule_id, {}).setdefault(at, set()).add(item.why)
        if item.suppressed is not None:
            accepted[(item.rule_id, *at)] = f"suppressed: {item.suppressed}"
        elif item.baselined:
            accepted[(item.rule_id, *at)] = "in baseline"
    for rule in sorted(result.rules.values(), key=lambda r: r.id):
        findings = by_rule.get(rule.id, [])
        not_judged = unjudged.get(rule.id, {})
        if rule.source == "checkov" and not findings:
            continue
        suite = ET.SubElement(root, "testsuite", name=f"{rule.id} {rule.title}")
        suite_failures = suite_skipped = 0
        for finding in findings:
            root_module = finding.root_module_path or finding.root_module
            where = f" in root module {root_module}" if finding.in_called_module else ""
            # Two holes in one resource (SSH and RDP open) are two test cases,
            # named by the repository's paths, as the fingerprint is: the name
            # must not change with the directory the scan ran from.
            about = finding.key or finding.message
            case = ET.SubElement(
                suite,
                "testcase",
                name=f"{finding.resource}{where} ({finding.root_path or finding.file}): {about}",
                classname=rule.id,
                # GitLab links it into the repository: the repository's path.
                file=finding.root_path or finding.file,
                line=str(finding.line),
            )
            if finding.suppressed is not None or finding.baselined:
                why = (
                    f"suppressed: {finding.suppressed}"
                    if finding.suppressed is not None
                    else "in baseline"
                )
                # Jenkins shows the message, GitLab the text.
                ET.SubElement(case, "skipped", message=why).text = why
                suite_skipped += 1
            else:
                failure = ET.SubElement(
                    case, "failure", message=finding.message, type=rule.severity
                )
                failure.text = (
                    f"{finding.file}:{finding.line}: {finding.message}{where}\n"
                    f"Rule: {rule.id} ({rule.severity}) {rule.title}\n"
                    f"Remediation: {rule.remediation}"
                )
                suite_failures += 1
        for (resource, path, line), reasons in sorted(not_judged.items()):
            # Skipped, not passed: "no violations" would hide what wasn't judged.
            case = ET.SubElement(
                suite,
                "testcase",
                name=f"{resource} ({path}): not judged",
                classname=rule.id,
                file=path,
                line=str(line),
            )
            why = f"not judged: {'; '.join(sorted(reasons))}"
            accepting = accepted.get((rule.id, resource, path, line))
            if result.fail_on_not_judged and accepting is None:
                failure = ET.SubElement(case, "failure", message=why, type="not judged")
                failure.text = (
                    f"{path}:{line}: {resource}: {why}\n"
                    f"Rule: {rule.id} ({rule.severity}) {rule.title}\n"
                    "--fail-on-not-judged: a resource the rule could not judge fails the scan; "
                    "give the value it reads (a variable's value, a --var-file) or suppress "
                    f"the rule on the resource with a reason (portcullis:ignore={rule.id} ...)"
                )
                suite_failures += 1
                continue
            if accepting is not None:
                why += f"; {accepting}"
            ET.SubElement(case, "skipped", message=why).text = why
            suite_skipped += 1
        if not findings and not not_judged:
            ET.SubElement(suite, "testcase", name="no violations", classname=rule.id)
        count = max(1, len(findings) + len(not_judged))
        suite.set("tests", str(count))
        suite.set("failures", str(suite_failures))
        suite.set("errors", "0")
        suite.set("skipped", str(suite_skipped))
        total += count
        failures += suite_failures
        skipped += suite_skipped
    if result.problems:
        suite = ET.SubElement(root, "testsuite", name="scan errors")
        for problem in result.problems:
            case = ET.SubElement(suite, "testcase", name=str(problem), classname="errors")
            ET.SubElement(case, "error", message=problem.message).text = str(problem)
        suite.set("tests", str(len(result.problems)))
        suite.set("failures", "0")
        suite.set("errors", str(len(result.problems)))
        total += len(result.problems)
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", str(len(result.problems)))
    root.set("skipped", str(skipped))
    # Names and messages hold what a pull request wrote: an ESC or NUL in them
    # would make the document no XML, and the CI would show no test report.
    for element in root.iter():
        element.attrib.update({k: inert.xml(v) for k, v in element.attrib.items()})
        if element.text:
            element.text = inert.xml(element.text)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
