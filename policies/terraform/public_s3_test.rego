package portcullis.terraform.public_s3_test

import rego.v1

import data.portcullis.lib.testing
import data.portcullis.terraform.public_s3

_addresses(findings) := {f.resource | some f in findings}

test_public_read_bucket_acl_is_denied if {
	bucket := testing.resource("aws_s3_bucket", "data", {"bucket": "acme-data", "acl": "public-read"})
	public_s3.deny == {{
		"resource": "aws_s3_bucket.data",
		"message": "aws_s3_bucket.data sets acl = \"public-read\", which makes the bucket readable outside the account; use acl = \"private\"",
	}} with input as testing.document([bucket])
}

test_public_read_write_on_separate_acl_resource_is_denied if {
	acl := testing.resource_with("aws_s3_bucket_acl", "data", {"acl": "public-read-write"}, {
		"unknown": ["bucket"], "refs": {"bucket": ["aws_s3_bucket.data"]},
	})
	_addresses(public_s3.deny) == {"aws_s3_bucket_acl.data"} with input as testing.document([acl])
}

test_private_bucket_is_allowed if {
	bucket := testing.resource("aws_s3_bucket", "data", {"acl": "private"})
	count(public_s3.deny) == 0 with input as testing.document([bucket])
}

test_grant_to_all_users_is_denied if {
	acl := testing.resource("aws_s3_bucket_acl", "data", {"access_control_policy": [{
		"grant": [{"permission": "READ", "grantee": [{"type": "Group", "uri": "http://acs.amazonaws.com/groups/global/AllUsers"}]}],
		"owner": [{"id": "abc"}],
	}]})
	findings := public_s3.deny with input as testing.document([acl])
	some f in findings
	contains(f.message, "grants access to http://acs.amazonaws.com/groups/global/AllUsers")
}

test_public_acl_ignored_by_the_buckets_public_access_block_is_allowed if {
	bucket := testing.resource("aws_s3_bucket", "data", {"acl": "public-read"})
	block := testing.resource_with("aws_s3_bucket_public_access_block", "data", {
		"block_public_acls": true, "block_public_policy": true, "ignore_public_acls": true, "restrict_public_buckets": true,
	}, {"unknown": ["bucket"], "refs": {"bucket": ["aws_s3_bucket.data"]}})
	count(public_s3.deny) == 0 with input as testing.document([bucket, block])
}

test_public_access_block_with_a_flag_off_is_denied if {
	block := testing.resource_with("aws_s3_bucket_public_access_block", "data", {
		"block_public_acls": true, "block_public_policy": false, "ignore_public_acls": true,
	}, {"unknown": ["bucket"]})
	public_s3.deny == {{
		"resource": "aws_s3_bucket_public_access_block.data",
		"message": "aws_s3_bucket_public_access_block.data leaves block_public_policy, restrict_public_buckets off (false or unset); set all four flags to true",
	}} with input as testing.document([block])
}

test_public_access_block_flag_from_unknown_variable_is_not_flagged if {
	block := testing.resource_with("aws_s3_bucket_public_access_block", "data", {
		"block_public_acls": true, "ignore_public_acls": true, "restrict_public_buckets": true,
	}, {"unknown": ["bucket", "block_public_policy"]})
	count(public_s3.deny) == 0 with input as testing.document([block])
}

test_unknown_acl_is_not_flagged if {
	bucket := testing.resource_with("aws_s3_bucket", "data", {}, {"unknown": ["acl"]})
	count(public_s3.deny) == 0 with input as testing.document([bucket])
}

test_static_website_hosting_is_denied if {
	inline := testing.resource("aws_s3_bucket", "site", {"website": [{"index_document": "index.html"}]})
	separate := testing.resource("aws_s3_bucket_website_configuration", "site", {"index_document": [{"suffix": "index.html"}]})
	redirect_only := testing.resource("aws_s3_bucket_website_configuration", "old", {"redirect_all_requests_to": [{"host_name": "example.com"}]})
	_addresses(public_s3.deny) == {"aws_s3_bucket.site", "aws_s3_bucket_website_configuration.site"} with input as testing.document([inline, separate, redirect_only])
}

test_inline_grant_to_authenticated_users_is_denied if {
	bucket := testing.resource("aws_s3_bucket", "legacy", {"grant": [
		{"type": "Group", "uri": "http://acs.amazonaws.com/groups/global/AuthenticatedUsers", "permissions": ["READ"]},
		{"type": "CanonicalUser", "id": "abc", "permissions": ["FULL_CONTROL"]},
	]})
	findings := public_s3.deny with input as testing.document([bucket])
	[f.message | some f in findings] == ["aws_s3_bucket.legacy grants access to http://acs.amazonaws.com/groups/global/AuthenticatedUsers; grant only to canonical user IDs of this account"]
}

test_account_wide_ignore_public_acls_neutralises_public_acls if {
	acl := testing.resource_with("aws_s3_bucket_acl", "data", {"acl": "public-read"}, {"refs": {"bucket": ["aws_s3_bucket.data"]}})
	account := testing.resource("aws_s3_account_public_access_block", "this", {
		"block_public_acls": true, "block_public_policy": true, "ignore_public_acls": true, "restrict_public_buckets": true,
	})
	count(public_s3.deny) == 0 with input as testing.document([acl, account])
}

test_public_acl_resource_is_neutralised_by_the_same_buckets_access_block if {
	bucket := testing.resource("aws_s3_bucket", "data", {"bucket": "acme-data"})
	acl := testing.resource("aws_s3_bucket_acl", "data", {"bucket": "acme-data", "acl": "public-read"})
	block := testing.resource("aws_s3_bucket_public_access_block", "data", {
		"bucket": "acme-data", "block_public_acls": true, "block_public_policy": true, "ignore_public_acls": true, "restrict_public_buckets": true,
	})
	count(public_s3.deny) == 0 with input as testing.document([bucket, acl, block])
	other_block := json.patch(block, [{"op": "replace", "path": "/config/bucket", "value": "acme-other"}])
	findings := public_s3.deny with input as testing.document([bucket, acl, other_block])
	{f.resource | some f in findings} == {"aws_s3_bucket_acl.data"}
}

test_public_acl_resource_is_neutralised_by_an_access_block_naming_its_bucket_made_elsewhere if {
	acl := testing.resource("aws_s3_bucket_acl", "assets", {"bucket": "legacy-assets", "acl": "public-read"})
	block := testing.resource("aws_s3_bucket_public_access_block", "assets", {
		"bucket": "legacy-assets", "block_public_acls": true, "block_public_policy": true, "ignore_public_acls": true, "restrict_public_buckets": true,
	})
	count(public_s3.deny) == 0 with input as testing.document([acl, block])
	other_block := json.patch(block, [{"op": "replace", "path": "/config/bucket", "value": "other-assets"}])
	findings := public_s3.deny with input as testing.document([acl, other_block])
	{f.resource | some f in findings} == {"aws_s3_bucket_acl.assets"}
}

test_unknown_acl_is_not_judged_and_said if {
	b := testing.resource_with("aws_s3_bucket", "assets", {}, {"unknown": ["acl"]})
	count(public_s3.deny) == 0 with input as testing.document([b])
	public_s3.not_judged == {{"resource": "aws_s3_bucket.assets", "path": "acl"}} with input as testing.document([b])
}
