"""The Terraform document the scanner builds (README, "Terraform document"):
what HCL and plans turn into before any rule sees them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from iac_scanner.hcl import HclSyntaxError, parse_text
from iac_scanner.loader import LoadOptions, LoadResult, load
from tests.conftest import FIXTURES, SHARED

TERRAFORM = FIXTURES / "terraform"
PLANS = SHARED / "corpus/terraform/checkov-plans/tests/terraform"
CONTRACT_KEYS = {
    "address",
    "type",
    "name",
    "module",
    "provider",
    "file",
    "line",
    "config",
    "unknown",
    "refs",
}


def scan_documents(*paths: Path, **options: Any) -> LoadResult:
    return load([str(p) for p in paths], LoadOptions(**options))


def resources(result: LoadResult) -> dict[str, dict[str, Any]]:
    return {r.entry["address"]: r.entry for d in result.documents for r in d.resources}


@pytest.fixture(scope="module")
def pos_app() -> dict[str, dict[str, Any]]:
    result = scan_documents(TERRAFORM / "pos_app")
    assert result.problems == []
    assert [d.source for d in result.documents] == ["hcl"]
    return resources(result)


def test_every_resource_has_the_documented_shape(pos_app: dict[str, dict[str, Any]]) -> None:
    for entry in pos_app.values():
        assert set(entry) == CONTRACT_KEYS
        assert entry["line"] >= 1 and entry["file"].endswith(".tf")
        assert isinstance(entry["unknown"], list) and isinstance(entry["refs"], dict)


def test_resources_carry_the_file_and_line_of_their_block(
    pos_app: dict[str, dict[str, Any]],
) -> None:
    backend = pos_app["aws_security_group.pos_backend"]
    assert backend["file"] == "tests/fixtures/terraform/pos_app/main.tf"
    lines = (TERRAFORM / "pos_app/main.tf").read_text().splitlines()
    assert lines[backend["line"] - 1] == 'resource "aws_security_group" "pos_backend" {'


def test_locals_variables_and_interpolations_are_evaluated(
    pos_app: dict[str, dict[str, Any]],
) -> None:
    backend = pos_app["aws_security_group.pos_backend"]
    assert backend["config"]["name"] == "pos-backend-prod"  # environment from terraform.tfvars
    assert backend["config"]["tags"] == {"app": "pos", "environment": "prod"}
    gateway = pos_app["aws_security_group.gateway"]["config"]["tags"]
    assert gateway == {"app": "pos", "environment": "prod", "role": "portcullis-gateway"}


def test_nested_blocks_are_lists_of_objects(pos_app: dict[str, dict[str, Any]]) -> None:
    ingress = pos_app["aws_security_group.pos_backend"]["config"]["ingress"]
    assert [block["from_port"] for block in ingress] == [8443, 8443]
    assert ingress[1]["cidr_blocks"] == ["0.0.0.0/0"]


def test_an_unset_variable_is_listed_as_unknown_not_guessed(
    pos_app: dict[str, dict[str, Any]],
) -> None:
    rule = pos_app["aws_security_group_rule.admin_ssh"]
    # The group's id is computed at apply; the CIDR is a variable nobody set.
    assert rule["unknown"] == ["security_group_id", "cidr_blocks.0"]
    assert rule["config"]["cidr_blocks"] == [None]


def test_count_and_for_each_expand_into_instances(pos_app: dict[str, dict[str, Any]]) -> None:
    assert pos_app["aws_s3_bucket.exports[0]"]["config"]["bucket"] == "example-exports-0"
    assert pos_app["aws_s3_bucket.exports[1]"]["config"]["bucket"] == "example-exports-1"
    journal = pos_app['aws_ebs_volume.data["journal"]']
    assert journal["config"]["tags"]["Name"] == "journal"
    assert 'aws_ebs_volume.data["receipts"]' in pos_app
    assert "count" not in journal["config"] and "for_each" not in journal["config"]


def test_local_modules_get_their_inputs_and_module_addresses(
    pos_app: dict[str, dict[str, Any]],
) -> None:
    bucket = pos_app["module.receipts.aws_s3_bucket.this"]
    assert bucket["module"] == "module.receipts"
    assert bucket["file"] == "tests/fixtures/terraform/pos_app/modules/bucket/main.tf"
    assert bucket["config"] == {
        "bucket": "pos-receipts-prod",
        "tags": {"app": "pos", "environment": "prod"},
    }


def test_refs_name_the_resources_an_attribute_references(
    pos_app: dict[str, dict[str, Any]],
) -> None:
    assert pos_app["aws_security_group_rule.bastion_ssh"]["refs"] == {
        "security_group_id": ["aws_security_group.bastion"]
    }
    assert pos_app["aws_security_group.pos_backend"]["refs"] == {
        "ingress.0.security_groups": ["aws_security_group.gateway"]
    }
    # Through a module output, to the resource inside the module.
    read = pos_app["aws_iam_policy.read_receipts"]
    assert read["refs"] == {"policy": ["module.receipts.aws_s3_bucket.this"]}
    assert read["unknown"] == ["policy"]


def test_refs_inside_a_tf_json_nested_block_are_keyed_as_a_blocks_are() -> None:
    """A .tf.json nested block is an object (or list of objects) attribute:
    its references are keyed under the attribute and also by where in the
    block they are made, as HCL's are, so rules find a block's own."""
    wms = {
        form: resources(scan_documents(TERRAFORM / f"json_blocks/{form}"))["aws_security_group.wms"]
        for form in ("hcl", "object", "list")
    }
    assert wms["hcl"]["refs"] == {"ingress.0.security_groups": ["aws_security_group.lb"]}
    assert wms["list"]["refs"] == {
        "ingress": ["aws_security_group.lb"],
        "ingress.0": ["aws_security_group.lb"],
        "ingress.0.security_groups": ["aws_security_group.lb"],
    }
    assert wms["object"]["refs"] == {
        "ingress": ["aws_security_group.lb"],
        "ingress.security_groups": ["aws_security_group.lb"],
    }


def test_provider_comes_from_the_resource_type() -> None:
    result = scan_documents(TERRAFORM / "clean")
    assert {r["provider"] for r in resources(result).values()} == {
        "registry.terraform.io/hashicorp/aws"
    }


def test_variables_follow_terraforms_precedence() -> None:
    result = scan_documents(
        TERRAFORM / "variables",
        var_files=[str(TERRAFORM / "variables/override.tfvars")],
        cli_vars=[("from_cli", "cli"), ("port", "8443")],
    )
    tags = resources(result)["aws_s3_bucket.values"]
    assert tags["config"]["tags"] == {
        "from_default": "default",
        "from_tfvars": "tfvars",
        "from_auto_tfvars": "auto",
        "from_var_file": "var-file",
        "from_cli": "cli",
        "port": 8443,  # a number variable's --var is a number
        "upper": "DEFAULT-X",
        "configured": "other-tfvars",  # another resource's configured attribute
    }
    assert sorted(tags["unknown"]) == ["tags.account", "tags.computed", "tags.unset"]
    assert tags["refs"]["tags"] == ["aws_s3_bucket.other", "data.aws_caller_identity.current"]


def test_tf_var_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_VAR_unset", "from-env")
    tags = resources(scan_documents(TERRAFORM / "variables"))["aws_s3_bucket.values"]
    assert tags["config"]["tags"]["unset"] == "from-env"


def test_dynamic_blocks_expand_and_unknown_ones_are_marked() -> None:
    found = resources(scan_documents(TERRAFORM / "dynamic_blocks"))
    known = found["aws_security_group.known"]["config"]["ingress"]
    assert [b["from_port"] for b in known] == [8080, 443, 22]
    assert found["aws_security_group.unknown"]["unknown"] == ["ingress.0"]


def test_a_downloaded_remote_module_is_scanned_and_a_missing_one_noted_once() -> None:
    result = scan_documents(TERRAFORM / "remote_module")
    found = resources(result)
    sg = found["module.ssh_sg.aws_security_group.this"]
    assert sg["config"]["ingress"][0]["cidr_blocks"] == ["0.0.0.0/0"]
    assert result.problems == []
    assert len(result.notes) == 1
    assert "module.not_downloaded: remote module git::https://git.example.com" in result.notes[0]
    assert result.notes[0].startswith("tests/fixtures/terraform/remote_module/main.tf:11:")


def test_a_single_file_is_scanned_on_its_own() -> None:
    result = scan_documents(TERRAFORM / "pos_app/buckets.tf")
    assert sorted(resources(result)) == [
        "aws_s3_bucket.downloads",
        "aws_s3_bucket.exports[0]",
        "aws_s3_bucket.exports[1]",
        "aws_s3_bucket.marketing",
    ]


def test_syntax_errors_name_file_line_and_column() -> None:
    result = scan_documents(TERRAFORM / "broken")
    assert [str(p) for p in result.problems] == [
        "tests/fixtures/terraform/broken/main.tf:2:13: unexpected end of file "
        "(an unclosed block, bracket or string?)"
    ]
    # The rest of the tree is still loaded (and a scan exits 2 all the same).
    assert "aws_s3_bucket.ok" in resources(result)


def test_parse_errors_say_what_was_unexpected() -> None:
    with pytest.raises(HclSyntaxError) as error:
        parse_text('resource "a" "b" {\n  x = @\n}\n')
    assert (error.value.line, error.value.column) == (2, 7)
    assert error.value.message == (
        "unexpected '@'; expected a value (a string, number, bool, list, object or expression)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("locals {\n  a = [1, 2\n}\n", "unexpected '}'; expected one of `,`, `]`, a new line"),
        ("locals {\n  a = f(1\n}\n", "unexpected '}'; expected one of `)`, `,`, a new line"),
        ("locals {\n  a = {b = 1 c}\n}\n", "unexpected '}'; expected one of `:`, `=`"),
    ],
    ids=["unclosed-list", "unclosed-call", "object-key-without-value"],
)
def test_parse_errors_name_what_was_expected_in_terraform_words_not_grammar_terminals(
    text: str, message: str
) -> None:
    """A typo in CI's Terraform said `expected one of COMMA, NL_OR_COMMENT, RSQB`, the
    parser's terminal names: the author reads `,`, `]` or a new line."""
    with pytest.raises(HclSyntaxError) as error:
        parse_text(text)
    assert error.value.message == message


def test_plan_after_unknown_becomes_unknown_and_values_config() -> None:
    plan = PLANS / "parser/resources/plan_after_unknown/tfplan.json"
    result = scan_documents(plan)
    assert result.problems == []
    [document] = result.documents
    assert document.source == "plan"
    entries = [r.entry for r in document.resources]
    assert entries and all(set(e) == CONTRACT_KEYS for e in entries)
    with_unknown = [e for e in entries if e["unknown"]]
    assert with_unknown, "this plan has values known only after apply"
    for entry in with_unknown:
        for path in entry["unknown"]:
            head = path.split(".")[0]
            assert entry["config"].get(head) in (None, [], {}) or "." in path


def test_plan_resources_in_modules_keep_module_addresses_and_refs() -> None:
    plan = PLANS / "runner/resources/plan_nested_child_modules/tfplan.json"
    found = resources(scan_documents(plan))
    cluster = found["module.child_0.module.child_1_a.aws_eks_cluster.cluster"]
    assert cluster["module"] == "module.child_0.module.child_1_a"
    assert cluster["config"]["name"] == "test"
    assert cluster["line"] > 1  # where the address stands in the plan file


def test_plan_refs_come_from_the_configuration_section() -> None:
    plan = PLANS / "runner/resources/plan_with_resource_reference/tfplan.json"
    found = resources(scan_documents(plan))
    refs = {a: e["refs"] for a, e in found.items() if e["refs"]}
    assert refs, "this plan's configuration references other resources"
    for address, by_key in refs.items():
        for targets in by_key.values():
            assert all(not t.startswith(("var.", "local.")) for t in targets), address


def test_a_json_file_that_is_not_a_plan_is_an_error(tmp_path: Path) -> None:
    not_plan = tmp_path / "package.json"
    not_plan.write_text('{"name": "x"}')
    broken = tmp_path / "broken.json"
    broken.write_text('{"planned_values": ')
    result = scan_documents(not_plan, broken)
    messages = [p.message for p in result.problems]
    assert messages[0].startswith("not a Terraform plan or state")
    assert messages[1].startswith("not valid JSON")
    assert result.documents == []
