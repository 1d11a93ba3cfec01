package portcullis.terraform.audit_logging_test

import rego.v1

import data.portcullis.lib.testing
import data.portcullis.terraform.audit_logging

_pos := {"app": "pos"}

_trail := testing.resource("aws_cloudtrail", "main", {"name": "main", "is_multi_region_trail": true})

_addresses(findings) := {f.resource | some f in findings}

test_pci_bucket_without_access_logging_is_denied if {
	bucket := testing.resource("aws_s3_bucket", "pos_receipts", {"tags": _pos})
	audit_logging.deny == {{
		"resource": "aws_s3_bucket.pos_receipts",
		"message": "S3 bucket aws_s3_bucket.pos_receipts (app pos, pci) has no access logging; add an aws_s3_bucket_logging whose bucket is aws_s3_bucket.pos_receipts.id and whose target_bucket is a log bucket",
	}} with input as testing.document([_trail, bucket])
}

test_pci_bucket_with_logging_resource_is_allowed if {
	bucket := testing.resource("aws_s3_bucket", "pos_receipts", {"tags": _pos})
	logs := testing.resource("aws_s3_bucket", "logs", {})
	logging := testing.resource_with("aws_s3_bucket_logging", "pos_receipts", {"target_prefix": "pos/"}, {
		"unknown": ["bucket", "target_bucket"],
		"refs": {"bucket": ["aws_s3_bucket.pos_receipts"], "target_bucket": ["aws_s3_bucket.logs"]},
	})
	count(audit_logging.deny) == 0 with input as testing.document([_trail, bucket, logs, logging])
}

test_pci_bucket_with_inline_logging_is_allowed if {
	bucket := testing.resource("aws_s3_bucket", "pos_receipts", {"tags": _pos, "logging": [{"target_bucket": "acme-logs", "target_prefix": "log/"}]})
	count(audit_logging.deny) == 0 with input as testing.document([_trail, bucket])
}

test_pci_log_bucket_need_not_log_itself if {
	bucket := testing.resource("aws_s3_bucket", "pos_receipts", {"tags": _pos})
	log_bucket := testing.resource("aws_s3_bucket", "pos_logs", {"tags": _pos})
	logging := testing.resource_with("aws_s3_bucket_logging", "pos_receipts", {}, {
		"unknown": ["bucket", "target_bucket"],
		"refs": {"bucket": ["aws_s3_bucket.pos_receipts"], "target_bucket": ["aws_s3_bucket.pos_logs"]},
	})
	count(audit_logging.deny) == 0 with input as testing.document([_trail, bucket, log_bucket, logging])
}

test_confidential_bucket_is_not_held_to_pci_logging if {
	bucket := testing.resource("aws_s3_bucket", "wms", {"tags": {"app": "wms"}})
	count(audit_logging.deny) == 0 with input as testing.document([bucket])
}

test_pci_load_balancer_without_access_logs_is_denied if {
	lb := testing.resource("aws_lb", "pos", {"internal": true, "tags": _pos})
	disabled := testing.resource("aws_alb", "pos_api", {"internal": true, "tags": _pos, "access_logs": [{"bucket": "acme-logs", "enabled": false}]})
	_addresses(audit_logging.deny) == {"aws_lb.pos", "aws_alb.pos_api"} with input as testing.document([_trail, lb, disabled])
}

test_pci_load_balancer_with_access_logs_is_allowed if {
	alb := testing.resource("aws_lb", "pos", {"tags": _pos, "access_logs": [{"bucket": "acme-logs", "enabled": true}]})
	classic := testing.resource("aws_elb", "pos_legacy", {"tags": _pos, "access_logs": [{"bucket": "acme-logs"}]})
	count(audit_logging.deny) == 0 with input as testing.document([_trail, alb, classic])
}

test_load_balancer_logging_off_is_denied_though_its_bucket_is_unknown if {
	off := testing.resource_with("aws_lb", "pos", {"internal": true, "tags": _pos, "access_logs": [{"enabled": false}]}, {"unknown": ["access_logs.0.bucket"]})
	no_flag := testing.resource_with("aws_alb", "pos_api", {"internal": true, "tags": _pos, "access_logs": [{}]}, {"unknown": ["access_logs.0.bucket"]})
	_addresses(audit_logging.deny) == {"aws_lb.pos", "aws_alb.pos_api"} with input as testing.document([_trail, off, no_flag])
}

test_unknown_access_logs_setting_is_not_flagged if {
	lb := testing.resource_with("aws_lb", "pos", {"tags": _pos, "access_logs": [{"bucket": "acme-logs"}]}, {"unknown": ["access_logs.0.enabled"]})
	count(audit_logging.deny) == 0 with input as testing.document([_trail, lb])
}

test_missing_cloudtrail_with_pci_resources_is_denied_once if {
	lb := testing.resource("aws_lb", "pos", {"tags": _pos, "access_logs": [{"bucket": "l", "enabled": true}]})
	db := testing.resource("aws_db_instance", "pos", {"tags": _pos})
	audit_logging.deny == {{
		"resource": "aws_db_instance.pos",
		"message": "no enabled aws_cloudtrail in this configuration, but it deploys pci app pos (2 resources, e.g. aws_db_instance.pos); add an aws_cloudtrail with is_multi_region_trail = true",
		"key": "no-enabled-cloudtrail",
	}} with input as testing.document([lb, db])
}

test_disabled_cloudtrail_does_not_count if {
	db := testing.resource("aws_db_instance", "pos", {"tags": _pos})
	off := testing.resource("aws_cloudtrail", "main", {"enable_logging": false})
	_addresses(audit_logging.deny) == {"aws_db_instance.pos"} with input as testing.document([off, db])
}

test_no_cloudtrail_needed_without_pci_resources if {
	db := testing.resource("aws_db_instance", "wms", {"tags": {"app": "wms"}})
	count(audit_logging.deny) == 0 with input as testing.document([db])
}

test_no_cloudtrail_needed_for_pci_resources_on_another_cloud if {
	app := testing.resource("azurerm_linux_web_app", "pos", {"tags": _pos})
	count(audit_logging.deny) == 0 with input as testing.document([app])
}

test_cloudtrail_finding_counts_only_aws_resources if {
	app := testing.resource("azurerm_linux_web_app", "pos", {"tags": _pos})
	db := testing.resource("aws_db_instance", "pos", {"tags": _pos})
	audit_logging.deny == {{
		"resource": "aws_db_instance.pos",
		"message": "no enabled aws_cloudtrail in this configuration, but it deploys pci app pos (1 resource, e.g. aws_db_instance.pos); add an aws_cloudtrail with is_multi_region_trail = true",
		"key": "no-enabled-cloudtrail",
	}} with input as testing.document([app, db])
}

test_cloudtrail_finding_names_two_pci_apps_as_apps if {
	kiosk := {"title": "Kiosk", "classification": "pci", "terraform_tags": {"app": "kiosk"}}
	catalogue := object.union(data.portcullis.catalogue, {"apps": {"kiosk": kiosk}})
	pos := testing.resource("aws_db_instance", "pos", {"tags": _pos})
	kiosk_db := testing.resource("aws_db_instance", "kiosk", {"tags": {"app": "kiosk"}})
	audit_logging.deny == {{
		"resource": "aws_db_instance.kiosk",
		"message": "no enabled aws_cloudtrail in this configuration, but it deploys pci apps kiosk, pos (2 resources, e.g. aws_db_instance.kiosk); add an aws_cloudtrail with is_multi_region_trail = true",
		"key": "no-enabled-cloudtrail",
	}} with input as testing.document([pos, kiosk_db]) with data.portcullis.catalogue as catalogue
}

test_pci_log_bucket_named_literally_as_a_target_need_not_log_itself if {
	log_bucket := testing.resource("aws_s3_bucket", "pos_logs", {"bucket": "acme-pos-logs", "tags": _pos})
	logging := testing.resource("aws_s3_bucket_logging", "other", {"bucket": "acme-other", "target_bucket": "acme-pos-logs"})
	count(audit_logging.deny) == 0 with input as testing.document([_trail, log_bucket, logging])
}
