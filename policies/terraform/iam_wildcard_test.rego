package portcullis.terraform.iam_wildcard_test

import rego.v1

import data.portcullis.lib.testing
import data.portcullis.terraform.iam_wildcard

_admin := `{"Version": "2012-10-17", "Statement": [{"Sid": "Admin", "Effect": "Allow", "Action": "*", "Resource": "*"}]}`

test_policy_allowing_everything_is_denied if {
	p := testing.resource("aws_iam_policy", "admin", {"name": "admin", "policy": _admin})
	iam_wildcard.deny == {{
		"resource": "aws_iam_policy.admin",
		"message": "aws_iam_policy.admin allows every action on every resource (statement 0, Sid \"Admin\": Effect Allow, Action \"*\", Resource \"*\"); list the specific actions and resource ARNs needed",
	}} with input as testing.document([p])
}

test_wildcard_inside_action_and_resource_lists_is_denied if {
	doc := `{"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b/*"]}, {"Effect": "Allow", "Action": ["ec2:*", "*"], "Resource": ["arn:aws:s3:::b", "*"]}]}`
	p := testing.resource("aws_iam_role_policy", "ec2policy", {"policy": doc})
	findings := iam_wildcard.deny with input as testing.document([p])
	some f in findings
	f.resource == "aws_iam_role_policy.ec2policy"
	contains(f.message, "(statement 1: Effect Allow")
}

test_statement_given_as_an_object_is_read if {
	doc := `{"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}`
	p := testing.resource("aws_iam_user_policy", "ops", {"policy": doc})
	findings := iam_wildcard.deny with input as testing.document([p])
	some f in findings
	f.resource == "aws_iam_user_policy.ops"
}

test_service_wildcard_is_not_everything if {
	doc := `{"Statement": [{"Effect": "Allow", "Action": ["s3:*", "ec2:*", "rds:*"], "Resource": "*"}]}`
	p := testing.resource("aws_iam_role_policy", "ec2policy", {"policy": doc})
	count(iam_wildcard.deny) == 0 with input as testing.document([p])
}

test_deny_statement_with_wildcards_is_allowed if {
	doc := `{"Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}`
	p := testing.resource("aws_iam_group_policy", "lockdown", {"policy": doc})
	count(iam_wildcard.deny) == 0 with input as testing.document([p])
}

test_policy_from_a_data_source_is_not_flagged if {
	p := testing.resource_with("aws_iam_policy", "from_document", {}, {
		"unknown": ["policy"], "refs": {"policy": ["data.aws_iam_policy_document.admin"]},
	})
	invalid := testing.resource("aws_iam_policy", "broken", {"policy": "{not json"})
	count(iam_wildcard.deny) == 0 with input as testing.document([p, invalid])
}

test_policy_document_data_source_is_not_a_resource_to_judge if {
	doc := testing.resource("aws_iam_policy_document", "admin", {"json": _admin, "statement": [{"actions": ["*"], "resources": ["*"]}]})
	count(iam_wildcard.deny) == 0 with input as testing.document([doc])
}

test_inline_policy_of_a_role_is_checked if {
	role := testing.resource("aws_iam_role", "app", {"inline_policy": [{"name": "all", "policy": _admin}]})
	findings := iam_wildcard.deny with input as testing.document([role])
	some f in findings
	f.resource == "aws_iam_role.app"
	contains(f.message, "aws_iam_role.app (inline_policy 0) allows every action")
}

test_inline_policy_written_as_one_object_is_checked if {
	role := testing.resource("aws_iam_role", "app", {"inline_policy": {"name": "all", "policy": _admin}})
	findings := iam_wildcard.deny with input as testing.document([role])
	[f.message | some f in findings] == ["aws_iam_role.app (inline_policy 0) allows every action on every resource (statement 0, Sid \"Admin\": Effect Allow, Action \"*\", Resource \"*\"); list the specific actions and resource ARNs needed"]
}

test_unknown_inline_policy_is_not_judged_in_either_shape if {
	list := testing.resource_with("aws_iam_role", "listed", {"inline_policy": [{"name": "ops"}]}, {"unknown": ["inline_policy.0.policy"]})
	one := testing.resource_with("aws_iam_role", "single", {"inline_policy": {"name": "ops"}}, {"unknown": ["inline_policy.policy"]})
	iam_wildcard.not_judged == {
		{"resource": "aws_iam_role.listed", "path": "inline_policy.0.policy"},
		{"resource": "aws_iam_role.single", "path": "inline_policy.policy"},
	} with input as testing.document([list, one])
}

test_unknown_policy_document_is_not_judged_and_said if {
	p := testing.resource_with("aws_iam_policy", "ops", {}, {"unknown": ["policy"]})
	count(iam_wildcard.deny) == 0 with input as testing.document([p])
	iam_wildcard.not_judged == {{"resource": "aws_iam_policy.ops", "path": "policy"}} with input as testing.document([p])
}

test_permission_set_inline_policy_allowing_everything_is_denied if {
	p := testing.resource("aws_ssoadmin_permission_set_inline_policy", "ops", {"inline_policy": _admin})
	{f.resource | some f in iam_wildcard.deny} == {"aws_ssoadmin_permission_set_inline_policy.ops"} with input as testing.document([p])
}

test_permission_set_inline_policy_unknown_is_not_judged if {
	p := testing.resource_with("aws_ssoadmin_permission_set_inline_policy", "ops", {}, {"unknown": ["inline_policy"]})
	iam_wildcard.not_judged == {{"resource": "aws_ssoadmin_permission_set_inline_policy.ops", "path": "inline_policy"}} with input as testing.document([p])
}
