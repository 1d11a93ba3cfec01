"""The scanner reads Terraform the way Terraform does: .tf.json files, override
files, duplicate addresses, optional() defaults, provider default_tags,
templatefile()/file(), aws_iam_policy_document, byte-order marks and CRLF; it
judges what is known; it never crashes, never skips in silence; and it says
what it could not judge. One small fixture per behaviour under
tests/fixtures/terraform/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from iac_scanner.checkov import _commands
from iac_scanner.loader import LoadOptions, load
from tests.conftest import FIXTURES, ROOT
from tests.test_scan_cli import SARIF_SCHEMA, errors, portcullis, scan_json

TERRAFORM = FIXTURES / "terraform"


def fixture(name: str) -> str:
    return f"tests/fixtures/terraform/{name}"


def findings(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(f["rule_id"], f["resource"]) for f in report["findings"]}


# --- 1. *.tf.json --------------------------------------------------------------------------


def test_tf_json_files_are_configuration_with_line_numbers() -> None:
    code, report = scan_json(fixture("tf_json"))
    assert code == 1
    [finding] = report["findings"]
    assert (finding["rule_id"], finding["resource"]) == ("PC-TF-005", "aws_security_group.bastion")
    # The "//" comment key is skipped, "${var.admin_cidr}" is interpolated,
    # and the finding points at the resource's object in the JSON file.
    assert finding["file"] == fixture("tf_json/sg.tf.json")
    assert finding["line"] == 8
    assert report["summary"]["resources"] == 2


def test_tf_json_provider_default_tags_and_blocks_are_read(tmp_path: Path) -> None:
    (tmp_path / "main.tf.json").write_text(
        json.dumps(
            {
                "provider": {"aws": {"default_tags": {"tags": {"app": "pos"}}}},
                "resource": {
                    "aws_db_instance": {"ledger": {"storage_encrypted": False}},
                    "aws_cloudtrail": {"main": {"name": "main"}},
                },
            }
        )
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert findings(report) == {("PC-TF-002", "aws_db_instance.ledger")}


def test_tf_json_nested_blocks_are_judged_as_one_object_or_a_list() -> None:
    """Terraform's JSON syntax writes a nested block as one object or as a
    list of objects: either gives the findings the HCL does (ingress, inline
    policies, listener actions, access logs to a log bucket), and what passes
    in HCL passes too."""
    found = {}
    for form in ("hcl", "object", "list"):
        code, report = scan_json(fixture(f"json_blocks/{form}"))
        assert code == 1
        assert report["not_judged"] == {}
        found[form] = {(f["rule_id"], f["resource"], f["message"]) for f in report["findings"]}
    assert found["object"] == found["hcl"]
    assert found["list"] == found["hcl"]
    assert {(rule, resource) for rule, resource, _ in found["hcl"]} == {
        ("PC-TF-001", "aws_security_group.pos"),
        ("PC-TF-005", "aws_security_group.pos"),
        ("PC-TF-001", "aws_security_group.wms"),
        ("PC-TF-007", "aws_iam_role.admin"),
        ("PC-TF-004", "aws_lb_listener.http"),
        ("PC-TF-004", "aws_elb.legacy"),
    }


def test_checkov_runs_its_terraform_json_framework_too(tmp_path: Path) -> None:
    for command in _commands("checkov", [TERRAFORM / "tf_json", TERRAFORM / "tf_json/sg.tf.json"]):
        framework = command.index("--framework")
        assert command[framework + 1 : framework + 3] == ["terraform", "terraform_json"]


def test_a_broken_tf_json_file_is_an_error_with_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "main.tf.json").write_text('{\n  "resource": {\n    "aws_s3_bucket": [1,]\n}\n')
    result = portcullis("scan", "--no-cache", str(tmp_path))
    assert result.returncode == 2
    assert errors(result)[0].startswith(f"error: {tmp_path}/main.tf.json:3:")


# --- 2. override files -----------------------------------------------------------------------


def test_override_files_merge_argument_by_argument() -> None:
    code, report = scan_json(fixture("override"))
    assert code == 1
    # tags_override.tf changes only the database's tags: storage_encrypted = true
    # stays (no PC-TF-002); its ingress block replaces the base's and opens SSH;
    # override.tf.json makes the bucket public-read.
    assert findings(report) == {
        ("PC-TF-005", "aws_security_group.bastion"),
        ("PC-TF-006", "aws_s3_bucket.assets"),
    }


def test_an_override_of_nothing_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('resource "aws_s3_bucket" "a" {\n  bucket = "a"\n}\n')
    (tmp_path / "main_override.tf").write_text('resource "aws_s3_bucket" "b" {\n  acl = "x"\n}\n')
    result = portcullis("scan", "--no-cache", str(tmp_path))
    assert result.returncode == 2
    assert (
        f"error: {tmp_path}/main_override.tf:1: Missing base resource configuration for "
        "override: there is no aws_s3_bucket.b in the module's other files to override"
    ) in errors(result)


# --- 3. duplicate resource addresses ---------------------------------------------------------


def test_a_duplicate_resource_address_is_an_error_naming_both_places() -> None:
    result = portcullis("scan", "--no-cache", fixture("duplicate_resource"))
    assert result.returncode == 2
    assert errors(result)[0] == (
        f"error: {fixture('duplicate_resource/b.tf')}:3: Duplicate resource configuration: "
        f"aws_s3_bucket.logs is already declared at {fixture('duplicate_resource/a.tf')}:1; "
        "Terraform refuses a module that declares a resource address twice (rename one, or "
        "make the second an override file)"
    )


# --- 4. optional(type, default) --------------------------------------------------------------


def test_optional_attribute_defaults_apply_when_absent() -> None:
    code, report = scan_json(fixture("optional_default"))
    assert code == 1
    # acl absent -> "public-read"; given as "private" -> stays private.
    assert findings(report) == {("PC-TF-006", "aws_s3_bucket.assets")}
    assert report["not_judged"] == {}


# --- 5. provider default_tags ----------------------------------------------------------------


def test_provider_default_tags_make_resources_app_infrastructure() -> None:
    code, report = scan_json(fixture("default_tags"))
    assert code == 1
    # ledger has no tags of its own: the provider's app = "pos" makes it pci.
    # scratch's own app = "scratch" wins over the default.
    assert findings(report) == {("PC-TF-002", "aws_db_instance.ledger")}


def test_default_tags_land_in_tags_all_and_resource_tags_win() -> None:
    loaded = load([str(TERRAFORM / "default_tags")], LoadOptions())
    [document] = loaded.documents
    by_address = {r.entry["address"]: r.entry for r in document.resources}
    assert by_address["aws_db_instance.ledger"]["config"]["tags_all"] == {
        "app": "pos",
        "owner": "platform",
    }
    assert by_address["aws_db_instance.scratch"]["config"]["tags_all"] == {
        "app": "scratch",
        "owner": "platform",
    }


# --- 6. templatefile() and file() -----------------------------------------------------------


def test_templatefile_and_file_inside_the_tree_are_evaluated() -> None:
    code, report = scan_json(fixture("templatefile"))
    assert code == 1
    assert findings(report) == {
        ("PC-TF-007", "aws_iam_policy.ops"),  # %{for}/%{if} rendered: statement 1 is "*"
        ("PC-TF-007", "aws_iam_policy.from_file"),
    }
    # A template variable without a value leaves the policy unknown, and said so.
    assert report["not_judged"] == {
        "PC-TF-007": {
            "resources": 1,
            "reasons": {"`policy` is unknown (var.bucket_arn has no value)": 1},
        }
    }


def test_file_outside_the_scanned_tree_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "outside.json"
    secret.write_text('{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}')
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "main.tf").write_text(
        f'resource "aws_iam_policy" "p" {{\n  policy = file("{secret}")\n}}\n'
    )
    code, report = scan_json(str(tree))
    assert code == 0
    assert report["summary"]["not_judged"] == 1


# --- 7. data "aws_iam_policy_document" -------------------------------------------------------


def test_iam_policy_documents_are_computed_from_their_configuration() -> None:
    code, report = scan_json(fixture("iam_policy_document"))
    assert code == 1
    assert findings(report) == {("PC-TF-007", "aws_iam_policy.admin")}
    [finding] = report["findings"]
    assert 'Sid "Everything"' in finding["message"]
    # Other data sources stay unknown.
    assert report["not_judged"]["PC-TF-007"]["reasons"] == {
        "`policy` is unknown (data.aws_caller_identity.me is read only at apply)": 1
    }


# --- 8. byte-order mark and CRLF -------------------------------------------------------------


def test_a_byte_order_mark_and_crlf_line_endings_are_valid() -> None:
    raw = (TERRAFORM / "bom_crlf/main.tf").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw, "the fixture lost its BOM/CRLF"
    code, report = scan_json(fixture("bom_crlf"))
    assert code == 1, report["errors"]
    [finding] = report["findings"]
    assert (finding["rule_id"], finding["line"]) == ("PC-TF-005", 2)
    assert report["summary"]["files"] == 2


# --- 9. judge what is known ------------------------------------------------------------------


def test_http_listener_forwarding_to_an_unknown_target_group_is_judged() -> None:
    code, report = scan_json(fixture("listener_forward"))
    assert code == 1
    assert ("PC-TF-004", "aws_lb_listener.pos_http") in findings(report)
    assert "PC-TF-004" not in report["not_judged"]


# --- 10. references through module outputs, in HCL and in a plan ----------------------------


def _hcl_and_plan(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON reports of a module_outputs fixture as HCL and as its plan.json."""
    code, hcl = scan_json(fixture(f"module_outputs/{name}"))
    plan_code, plan = scan_json(fixture(f"module_outputs/{name}/plan.json"))
    assert hcl["errors"] == [] and plan["errors"] == []
    assert code == plan_code
    return hcl, plan


# In a plan, a group's inline `ingress` that the configuration doesn't write is
# known only after apply (the provider fills it from the rule resources, or from
# a dynamic block, which a plan's configuration doesn't show): PC-TF-001 and
# PC-TF-005 say they couldn't judge it, where HCL sees no ingress block.
_COMPUTED_INGRESS = "`ingress.cidr_blocks` is unknown (known only after apply)"


def _judged(report: dict[str, Any]) -> tuple[set[tuple[str, str, str]], dict[str, Any]]:
    found = {(f["rule_id"], f["resource"], f["message"]) for f in report["findings"]}
    not_judged = {}
    for rule, entry in report["not_judged"].items():
        reasons = dict(entry["reasons"])
        computed = reasons.pop(_COMPUTED_INGRESS, 0)
        if reasons:
            not_judged[rule] = {"resources": entry["resources"] - computed, "reasons": reasons}
    return found, not_judged


def test_a_plans_computed_ingress_is_said_not_judged_where_hcl_has_no_ingress() -> None:
    hcl, plan = _hcl_and_plan("direct")
    assert hcl["not_judged"] == {}
    assert {rule: entry["reasons"] for rule, entry in plan["not_judged"].items()} == {
        "PC-TF-001": {_COMPUTED_INGRESS: 1},
        "PC-TF-005": {_COMPUTED_INGRESS: 1},
    }


def _group_targets(path: str) -> dict[str, list[str]]:
    """What each security group rule's security_group_id resolves to."""
    result = load([path], LoadOptions())
    assert result.problems == []
    return {
        r["address"]: r["targets"].get("security_group_id", [])
        for d in result.documents
        for r in d.as_input()["resources"]
        if r["type"] == "aws_security_group_rule"
    }


def test_a_group_reached_through_a_module_output_is_judged_in_a_plan_as_in_hcl() -> None:
    hcl, plan = _hcl_and_plan("direct")
    assert _judged(plan) == _judged(hcl)
    assert ("PC-TF-001", "aws_security_group_rule.open") in findings(plan)
    [finding] = [f for f in plan["findings"] if f["rule_id"] == "PC-TF-001"]
    group = "on security group module.pos_sg.aws_security_group.this (app pos"
    assert group in finding["message"]


def test_a_module_output_that_is_another_modules_output_is_followed_down() -> None:
    hcl, plan = _hcl_and_plan("nested")
    assert _judged(plan) == _judged(hcl)
    assert ("PC-TF-001", "aws_security_group_rule.open") in findings(plan)
    targets = _group_targets(fixture("module_outputs/nested/plan.json"))
    assert targets == {
        "aws_security_group_rule.open": ["module.outer.module.inner.aws_security_group.this"]
    }


def test_an_output_of_a_repeated_module_read_by_literal_key_is_that_instances() -> None:
    hcl, plan = _hcl_and_plan("repeated")
    assert _judged(plan) == _judged(hcl)
    critical = {r for rule, r in findings(plan) if rule == "PC-TF-001"}
    assert critical == {"aws_security_group_rule.first", "aws_security_group_rule.b"}
    # count.index and each.key: a plan records `module.counted` and
    # `count.index`, not the output, so neither path resolves the group, and
    # PC-TF-001 says of each rule that its group is not in the scan.
    assert hcl["not_judged"]["PC-TF-001"]["resources"] == 4
    expected = {
        "aws_security_group_rule.first": ["module.counted[0].aws_security_group.this"],
        "aws_security_group_rule.b": ['module.keyed["b"].aws_security_group.this'],
        "aws_security_group_rule.each_counted[0]": [],
        "aws_security_group_rule.each_counted[1]": [],
        'aws_security_group_rule.each_keyed["a"]': [],
        'aws_security_group_rule.each_keyed["b"]': [],
    }
    assert _group_targets(fixture("module_outputs/repeated")) == expected
    assert _group_targets(fixture("module_outputs/repeated/plan.json")) == expected


def test_an_output_that_is_a_variable_literal_or_local_links_only_what_it_is_given() -> None:
    hcl, plan = _hcl_and_plan("values")
    assert _judged(plan) == _judged(hcl)
    critical = {r for rule, r in findings(plan) if rule == "PC-TF-001"}
    assert critical == {"aws_security_group_rule.variable_of_group"}
    expected = {
        "aws_security_group_rule.variable_of_literal": [],
        "aws_security_group_rule.literal": [],
        "aws_security_group_rule.local": [],
        "aws_security_group_rule.variable_of_group": ["aws_security_group.pos"],
    }
    assert _group_targets(fixture("module_outputs/values")) == expected
    assert _group_targets(fixture("module_outputs/values/plan.json")) == expected


# --- robustness -------------------------------------------------------------------------------


def test_a_deeply_nested_value_is_an_error_with_file_and_line_never_a_crash() -> None:
    result = portcullis("scan", "--no-cache", fixture("deep_nesting"))
    assert result.returncode == 2
    assert errors(result)[0] == (
        f"error: {fixture('deep_nesting/main.tf')}:6: aws_s3_bucket.deep: `lifecycle_rule` "
        "nests more than 100 levels deep, more than the policy engine evaluates; the resource "
        "was not judged (flatten the value)"
    )


def test_a_tf_symlink_loop_is_an_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('resource "aws_s3_bucket" "a" {\n  bucket = "a"\n}\n')
    (tmp_path / "a.tf").symlink_to(tmp_path / "b.tf")
    (tmp_path / "b.tf").symlink_to(tmp_path / "a.tf")
    result = portcullis("scan", "--no-cache", str(tmp_path))
    assert result.returncode == 2
    assert errors(result)[:2] == [
        f"error: {tmp_path}/a.tf: Too many levels of symbolic links",
        f"error: {tmp_path}/b.tf: Too many levels of symbolic links",
    ]


def test_an_unreadable_directory_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests run as root, whom no permission bit stops, so the refusal is made
    by replacing os.scandir for that one directory (a fake: no real one here)."""
    (tmp_path / "main.tf").write_text('resource "aws_s3_bucket" "a" {\n  bucket = "a"\n}\n')
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "main.tf").write_text('resource "aws_s3_bucket" "b" {\n  bucket = "b"\n}\n')
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = load([str(tmp_path)], LoadOptions())
    assert [str(p) for p in result.problems] == [
        f"{locked}: can't read directory: Permission denied"
    ]


# --- reports CI systems trust -----------------------------------------------------------------


def _repo_with_infra(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(TERRAFORM / "fingerprints", repo / "infra")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def _sarif(*args: str, cwd: Path) -> dict[str, Any]:
    result = portcullis("scan", "--no-cache", "--output", "sarif", *args, cwd=cwd)
    assert result.returncode == 1, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _locations(sarif: dict[str, Any]) -> list[tuple[str, str, str]]:
    run = sarif["runs"][0]
    return sorted(
        (
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"],
            r["partialFingerprints"]["portcullisFingerprint/v2"],
        )
        for r in run["results"]
    )


def test_sarif_uris_are_relative_to_the_repository_whatever_the_working_directory(
    tmp_path: Path,
) -> None:
    repo = _repo_with_infra(tmp_path)
    from_root = _sarif("infra", cwd=repo)
    from_inside = _sarif(".", cwd=repo / "infra")
    from_outside = _sarif(str(repo / "infra"), cwd=tmp_path)
    assert _locations(from_root) == _locations(from_inside) == _locations(from_outside)
    assert {uri for uri, _, _ in _locations(from_root)} == {"infra/main.tf"}
    for sarif in (from_root, from_inside, from_outside):
        assert sarif["runs"][0]["originalUriBaseIds"]["%SRCROOT%"]["uri"] == (
            repo.resolve().as_uri() + "/"
        )


def test_junit_files_are_repository_paths_so_gitlab_links_them_from_a_subdirectory(
    tmp_path: Path,
) -> None:
    """GitLab links a test case's `file` into the repository: a scan run in
    infra/envs/prod gave `main.tf` and, for the module it calls, an absolute
    path of the runner's disk; neither is a repository path."""
    repo = tmp_path / "repo"
    shutil.copytree(
        TERRAFORM / "shared_module", repo / "infra", ignore=shutil.ignore_patterns("*.json")
    )
    shutil.copy(TERRAFORM / "not_judged/main.tf", repo / "infra/envs/prod/db.tf")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    prod = repo / "infra/envs/prod"
    result = portcullis("scan", "--no-cache", ".", "--output", "junit", cwd=prod)
    assert result.returncode == 1, result.stderr
    cases = list(ET.fromstring(result.stdout).iter("testcase"))
    files = {(c.find("skipped") is not None, c.get("file")) for c in cases if c.get("file")}
    assert files == {
        (False, "infra/envs/prod/main.tf"),
        (False, "infra/envs/prod/db.tf"),  # PC-TF-008: aws_lb.pos writes no access logs
        (False, "infra/modules/app/main.tf"),
        (True, "infra/envs/prod/db.tf"),  # not judged: storage_encrypted, internal
    }


def test_sarif_root_option_sets_the_base(tmp_path: Path) -> None:
    repo = _repo_with_infra(tmp_path)
    sarif = _sarif("infra", "--sarif-root", "infra", cwd=repo)
    assert {uri for uri, _, _ in _locations(sarif)} == {"main.tf"}
    bad = portcullis(
        "scan", "--no-cache", "infra", "--sarif-root", "nowhere",
        "--output", "sarif", "--output-file", "scan.sarif", cwd=repo,
    )  # fmt: skip
    assert bad.returncode == 2
    assert errors(bad) == ["portcullis scan: --sarif-root nowhere: not a directory"]
    # The report says so (an option is no file: no location), for code scanning to show.
    report = json.loads((repo / "scan.sarif").read_text())
    jsonschema.validate(report, json.loads(SARIF_SCHEMA.read_text()))
    [invocation] = report["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    assert invocation["toolExecutionNotifications"] == [
        {"level": "error", "message": {"text": "--sarif-root nowhere: not a directory"}}
    ]


def _resolved(location: dict[str, Any], bases: dict[str, Any]) -> str:
    """An artifactLocation's absolute URI, resolved as SARIF 2.1.0 3.14.14 says."""
    uri, base = location["uri"], location.get("uriBaseId")
    while base is not None:
        uri, base = bases[base]["uri"] + uri, bases[base].get("uriBaseId")
    return str(uri)


@pytest.mark.parametrize(
    ("source", "module_dir", "sarif_root", "module_uri", "srcroot"),
    [
        # Outside the repository: PROJECTROOT is the directory holding both.
        ("../../shared-modules/bucket", "shared-modules/bucket", None,
         "shared-modules/bucket/main.tf", "repo/"),
        # In the repository, outside --sarif-root: PROJECTROOT is the repository,
        # so the uri is the repository path code scanning looks for.
        ("../modules/bucket", "repo/modules/bucket", "infra",
         "modules/bucket/main.tf", "infra/"),
    ],
)  # fmt: skip
def test_sarif_gives_a_module_outside_the_root_a_relative_uri_never_a_machine_path(
    tmp_path: Path,
    source: str,
    module_dir: str,
    sarif_root: str | None,
    module_uri: str,
    srcroot: str,
) -> None:
    repo = _repo_with_infra(tmp_path)
    (repo / "infra/logs.tf").write_text(
        f'module "logs" {{\n  source = "{source}"\n  name   = "logs"\n'
        '  tags   = { app = "pos", environment = "prod" }\n}\n'  # pos is pci: PC-TF-002, -008
    )
    shutil.copytree(TERRAFORM / "pos_app/modules/bucket", tmp_path / module_dir)
    sarif = _sarif("infra", *(["--sarif-root", sarif_root] if sarif_root else []), cwd=repo)
    jsonschema.validate(sarif, json.loads(SARIF_SCHEMA.read_text()))
    [run] = sarif["runs"]
    bases = run["originalUriBaseIds"]
    assert bases["PROJECTROOT"]["uri"] == (tmp_path / module_dir).parents[1].as_uri() + "/"
    assert bases["%SRCROOT%"] == {"uri": srcroot, "uriBaseId": "PROJECTROOT"}
    locations = [r["locations"][0]["physicalLocation"]["artifactLocation"] for r in run["results"]]
    module = [loc for loc in locations if loc["uriBaseId"] == "PROJECTROOT"]
    assert module and all(loc == {"uri": module_uri, "uriBaseId": "PROJECTROOT"} for loc in module)
    # Every result resolves to the file it is in, and none names the machine's paths.
    assert {_resolved(loc, bases) for loc in locations} == {
        (tmp_path / module_dir / "main.tf").as_uri(),
        (repo / "infra/main.tf").as_uri(),
    }
    assert str(tmp_path) not in json.dumps(run["results"])
    # The same trees elsewhere on the machine (another CI workspace): the same
    # results, fingerprints included, so code scanning keeps tracking each alert.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for child in [c for c in tmp_path.iterdir() if c != moved]:
        shutil.move(child, moved / child.name)
    again = _sarif(
        "infra", *(["--sarif-root", sarif_root] if sarif_root else []), cwd=moved / "repo"
    )
    assert _locations(again) == _locations(sarif)


def test_two_findings_of_one_rule_on_one_resource_have_distinct_fingerprints() -> None:
    code, report = scan_json(fixture("fingerprints"))
    assert code == 1
    fingerprints = [f["fingerprint"] for f in report["findings"]]
    assert len(fingerprints) == 2 and len(set(fingerprints)) == 2


def test_a_new_hole_on_a_baselined_resource_is_not_in_the_baseline(tmp_path: Path) -> None:
    tree = tmp_path / "infra"
    tree.mkdir()
    main = tree / "main.tf"
    main.write_text('resource "aws_s3_bucket" "site" {\n  bucket = "s"\n  acl = "public-read"\n}\n')
    baseline = tmp_path / "baseline.json"
    created = portcullis("scan", "--no-cache", str(tree), "--create-baseline", str(baseline))
    assert created.returncode == 0
    main.write_text((TERRAFORM / "fingerprints/main.tf").read_text())
    code, report = scan_json(str(tree), "--baseline", str(baseline))
    assert code == 1
    state = {f["message"].split(" ")[1]: f["baselined"] for f in report["findings"]}
    assert state == {"sets": True, "enables": False}


def test_a_version_1_baseline_is_refused_with_what_to_do(tmp_path: Path) -> None:
    baseline = tmp_path / "old.json"
    baseline.write_text('{"version": 1, "findings": [{"fingerprint": "abc"}]}')
    result = portcullis("scan", "--no-cache", fixture("fingerprints"), "--baseline", str(baseline))
    assert result.returncode == 2
    assert "re-create it with --create-baseline" in result.stderr


def test_reports_say_per_rule_what_could_not_be_judged_and_why(tmp_path: Path) -> None:
    code, report = scan_json(fixture("not_judged"))
    assert code == 1
    expected = {
        "PC-TF-002": {
            "resources": 2,
            "reasons": {"`storage_encrypted` is unknown (var.encrypted has no value)": 2},
        },
        "PC-TF-003": {
            "resources": 1,
            "reasons": {"`internal` is unknown (var.internal has no value)": 1},
        },
    }
    assert report["not_judged"] == expected
    assert report["summary"]["not_judged"] == 3
    sarif = _sarif(fixture("not_judged"), cwd=ROOT)
    assert sarif["runs"][0]["properties"]["notJudged"] == expected
    text = portcullis("scan", "--no-cache", fixture("not_judged")).stdout.splitlines()
    assert (
        "not judged: PC-TF-002: 2 resources not judged: `storage_encrypted` is unknown "
        "(var.encrypted has no value)"
    ) in text
    assert text[-1].endswith("; 3 not judged; 1 at or above low: FAIL")
    # Given values, the same tree is judged in full.
    code, judged = scan_json(
        fixture("not_judged"), "--var", "encrypted=true", "--var", "internal=true"
    )
    assert judged["not_judged"] == {} and judged["summary"]["not_judged"] == 0


def test_resources_of_one_address_in_two_root_modules_are_two_not_judged(tmp_path: Path) -> None:
    """Two root modules (envs/a, envs/b) that each declare aws_lb.pos with an
    unknown `internal` hold two load balancers nobody judged, not one."""
    for env in ("a", "b"):
        shutil.copytree(TERRAFORM / "not_judged", tmp_path / "envs" / env)
    code, report = scan_json(str(tmp_path / "envs"))
    assert code == 1
    assert report["not_judged"]["PC-TF-003"] == {
        "resources": 2,
        "reasons": {"`internal` is unknown (var.internal has no value)": 2},
    }
    assert report["not_judged"]["PC-TF-002"]["resources"] == 4
    assert report["summary"]["not_judged"] == 6
    text = portcullis("scan", "--no-cache", str(tmp_path / "envs")).stdout.splitlines()
    assert (
        "not judged: PC-TF-003: 2 resources not judged: `internal` is unknown "
        "(var.internal has no value)"
    ) in text
    assert text[-1].endswith("; 6 not judged; 2 at or above low: FAIL")


# --- a module several root modules call -------------------------------------------------------


def _environments(tmp_path: Path, *, staging: bool) -> Path:
    """shared_module/ outside any git work tree (paths relative to it), with or
    without the staging environment."""
    tree = tmp_path / "infra"
    shutil.copytree(TERRAFORM / "shared_module", tree, ignore=shutil.ignore_patterns("*.json"))
    if not staging:
        shutil.rmtree(tree / "envs/staging")
    return tree


def _state(report: dict[str, Any]) -> dict[tuple[str, str], bool]:
    """(resource, root module) -> baselined."""
    return {(f["resource"], f["root_module"]): f["baselined"] for f in report["findings"]}


def test_a_module_two_roots_call_is_a_finding_per_root_named_in_every_report(
    tmp_path: Path,
) -> None:
    tree = _environments(tmp_path, staging=True)
    code, report = scan_json(".", cwd=tree)
    assert code == 1
    module = [f for f in report["findings"] if f["resource"] == "module.app.aws_s3_bucket.data"]
    assert [(f["file"], f["root_module"]) for f in module] == [
        ("modules/app/main.tf", "envs/prod"),
        ("modules/app/main.tf", "envs/staging"),
    ]
    assert len({f["fingerprint"] for f in report["findings"]}) == 3
    text = portcullis("scan", "--no-cache", ".", cwd=tree).stdout.splitlines()
    for root in ("envs/prod", "envs/staging"):
        assert any(
            line.endswith(f"(module.app.aws_s3_bucket.data in root module {root})") for line in text
        )
    assert text[-1] == "3 findings (3 high) in 3 files, 3 resources; 3 at or above low: FAIL"
    # A root module's own file names its root: nothing added.
    assert not any("aws_s3_bucket.logs" in line and "root module" in line for line in text)
    sarif = _sarif(".", cwd=tree)
    jsonschema.validate(sarif, json.loads(SARIF_SCHEMA.read_text()))
    results = sarif["runs"][0]["results"]
    assert sorted(
        (r["properties"]["rootModule"], r["message"]["text"].endswith(")")) for r in results
    ) == [("envs/prod", False), ("envs/prod", True), ("envs/staging", True)]
    assert any(r["message"]["text"].endswith(" (in root module envs/staging)") for r in results)
    out = tmp_path / "scan.xml"
    junit = portcullis(
        "scan", "--no-cache", ".", "--output", "junit", "--output-file", str(out), cwd=tree
    )
    assert junit.returncode == 1
    names = [c.get("name") for c in ET.parse(out).getroot().iter("testcase")]
    staging = "module.app.aws_s3_bucket.data in root module envs/staging (modules/app/main.tf): "
    assert any(name.startswith(staging) for name in names)


def test_a_new_root_calling_a_baselined_module_fails_the_build(tmp_path: Path) -> None:
    tree = _environments(tmp_path, staging=False)
    baseline = tmp_path / "baseline.json"
    created = portcullis("scan", "--no-cache", ".", "--create-baseline", str(baseline), cwd=tree)
    assert created.returncode == 0
    entries = json.loads(baseline.read_text())["findings"]
    assert json.loads(baseline.read_text())["version"] == 3
    assert {(e["resource"], e["root_module"]) for e in entries} == {
        ("aws_s3_bucket.logs", "envs/prod"),
        ("module.app.aws_s3_bucket.data", "envs/prod"),
    }
    shutil.copytree(TERRAFORM / "shared_module/envs/staging", tree / "envs/staging")
    code, report = scan_json(".", "--baseline", str(baseline), cwd=tree)
    assert code == 1
    assert _state(report) == {
        ("aws_s3_bucket.logs", "envs/prod"): True,
        ("module.app.aws_s3_bucket.data", "envs/prod"): True,
        ("module.app.aws_s3_bucket.data", "envs/staging"): False,
    }
    text = portcullis("scan", "--no-cache", ".", "--baseline", str(baseline), cwd=tree)
    assert text.returncode == 1
    assert text.stdout.splitlines()[-1] == (
        "1 finding (1 high) in 3 files, 3 resources; 2 in baseline; 1 at or above low: FAIL"
    )


def test_a_version_2_baseline_keeps_its_findings_and_covers_no_new_root(tmp_path: Path) -> None:
    # Written by the scanner before root modules were told apart, with envs/prod alone.
    baseline = str(TERRAFORM / "shared_module/baseline-v2.json")
    tree = _environments(tmp_path, staging=False)
    code, report = scan_json(".", "--baseline", baseline, cwd=tree)
    assert code == 0
    assert _state(report) == {
        ("aws_s3_bucket.logs", "envs/prod"): True,
        ("module.app.aws_s3_bucket.data", "envs/prod"): True,
    }
    assert report["notes"] == []
    # Its entry for the module's bucket names no root: with a second root
    # module it can't tell the old hole from the new one and accepts neither.
    shutil.copytree(TERRAFORM / "shared_module/envs/staging", tree / "envs/staging")
    code, report = scan_json(".", "--baseline", baseline, cwd=tree)
    assert code == 1
    assert _state(report) == {
        ("aws_s3_bucket.logs", "envs/prod"): True,
        ("module.app.aws_s3_bucket.data", "envs/prod"): False,
        ("module.app.aws_s3_bucket.data", "envs/staging"): False,
    }
    assert report["notes"] == [
        f"{baseline}: the version 2 entry for PC-TF-006 on module.app.aws_s3_bucket.data "
        "(modules/app/main.tf) names no root module, and 2 root modules have that finding "
        "(envs/prod, envs/staging): it accepts none of them; re-create the baseline with "
        "--create-baseline to accept the ones you mean to"
    ]


def test_a_source_cidr_that_cant_be_resolved_is_not_judged_and_said() -> None:
    """PC-TF-001 and PC-TF-005 say so for an ingress whose source CIDR (the
    list, or one element of it) has no value, however the ingress is declared
    and in HCL or .tf.json: "0 findings" and "0 findings, 4 not judged" look
    different, and not judged never fails the scan."""
    for form, block in (("hcl", "ingress.0"), ("json", "ingress")):
        code, report = scan_json(fixture(f"unknown_cidr/{form}"))
        assert code == 0 and report["findings"] == []
        unset_list = f"`{block}.cidr_blocks` is unknown (var.admin_cidrs has no value)"
        assert report["not_judged"] == {
            "PC-TF-001": {"resources": 1, "reasons": {unset_list: 1}},
            "PC-TF-005": {
                "resources": 3,
                "reasons": {
                    unset_list: 1,
                    "`cidr_blocks.1` is unknown (var.admin_cidr has no value)": 1,
                    "`cidr_ipv4` is unknown (var.admin_cidr has no value)": 1,
                },
            },
        }
        assert report["summary"]["not_judged"] == 4
    text = portcullis("scan", "--no-cache", fixture("unknown_cidr/hcl")).stdout.splitlines()
    assert (
        "not judged: PC-TF-001: 1 resource not judged: `ingress.0.cidr_blocks` is unknown "
        "(var.admin_cidrs has no value)"
    ) in text
    assert text[-1] == "0 findings in 1 file, 6 resources; 4 not judged; PASS"
    # A template directive in an HCL string is not evaluated: unknown too.
    directive = portcullis("scan", "--no-cache", fixture("unknown_cidr/directive"))
    assert directive.returncode == 0
    assert directive.stdout.splitlines()[0].startswith(
        "not judged: PC-TF-005: 1 resource not judged: `ingress.0.cidr_blocks` is unknown"
    )
    # Given values, each form is judged in full.
    for form in ("hcl", "json"):
        world = ["--var", 'admin_cidrs=["0.0.0.0/0"]', "--var", "admin_cidr=0.0.0.0/0"]
        code, report = scan_json(fixture(f"unknown_cidr/{form}"), *world)
        assert code == 1 and report["not_judged"] == {}
        assert findings(report) == {
            ("PC-TF-001", "aws_security_group.pos"),
            ("PC-TF-005", "aws_security_group.pos"),
            ("PC-TF-005", "aws_security_group_rule.bastion_ssh"),
            ("PC-TF-005", "aws_vpc_security_group_ingress_rule.bastion_rdp"),
        }
        private = ["--var", 'admin_cidrs=["10.0.0.0/8"]', "--var", "admin_cidr=10.1.0.0/16"]
        code, report = scan_json(fixture(f"unknown_cidr/{form}"), *private)
        assert code == 0 and report["findings"] == [] and report["not_judged"] == {}


def test_a_world_open_rule_on_a_group_outside_the_scan_is_not_judged_and_said() -> None:
    """A literal `sg-...` or an unset variable as security_group_id: PC-TF-001
    said nothing, neither a finding nor "not judged", so a rule opening an app
    backend made elsewhere to the internet passed as if judged."""
    code, report = scan_json(fixture("outside_group"))
    assert code == 0 and report["findings"] == []
    reason = (
        "`security_group_id`: the security group it applies to is not in this scan, so "
        "whether it is an app backend's is unknown"
    )
    assert report["not_judged"]["PC-TF-001"] == {"resources": 2, "reasons": {reason: 2}}


def test_the_vpcs_default_security_group_open_to_the_internet_is_judged() -> None:
    """aws_default_security_group adopts a VPC's default group, inline ingress
    and all: its SSH open to 0.0.0.0/0 passed (the rules read only
    aws_security_group), and a rule on it was "not in this scan"."""
    code, report = scan_json(fixture("default_security_group"))
    assert code == 1
    assert findings(report) == {
        ("PC-TF-001", "aws_default_security_group.default"),
        ("PC-TF-005", "aws_default_security_group.default"),
        ("PC-TF-001", "aws_vpc_security_group_ingress_rule.pos_https"),
    }
    assert report["not_judged"] == {}


def test_a_non_nullable_variable_given_null_takes_its_default() -> None:
    """`nullable = false` makes Terraform use the default for a null argument
    (a module call passing an unset optional variable through, or `x = null` in
    tfvars). The scanner kept the null, so `cidr_blocks = [var.admin_cidr]`
    held no CIDR at all and SSH and RDP open to 0.0.0.0/0 passed unjudged."""
    code, report = scan_json(fixture("nullable_default"))
    assert code == 1
    assert findings(report) == {
        ("PC-TF-005", "module.bastion.aws_security_group.bastion"),
        ("PC-TF-005", "aws_vpc_security_group_ingress_rule.rdp"),
    }


def test_cidrsubnet_of_a_large_ipv6_subnet_number_is_computed_not_walked(tmp_path: Path) -> None:
    """cidrsubnet() walked every subnet up to netnum: a /64 numbered in the
    billions out of an IPv6 /32 hung the scan."""
    (tmp_path / "main.tf").write_text(
        'resource "aws_security_group" "bastion" {\n'
        '  name = "bastion"\n'
        "  ingress {\n"
        "    from_port        = 22\n"
        "    to_port          = 22\n"
        '    protocol         = "tcp"\n'
        '    ipv6_cidr_blocks = [cidrsubnet("fd12:3456::/32", 32, 4000000000)]\n'
        "  }\n"
        "  ingress {\n"
        "    from_port   = 3389\n"
        "    to_port     = 3389\n"
        '    protocol    = "tcp"\n'
        '    cidr_blocks = [cidrsubnet("10.0.0.0/8", 16, 65000), cidrsubnet("0.0.0.0/0", 0, 0)]\n'
        "  }\n"
        "}\n"
    )
    result = load([tmp_path], LoadOptions())
    [resource] = result.documents[0].resources
    ingress = resource.entry["config"]["ingress"]
    assert ingress[0]["ipv6_cidr_blocks"] == ["fd12:3456:ee6b:2800::/64"]
    assert ingress[1]["cidr_blocks"] == ["10.253.232.0/24", "0.0.0.0/0"]
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert [f["message"].split(";")[0] for f in report["findings"]] == [
        "aws_security_group.bastion opens RDP (port 3389) to 0.0.0.0/0 in ingress block 1 "
        "via port 3389/tcp"
    ]


def test_setproduct_pairs_each_port_with_each_cidr_for_a_for_each(tmp_path: Path) -> None:
    """setproduct() was not evaluated, so rules made one per (port, CIDR) pair
    were never judged: SSH from 0.0.0.0/0 among them was only "not judged"."""
    (tmp_path / "main.tf").write_text(
        'variable "admin_cidrs" { default = ["10.20.0.0/16", "0.0.0.0/0"] }\n'
        'resource "aws_security_group" "bastion" { name = "bastion" }\n'
        'resource "aws_security_group_rule" "admin" {\n'
        "  for_each = {\n"
        "    for pair in setproduct([22, 3389], var.admin_cidrs) :\n"
        '    "${pair[0]}-${pair[1]}" => { port = pair[0], cidr = pair[1] }\n'
        "  }\n"
        '  type              = "ingress"\n'
        '  protocol          = "tcp"\n'
        "  from_port         = each.value.port\n"
        "  to_port           = each.value.port\n"
        "  cidr_blocks       = [each.value.cidr]\n"
        "  security_group_id = aws_security_group.bastion.id\n"
        "}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert findings(report) == {
        ("PC-TF-005", 'aws_security_group_rule.admin["22-0.0.0.0/0"]'),
        ("PC-TF-005", 'aws_security_group_rule.admin["3389-0.0.0.0/0"]'),
    }
    assert report["not_judged"] == {} and report["summary"]["resources"] == 5


# --- merge() and concat() with an unknown argument keep what is certain ------------------


def test_a_tag_merged_after_an_unset_variable_makes_the_resource_the_apps(tmp_path: Path) -> None:
    """`tags = merge(var.tags, { app = "pos" })` with var.tags given no value:
    the whole of tags was unknown, so the resource was not the pos app's and
    the app rules said nothing, not even "not judged". merge() gives later
    maps precedence: app = "pos" is certain whatever var.tags holds."""
    (tmp_path / "main.tf").write_text(
        'variable "tags" { type = map(string) }\n'
        'locals { common_tags = merge(var.tags, { team = "payments" }) }\n'
        'resource "aws_db_instance" "ledger" {\n'
        "  storage_encrypted = false\n"
        '  tags              = merge(var.tags, { app = "pos" })\n'
        "}\n"
        'resource "aws_lb" "front" {\n'
        "  internal = false\n"
        # role is certain too: not the gateway's (which may face the internet).
        '  tags     = merge(local.common_tags, { app = "pos", role = "web" })\n'
        "  access_logs {\n"
        '    bucket  = "logs"\n'
        "    enabled = true\n"
        "  }\n"
        "}\n"
        'resource "aws_cloudtrail" "main" { name = "main" }\n'
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert findings(report) == {
        ("PC-TF-002", "aws_db_instance.ledger"),
        ("PC-TF-003", "aws_lb.front"),
    }


def test_a_tag_merged_before_an_unset_variable_stays_unknown(tmp_path: Path) -> None:
    """`merge({ app = "pos" }, var.tags)`: var.tags may override app, so the
    resource is not taken for the pos app's (as before), and a tag the rules
    look for the absence of is not taken as absent either."""
    (tmp_path / "main.tf").write_text(
        'variable "tags" { type = map(string) }\n'
        'resource "aws_db_instance" "ledger" {\n'
        "  storage_encrypted = false\n"
        '  tags              = merge({ app = "pos" }, var.tags)\n'
        "}\n"
        'resource "aws_cloudtrail" "main" { name = "main" }\n'
    )
    code, report = scan_json(str(tmp_path))
    assert code == 0 and report["findings"] == []
    documents = load([str(tmp_path)], LoadOptions()).documents
    [ledger] = [r for r in documents[0].as_input()["resources"] if r["type"] == "aws_db_instance"]
    assert ledger["config"]["tags"] == {}
    assert ledger["unknown"] == ["tags.app"] and ledger["incomplete"] == ["tags"]


def test_a_world_cidr_concatenated_to_an_unset_list_is_a_finding(tmp_path: Path) -> None:
    """`cidr_blocks = concat(var.extra_cidrs, ["0.0.0.0/0"])`: 0.0.0.0/0 is in
    the list whatever var.extra_cidrs holds, but the whole list was unknown and
    SSH open to the internet was only "not judged". So is an ingress written as
    an attribute, one of whose rules is known and open."""
    (tmp_path / "main.tf").write_text(
        'variable "extra_cidrs" { type = list(string) }\n'
        'variable "extra_rules" { type = list(any) }\n'
        'resource "aws_security_group" "bastion" {\n'
        "  ingress {\n"
        "    from_port   = 22\n"
        "    to_port     = 22\n"
        '    protocol    = "tcp"\n'
        '    cidr_blocks = concat(var.extra_cidrs, ["0.0.0.0/0"])\n'
        "  }\n"
        "}\n"
        'resource "aws_security_group" "jump" {\n'
        "  ingress = concat(var.extra_rules, [{\n"
        '    from_port = 3389, to_port = 3389, protocol = "tcp", cidr_blocks = ["0.0.0.0/0"]\n'
        "  }])\n"
        "}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert findings(report) == {
        ("PC-TF-005", "aws_security_group.bastion"),
        ("PC-TF-005", "aws_security_group.jump"),
    }


def test_a_rule_that_needs_every_cidr_still_says_not_judged(tmp_path: Path) -> None:
    """What concat() adds to an unset list is known, but not all of the list:
    a private CIDR among the known ones does not clear the ingress (the rest
    may be 0.0.0.0/0), nor does a known private rule clear the ingress rules
    an unset list adds. Not judged, never passed."""
    (tmp_path / "main.tf").write_text(
        'variable "extra_cidrs" { type = list(string) }\n'
        'variable "extra_rules" { type = list(any) }\n'
        'resource "aws_security_group" "bastion" {\n'
        "  ingress {\n"
        "    from_port   = 22\n"
        "    to_port     = 22\n"
        '    protocol    = "tcp"\n'
        '    cidr_blocks = concat(["10.0.0.0/8"], var.extra_cidrs)\n'
        "  }\n"
        "}\n"
        'resource "aws_security_group" "jump" {\n'
        "  ingress = concat([{\n"
        '    from_port = 3389, to_port = 3389, protocol = "tcp", cidr_blocks = ["10.0.0.0/8"]\n'
        "  }], var.extra_rules)\n"
        "}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 0 and report["findings"] == []
    assert report["not_judged"]["PC-TF-005"] == {
        "resources": 2,
        "reasons": {
            "`ingress.0.cidr_blocks` is unknown (var.extra_cidrs has no value)": 1,
            "`ingress.cidr_blocks` is unknown (var.extra_rules has no value)": 1,
        },
    }


def test_for_each_over_a_partly_known_merge_is_unknown(tmp_path: Path) -> None:
    """for_each needs every key: over merge(var.rules, {...}) with var.rules
    unset, the resource is scanned once with each unknown, as for any unknown
    for_each, never as the one instance the known map names."""
    (tmp_path / "main.tf").write_text(
        'variable "rules" { type = map(string) }\n'
        'resource "aws_security_group" "bastion" { name = "bastion" }\n'
        'resource "aws_security_group_rule" "admin" {\n'
        '  for_each          = merge(var.rules, { ssh = "10.0.0.0/8" })\n'
        '  type              = "ingress"\n'
        '  protocol          = "tcp"\n'
        "  from_port         = 22\n"
        "  to_port           = 22\n"
        "  cidr_blocks       = [each.value]\n"
        "  security_group_id = aws_security_group.bastion.id\n"
        "}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 0 and report["findings"] == []
    reason = "`cidr_blocks.0` is unknown (each.value is unknown (count/for_each not resolved))"
    assert report["not_judged"]["PC-TF-005"] == {"resources": 1, "reasons": {reason: 1}}


def test_unknown_provider_default_tags_leave_the_resources_own_tags_certain(
    tmp_path: Path,
) -> None:
    """`default_tags { tags = var.default_tags }` with the variable unset: the
    scan crashed (a traceback, "UNKNOWN has no truth value"). tags_all is
    merge(default_tags, tags): the resource's own app = "pos" is certain."""
    (tmp_path / "main.tf").write_text(
        'variable "default_tags" { type = map(string) }\n'
        'provider "aws" {\n  default_tags { tags = var.default_tags }\n}\n'
        'resource "aws_db_instance" "ledger" {\n'
        "  storage_encrypted = false\n"
        '  tags              = { app = "pos" }\n'
        "}\n"
        'resource "aws_cloudtrail" "main" { name = "main" }\n'
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert findings(report) == {("PC-TF-002", "aws_db_instance.ledger")}
    [ledger] = [
        r
        for r in load([str(tmp_path)], LoadOptions()).documents[0].as_input()["resources"]
        if r["type"] == "aws_db_instance"
    ]
    assert ledger["config"]["tags_all"] == {"app": "pos"}
    assert ledger["incomplete"] == ["tags_all"]


def test_optional_defaults_apply_to_what_a_partly_known_merge_certainly_sets(
    tmp_path: Path,
) -> None:
    """A module argument `merge(var.common, { cidr_blocks = var.ssh_cidrs })`
    with both variables unset: the key is certainly set, to null, so the
    module's `optional(list(string), ["0.0.0.0/0"])` default applies, as it
    does in Terraform. The partly known object skipped optional() defaults:
    SSH open to the internet by the module's default passed in silence
    (before merge() kept what is certain it was not judged), and a null
    storage_encrypted whose default is true was a finding."""
    module = tmp_path / "m"
    module.mkdir()
    (tmp_path / "main.tf").write_text(
        'variable "common" { type = map(any) }\n'
        'variable "ssh_cidrs" {\n  type    = list(string)\n  default = null\n}\n'
        'variable "encrypt" {\n  type    = bool\n  default = null\n}\n'
        'module "ssh" {\n'
        '  source   = "./m"\n'
        "  rule     = merge(var.common, { port = 22, cidr_blocks = var.ssh_cidrs })\n"
        "  settings = merge(var.common, { storage_encrypted = var.encrypt })\n"
        "}\n"
        'resource "aws_cloudtrail" "main" { name = "main" }\n'
    )
    (module / "main.tf").write_text(
        'variable "rule" {\n'
        "  type = object({\n"
        "    port        = number\n"
        '    cidr_blocks = optional(list(string), ["0.0.0.0/0"])\n'
        "  })\n"
        "}\n"
        'variable "settings" {\n'
        "  type = object({ storage_encrypted = optional(bool, true) })\n"
        "}\n"
        'resource "aws_security_group_rule" "ssh" {\n'
        '  type              = "ingress"\n'
        '  protocol          = "tcp"\n'
        "  from_port         = var.rule.port\n"
        "  to_port           = var.rule.port\n"
        "  cidr_blocks       = var.rule.cidr_blocks\n"
        '  security_group_id = "sg-123"\n'
        "}\n"
        'resource "aws_db_instance" "ledger" {\n'
        "  storage_encrypted = var.settings.storage_encrypted\n"
        '  tags              = { app = "pos" }\n'
        "}\n"
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert findings(report) == {("PC-TF-005", "module.ssh.aws_security_group_rule.ssh")}
    assert "PC-TF-002" not in report["not_judged"]


def test_a_resource_whose_merged_tags_may_make_it_the_gateway_is_not_judged(
    tmp_path: Path,
) -> None:
    """`tags = merge(var.tags, { app = "pos" })` with var.tags unset: app is
    certain, but var.tags may carry the gateway's role tag, and the gateway's
    security group and load balancers face the internet by design. The app
    rules found them (PC-TF-001, PC-TF-003, PC-TF-004); they are not judged,
    each naming the tag it could not see. A role merged after the unknown
    settles it either way."""
    (tmp_path / "main.tf").write_text(
        'variable "tags" { type = map(string) }\n'
        'resource "aws_security_group" "edge" {\n'
        "  ingress {\n"
        "    from_port   = 443\n"
        "    to_port     = 443\n"
        '    protocol    = "tcp"\n'
        '    cidr_blocks = ["0.0.0.0/0"]\n'
        "  }\n"
        '  tags = merge(var.tags, { app = "pos" })\n'
        "}\n"
        'resource "aws_lb" "edge" {\n'
        "  internal = false\n"
        '  tags     = merge(var.tags, { app = "pos" })\n'
        '  access_logs {\n    bucket  = "logs"\n    enabled = true\n  }\n'
        "}\n"
        'resource "aws_lb_listener" "edge" {\n'
        "  load_balancer_arn = aws_lb.edge.arn\n"
        '  protocol          = "HTTP"\n'
        "  port              = 80\n"
        "  default_action {\n"
        '    type             = "forward"\n'
        '    target_group_arn = "arn:tg"\n'
        "  }\n"
        "}\n"
        'resource "aws_lb" "gateway" {\n'
        "  internal = false\n"
        '  tags     = merge(var.tags, { app = "pos", role = "portcullis-gateway" })\n'
        '  access_logs {\n    bucket  = "logs"\n    enabled = true\n  }\n'
        "}\n"
        'resource "aws_lb" "web" {\n'
        "  internal = false\n"
        '  tags     = merge(var.tags, { app = "pos", role = "web" })\n'
        '  access_logs {\n    bucket  = "logs"\n    enabled = true\n  }\n'
        "}\n"
        # A group admitting one open to the internet: a source whose tags are
        # incomplete is judged as one whose tags are unknown, as before.
        'resource "aws_security_group" "open" {\n'
        "  ingress {\n"
        "    from_port   = 443\n"
        "    to_port     = 443\n"
        '    protocol    = "tcp"\n'
        '    cidr_blocks = ["0.0.0.0/0"]\n'
        "  }\n"
        '  tags = merge(var.tags, { Name = "open" })\n'
        "}\n"
        'resource "aws_security_group" "backend" {\n'
        "  ingress {\n"
        "    from_port       = 8080\n"
        "    to_port         = 8080\n"
        '    protocol        = "tcp"\n'
        "    security_groups = [aws_security_group.open.id]\n"
        "  }\n"
        '  tags = { app = "pos" }\n'
        "}\n"
        'resource "aws_cloudtrail" "main" { name = "main" }\n'
    )
    code, report = scan_json(str(tmp_path))
    assert code == 1
    assert findings(report) == {
        ("PC-TF-003", "aws_lb.web"),
        ("PC-TF-001", "aws_security_group.backend"),
    }
    assert report["not_judged"]["PC-TF-001"]["resources"] == 1
    assert report["not_judged"]["PC-TF-003"] == {
        "resources": 1,
        "reasons": {"`tags.role` is unknown (var.tags has no value)": 1},
    }
    assert report["not_judged"]["PC-TF-004"]["resources"] == 1


def test_the_text_report_counts_the_reasons_it_leaves_out_in_words() -> None:
    """Past three reasons the line says how many more: "1 other reason", in the
    singular, as the corpus scan's PC-TF-006 line needs."""
    from iac_scanner.findings import ScanResult, Unjudged
    from iac_scanner.report.text import not_judged_lines

    def unjudged(count: int) -> list[str]:
        items = [
            Unjudged(
                "PC-TF-006", f"aws_s3_bucket.b{n}", "acl", f"var.v{n} has no value", "main.tf", n
            )
            for n in range(count)
        ]
        return not_judged_lines(ScanResult(not_judged=items))

    [four] = unjudged(4)
    assert four.endswith("; 1 other reason")
    [five] = unjudged(5)
    assert five.endswith("; 2 other reasons")


def test_a_load_balancer_with_logging_off_is_found_though_its_log_bucket_is_unknown() -> None:
    """access_logs { bucket = var.log_bucket, enabled = false } on a pci app's
    ALB passed PC-TF-008: anything unknown in the block skipped the rule, so
    logging switched off (or an ALB block without enabled = true) went
    unreported whenever the bucket was a variable. checkov's CKV_AWS_91 flags
    these. Only an unknown `enabled` leaves it unjudged."""
    code, report = scan_json(fixture("access_logs_unknown_bucket"))
    assert code == 1
    assert findings(report) == {
        ("PC-TF-008", "aws_lb.disabled"),
        ("PC-TF-008", "aws_lb.only_bucket"),
        ("PC-TF-008", "aws_elb.disabled"),
    }


def test_a_permission_set_inline_policy_allowing_everything_is_found() -> None:
    """aws_ssoadmin_permission_set_inline_policy gives its inline_policy to every
    user assigned the permission set, in each account: "*" on "*" there passed
    PC-TF-007, which read only aws_iam_* policies (checkov's CKV_AWS_62 flags
    it). The read-only set beside it stays clean."""
    code, report = scan_json(fixture("permission_set_policy"))
    assert code == 1
    assert findings(report) == {("PC-TF-007", "aws_ssoadmin_permission_set_inline_policy.ops")}
    assert report["not_judged"] == {}


def test_an_ignored_public_acl_on_a_bucket_made_elsewhere_is_not_a_finding() -> None:
    """An aws_s3_bucket_acl and an aws_s3_bucket_public_access_block with
    ignore_public_acls = true, both naming a bucket made outside the scan by
    its literal name: S3 ignores that ACL, yet PC-TF-006 found it public, as it
    matched the two only through an aws_s3_bucket in the scan. A false finding
    trains users to suppress the rule. An ACL on a bucket no block names is
    still found."""
    code, report = scan_json(fixture("acl_bucket_elsewhere"))
    assert code == 1
    assert findings(report) == {("PC-TF-006", "aws_s3_bucket_acl.exports")}
