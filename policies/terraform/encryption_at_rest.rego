# Data stores of pci and confidential apps are encrypted at rest: S3 buckets,
# RDS instances and clusters, EBS volumes tagged as such an app.
package portcullis.terraform.encryption_at_rest

import rego.v1

import data.portcullis.lib.terraform as tf

metadata := {
	"id": "PC-TF-002",
	"title": "Data stores of pci and confidential apps must be encrypted at rest",
	"severity": "high",
	"remediation": "S3: add an aws_s3_bucket_server_side_encryption_configuration for the bucket (sse_algorithm = \"aws:kms\"). RDS: set storage_encrypted = true (and kms_key_id for a customer-managed key); an existing database needs a snapshot-restore to encrypt. EBS: set encrypted = true, or enable aws_ebs_encryption_by_default.",
}

_classified := {"pci", "confidential"}

_sse_type := "aws_s3_bucket_server_side_encryption_configuration"

deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type == "aws_s3_bucket"
	some app in _sensitive_apps(r)
	not tf.has_unknown_within(r, ["server_side_encryption_configuration"])
	count(tf.blocks(r, ["server_side_encryption_configuration"])) == 0
	sse := _sse_type
	not tf.bucket_has(r, sse)
	msg := sprintf(
		"S3 bucket %s (%s) has no server-side encryption configuration; add an %s whose bucket is %s.id, with sse_algorithm = \"aws:kms\"",
		[r.address, tf.app_label(app), _sse_type, r.address],
	)
}

deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type in {"aws_db_instance", "aws_rds_cluster"}
	some app in _sensitive_apps(r)
	not tf.is_unknown(r, ["storage_encrypted"])
	not tf.true_or(r, ["storage_encrypted"], false)
	not _inherits_encryption(r)
	msg := sprintf(
		"database %s (%s) is not encrypted at rest (storage_encrypted is not true); set storage_encrypted = true",
		[r.address, tf.app_label(app)],
	)
}

deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type == "aws_ebs_volume"
	some app in _sensitive_apps(r)
	not tf.is_unknown(r, ["encrypted"])
	not tf.true_or(r, ["encrypted"], false)
	not _ebs_encrypted_by_default
	msg := sprintf(
		"EBS volume %s (%s) is not encrypted (encrypted is not true); set encrypted = true",
		[r.address, tf.app_label(app)],
	)
}

# What the rules above skipped because a value they need is unknown.
not_judged contains {"resource": r.address, "path": "server_side_encryption_configuration"} if {
	some r in input.resources
	r.type == "aws_s3_bucket"
	count(_sensitive_apps(r)) > 0
	tf.has_unknown_within(r, ["server_side_encryption_configuration"])
	sse := _sse_type
	not tf.bucket_has(r, sse)
}

not_judged contains {"resource": r.address, "path": "storage_encrypted"} if {
	some r in input.resources
	r.type in {"aws_db_instance", "aws_rds_cluster"}
	count(_sensitive_apps(r)) > 0
	tf.is_unknown(r, ["storage_encrypted"])
}

not_judged contains {"resource": r.address, "path": "encrypted"} if {
	some r in input.resources
	r.type == "aws_ebs_volume"
	count(_sensitive_apps(r)) > 0
	tf.is_unknown(r, ["encrypted"])
	not _ebs_encrypted_by_default
}

_sensitive_apps(r) := {app |
	some app in tf.apps_of(r)
	tf.classification(app) in _classified
}

# A read replica takes its encryption from the source database, and Aurora
# Serverless v1 is always encrypted; storage_encrypted says nothing for them.
_inherits_encryption(r) if {
	r.type == "aws_db_instance"
	tf.value(r, ["replicate_source_db"]) != ""
}

_inherits_encryption(r) if {
	r.type == "aws_db_instance"
	tf.is_unknown(r, ["replicate_source_db"])
}

_inherits_encryption(r) if {
	r.type == "aws_rds_cluster"
	tf.value(r, ["engine_mode"]) == "serverless"
}

_inherits_encryption(r) if {
	r.type == "aws_rds_cluster"
	tf.is_unknown(r, ["engine_mode"])
}

# Account-wide EBS encryption by default (enabled unless set to false) covers
# every new volume in the region.
_ebs_encrypted_by_default if {
	some r in input.resources
	r.type == "aws_ebs_encryption_by_default"
	not tf.false_or(r, ["enabled"], true)
}
