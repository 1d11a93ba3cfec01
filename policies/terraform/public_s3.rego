# Baseline, for every bucket: nothing makes an S3 bucket public. Public canned
# ACLs and grants to AllUsers / AuthenticatedUsers (inline or aws_s3_bucket_acl),
# static website hosting, and public access blocks that leave a flag off.
package portcullis.terraform.public_s3

import rego.v1

import data.portcullis.lib.terraform as tf

metadata := {
	"id": "PC-TF-006",
	"title": "S3 buckets must not be public",
	"severity": "high",
	"remediation": "Use acl = \"private\" (or no ACL with object ownership BucketOwnerEnforced), drop grants to AllUsers/AuthenticatedUsers, serve websites through CloudFront with origin access control instead of S3 website hosting, and set all four flags of aws_s3_bucket_public_access_block to true.",
}

_public_acls := {"public-read", "public-read-write", "authenticated-read"}

_public_groups := {
	"http://acs.amazonaws.com/groups/global/AllUsers",
	"http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
}

_block_flags := ["block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"]

# Public canned ACL on the bucket or on an aws_s3_bucket_acl.
deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type in {"aws_s3_bucket", "aws_s3_bucket_acl"}
	acl := tf.value(r, ["acl"])
	acl in _public_acls
	not _acls_ignored(r)
	msg := sprintf("%s sets acl = %q, which makes the bucket readable outside the account; use acl = \"private\"", [r.address, acl])
}

# Grants to everyone: inline grant blocks on aws_s3_bucket, or the
# access_control_policy of an aws_s3_bucket_acl.
deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type in {"aws_s3_bucket", "aws_s3_bucket_acl"}
	some uri in _granted_groups(r)
	uri in _public_groups
	not _acls_ignored(r)
	msg := sprintf("%s grants access to %s; grant only to canonical user IDs of this account", [r.address, uri])
}

deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type in {"aws_s3_bucket", "aws_s3_bucket_website_configuration"}
	_hosts_website(r)
	msg := sprintf("%s enables S3 static website hosting, which serves the bucket's objects publicly over plain HTTP; serve it through CloudFront with origin access control", [r.address])
}

deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type in {"aws_s3_bucket_public_access_block", "aws_s3_account_public_access_block"}
	off := [flag |
		some flag in _block_flags
		not tf.is_unknown(r, [flag])
		not tf.true_or(r, [flag], false)
	]
	count(off) > 0
	msg := sprintf("%s leaves %s off (false or unset); set all four flags to true", [r.address, concat(", ", off)])
}

_granted_groups(r) := {uri |
	some grant in tf.blocks(r, ["grant"])
	uri := object.get(grant, "uri", "")
} if r.type == "aws_s3_bucket"

_granted_groups(r) := {uri |
	some policy in tf.blocks(r, ["access_control_policy"])
	some grant in tf.as_objects(object.get(policy, "grant", []))
	some grantee in tf.as_objects(object.get(grant, "grantee", []))
	uri := object.get(grantee, "uri", "")
} if r.type == "aws_s3_bucket_acl"

# Website hosting that only redirects every request elsewhere serves nothing.
_hosts_website(r) if {
	r.type == "aws_s3_bucket"
	some site in tf.blocks(r, ["website"])
	object.get(site, "redirect_all_requests_to", null) == null
}

_hosts_website(r) if {
	r.type == "aws_s3_bucket_website_configuration"
	not tf.has_unknown_within(r, ["redirect_all_requests_to"])
	count(tf.blocks(r, ["redirect_all_requests_to"])) == 0
}

# With ignore_public_acls = true (on the bucket's public access block, or
# account-wide) S3 disregards ACLs, so a public ACL grants nothing.
_acls_ignored(_) if {
	some block in input.resources
	block.type == "aws_s3_account_public_access_block"
	tf.is_true(tf.value_or(block, ["ignore_public_acls"], false))
}

_acls_ignored(r) if {
	some bucket in _buckets_of(r)
	some block in input.resources
	block.type == "aws_s3_bucket_public_access_block"
	tf.attached_to_bucket(block, bucket)
	tf.is_true(tf.value_or(block, ["ignore_public_acls"], false))
}

# The bucket may be made outside this scan (another stack, a bucket that
# predates Terraform): an ACL and a public access block naming one bucket by
# its literal name apply to that bucket all the same.
_acls_ignored(r) if {
	r.type == "aws_s3_bucket_acl"
	name := tf.value(r, ["bucket"])
	is_string(name)
	some block in input.resources
	block.type == "aws_s3_bucket_public_access_block"
	tf.value(block, ["bucket"]) == name
	tf.is_true(tf.value_or(block, ["ignore_public_acls"], false))
}

_buckets_of(r) := {r} if r.type == "aws_s3_bucket"

_buckets_of(r) := {bucket |
	some bucket in input.resources
	bucket.type == "aws_s3_bucket"
	tf.attached_to_bucket(r, bucket)
} if r.type != "aws_s3_bucket"

# What the rules above skipped because a value they need is unknown.
not_judged contains {"resource": r.address, "path": "acl"} if {
	some r in input.resources
	r.type in {"aws_s3_bucket", "aws_s3_bucket_acl"}
	tf.is_unknown(r, ["acl"])
}

not_judged contains {"resource": r.address, "path": flag} if {
	some r in input.resources
	r.type in {"aws_s3_bucket_public_access_block", "aws_s3_account_public_access_block"}
	some flag in _block_flags
	tf.is_unknown(r, [flag])
}
