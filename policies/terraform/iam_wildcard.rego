# Baseline, for every IAM identity policy (IAM Identity Center permission sets'
# inline policies too): no statement allows every action on every resource. Policy documents arrive as JSON strings (jsonencode() and
# heredocs alike); a document that references a data source such as
# aws_iam_policy_document is unknown to the scanner and not judged.
package portcullis.terraform.iam_wildcard

import rego.v1

import data.portcullis.lib.terraform as tf

metadata := {
	"id": "PC-TF-007",
	"title": "IAM policies must not allow \"*\" on \"*\"",
	"severity": "critical",
	"remediation": "List the actions the principal needs (e.g. \"s3:GetObject\") and the ARNs they apply to; keep full administrator access to a break-glass role using the AWS-managed AdministratorAccess policy.",
}

# Each identity-policy resource type and the attribute holding its document.
# An IAM Identity Center permission set's inline policy is an identity policy
# too: every user assigned the permission set gets it in each account.
_policy_attributes := {
	"aws_iam_policy": "policy",
	"aws_iam_role_policy": "policy",
	"aws_iam_user_policy": "policy",
	"aws_iam_group_policy": "policy",
	"aws_ssoadmin_permission_set_inline_policy": "inline_policy",
}

deny contains {"resource": address, "message": msg} if {
	some entry in _documents
	[address, where, doc] := entry
	some i, statement in _statements(doc)
	object.get(statement, "Effect", "") == "Allow"
	"*" in _strings(object.get(statement, "Action", []))
	"*" in _strings(object.get(statement, "Resource", []))
	msg := sprintf(
		"%s%s allows every action on every resource (statement %d%s: Effect Allow, Action \"*\", Resource \"*\"); list the specific actions and resource ARNs needed",
		[address, where, i, _sid(statement)],
	)
}

# _documents: [address, where in the resource, parsed policy document].
_documents contains [r.address, "", doc] if {
	some r in input.resources
	attribute := _policy_attributes[r.type]
	doc := _parse(tf.value(r, [attribute]))
}

_documents contains [r.address, sprintf(" (inline_policy %d)", [i]), doc] if {
	some r in input.resources
	r.type == "aws_iam_role"
	some i, at in tf.block_paths(r, ["inline_policy"])
	doc := _parse(tf.value(r, array.concat(at, ["policy"])))
}

_parse(text) := json.unmarshal(text) if {
	is_string(text)
	json.is_valid(text)
} else := text if {
	is_object(text)
}

# Statement may be a single object rather than a list.
_statements(doc) := s if {
	s := doc.Statement
	is_array(s)
} else := [doc.Statement] if {
	is_object(doc.Statement)
}

_strings(x) := [s | some s in x; is_string(s)] if is_array(x)

_strings(x) := [x] if is_string(x)

_sid(statement) := sprintf(", Sid %q", [statement.Sid]) if {
	is_string(statement.Sid)
	statement.Sid != ""
} else := ""

# A policy document the scanner could not see (a variable without a value, a
# data source other than aws_iam_policy_document) is not judged.
not_judged contains {"resource": r.address, "path": attribute} if {
	some r in input.resources
	attribute := _policy_attributes[r.type]
	tf.is_unknown(r, [attribute])
}

not_judged contains {"resource": r.address, "path": tf.path_string(path)} if {
	some r in input.resources
	r.type == "aws_iam_role"
	some at in tf.block_paths(r, ["inline_policy"])
	path := array.concat(at, ["policy"])
	tf.is_unknown(r, path)
}
