package portcullis.terraform.encryption_at_rest_test

import rego.v1

import data.portcullis.lib.testing
import data.portcullis.terraform.encryption_at_rest

_pos := {"app": "pos"}

_addresses(findings) := {f.resource | some f in findings}

test_pci_bucket_without_encryption_is_denied if {
	bucket := testing.resource("aws_s3_bucket", "pos_receipts", {"bucket": "acme-pos-receipts", "tags": _pos})
	findings := encryption_at_rest.deny with input as testing.document([bucket])
	_addresses(findings) == {"aws_s3_bucket.pos_receipts"}
	some f in findings
	contains(f.message, "S3 bucket aws_s3_bucket.pos_receipts (app pos, pci) has no server-side encryption configuration")
}

test_bucket_with_inline_encryption_is_allowed if {
	bucket := testing.resource("aws_s3_bucket", "pos_receipts", {"tags": _pos, "server_side_encryption_configuration": [
		{"rule": [{"apply_server_side_encryption_by_default": [{"sse_algorithm": "aws:kms"}]}]},
	]})
	count(encryption_at_rest.deny) == 0 with input as testing.document([bucket])
}

test_bucket_with_separate_encryption_resource_is_allowed if {
	bucket := testing.resource("aws_s3_bucket", "pos_receipts", {"tags": _pos})
	sse := testing.resource_with("aws_s3_bucket_server_side_encryption_configuration", "pos_receipts", {
		"rule": [{"apply_server_side_encryption_by_default": [{"sse_algorithm": "aws:kms"}]}],
	}, {"unknown": ["bucket"], "refs": {"bucket": ["aws_s3_bucket.pos_receipts"]}})
	count(encryption_at_rest.deny) == 0 with input as testing.document([bucket, sse])
}

test_encryption_resource_for_another_bucket_does_not_count if {
	bucket := testing.resource("aws_s3_bucket", "pos_receipts", {"tags": _pos})
	other := testing.resource("aws_s3_bucket", "other", {})
	sse := testing.resource_with("aws_s3_bucket_server_side_encryption_configuration", "other", {}, {
		"unknown": ["bucket"], "refs": {"bucket": ["aws_s3_bucket.other"]},
	})
	_addresses(encryption_at_rest.deny) == {"aws_s3_bucket.pos_receipts"} with input as testing.document([bucket, other, sse])
}

test_encryption_block_from_unresolved_dynamic_block_is_not_flagged if {
	bucket := testing.resource_with("aws_s3_bucket", "pos_receipts", {"tags": _pos}, {"unknown": ["server_side_encryption_configuration"]})
	count(encryption_at_rest.deny) == 0 with input as testing.document([bucket])
}

test_internal_app_data_is_not_held_to_encryption if {
	bucket := testing.resource("aws_s3_bucket", "dashboards", {"tags": {"app": "analytics"}})
	volume := testing.resource("aws_ebs_volume", "scratch", {"tags": {"app": "analytics"}, "size": 10})
	count(encryption_at_rest.deny) == 0 with input as testing.document([bucket, volume])
}

test_untagged_data_stores_are_not_held_to_encryption if {
	bucket := testing.resource("aws_s3_bucket", "misc", {})
	db := testing.resource("aws_db_instance", "misc", {"storage_encrypted": false})
	count(encryption_at_rest.deny) == 0 with input as testing.document([bucket, db])
}

test_unencrypted_confidential_database_is_denied if {
	db := testing.resource("aws_db_instance", "wms", {"engine": "postgres", "tags": {"app": "wms"}})
	cluster := testing.resource("aws_rds_cluster", "wms", {"storage_encrypted": "false", "tags": {"app": "wms"}})
	findings := encryption_at_rest.deny with input as testing.document([db, cluster])
	_addresses(findings) == {"aws_db_instance.wms", "aws_rds_cluster.wms"}
	some f in findings
	f.resource == "aws_db_instance.wms"
	f.message == "database aws_db_instance.wms (app wms, confidential) is not encrypted at rest (storage_encrypted is not true); set storage_encrypted = true"
}

test_encrypted_database_is_allowed if {
	db := testing.resource("aws_db_instance", "pos", {"storage_encrypted": true, "tags": _pos})
	count(encryption_at_rest.deny) == 0 with input as testing.document([db])
}

test_database_with_unknown_encryption_flag_is_not_flagged if {
	db := testing.resource_with("aws_db_instance", "pos", {"tags": _pos}, {"unknown": ["storage_encrypted"]})
	count(encryption_at_rest.deny) == 0 with input as testing.document([db])
}

test_read_replica_inherits_encryption_from_its_source if {
	replica := testing.resource_with("aws_db_instance", "pos_replica", {"tags": _pos}, {
		"unknown": ["replicate_source_db"], "refs": {"replicate_source_db": ["aws_db_instance.pos"]},
	})
	count(encryption_at_rest.deny) == 0 with input as testing.document([replica])
}

test_unencrypted_pci_ebs_volume_is_denied if {
	volume := testing.resource("aws_ebs_volume", "pos_data", {"size": 20, "tags": _pos})
	_addresses(encryption_at_rest.deny) == {"aws_ebs_volume.pos_data"} with input as testing.document([volume])
}

test_ebs_encryption_by_default_covers_volumes if {
	volume := testing.resource("aws_ebs_volume", "pos_data", {"size": 20, "tags": _pos})
	default_on := testing.resource("aws_ebs_encryption_by_default", "this", {"enabled": true})
	count(encryption_at_rest.deny) == 0 with input as testing.document([volume, default_on])
}

test_unknown_storage_encrypted_is_not_judged_and_said if {
	db := testing.resource_with("aws_db_instance", "pos", {"tags": {"app": "pos"}}, {"unknown": ["storage_encrypted"]})
	count(encryption_at_rest.deny) == 0 with input as testing.document([db])
	encryption_at_rest.not_judged == {{"resource": "aws_db_instance.pos", "path": "storage_encrypted"}} with input as testing.document([db])
}

test_unknown_encryption_of_an_untagged_volume_is_not_counted if {
	ebs := testing.resource_with("aws_ebs_volume", "scratch", {}, {"unknown": ["encrypted"]})
	count(encryption_at_rest.not_judged) == 0 with input as testing.document([ebs])
}
