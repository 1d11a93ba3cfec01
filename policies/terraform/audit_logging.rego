# PCI apps leave an audit trail (PCI DSS requirement 10): their S3 buckets log
# access, their load balancers write access logs, and a configuration that
# deploys a pci app also deploys an enabled CloudTrail trail.
package portcullis.terraform.audit_logging

import rego.v1

import data.portcullis.lib.terraform as tf

metadata := {
	"id": "PC-TF-008",
	"title": "PCI apps must have CloudTrail and access logging",
	"severity": "medium",
	"remediation": "Add an aws_s3_bucket_logging for each of the app's buckets, access_logs { bucket = ..., enabled = true } to its load balancers, and an aws_cloudtrail (is_multi_region_trail = true, enable_log_file_validation = true) to the configuration.",
}

_lb_types := {"aws_lb", "aws_alb", "aws_elb"}

deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type == "aws_s3_bucket"
	some app in _pci_apps(r)
	not tf.has_unknown_within(r, ["logging"])
	count(tf.blocks(r, ["logging"])) == 0
	not tf.bucket_has(r, "aws_s3_bucket_logging")
	not _log_target(r)
	msg := sprintf(
		"S3 bucket %s (%s) has no access logging; add an aws_s3_bucket_logging whose bucket is %s.id and whose target_bucket is a log bucket",
		[r.address, tf.app_label(app), r.address],
	)
}

deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type in _lb_types
	some app in _pci_apps(r)
	not _access_logs_unknown(r)
	not _access_logs_enabled(r)
	msg := sprintf(
		"load balancer %s (%s) does not write access logs; add access_logs { bucket = <log bucket>, enabled = true }",
		[r.address, tf.app_label(app)],
	)
}

# One finding per configuration, on the first pci resource by address, so the
# finding is stable from scan to scan. CloudTrail audits AWS only: a
# configuration whose pci resources are all on another cloud (tagged the same
# way, e.g. azurerm_*) is not asked for one.
# Its key names what it is about, as the message carries a count that changes.
deny contains {"resource": first, "message": msg, "key": "no-enabled-cloudtrail"} if {
	pci := {r.address | some r in input.resources; _aws(r); count(_pci_apps(r)) > 0}
	count(pci) > 0
	not _trail_present
	first := min(pci)
	apps := {app | some r in input.resources; _aws(r); some app in _pci_apps(r)}
	msg := sprintf(
		"no enabled aws_cloudtrail in this configuration, but it deploys pci %s %s (%s, e.g. %s); add an aws_cloudtrail with is_multi_region_trail = true",
		[_noun(count(apps), "app"), concat(", ", sort(apps)), _counted(count(pci), "resource"), first],
	)
}

_aws(r) if startswith(r.type, "aws_")

_noun(1, noun) := noun

_noun(n, noun) := sprintf("%ss", [noun]) if n != 1

_counted(n, noun) := sprintf("%v %s", [n, _noun(n, noun)])

_pci_apps(r) := {app |
	some app in tf.apps_of(r)
	tf.classification(app) == "pci"
}

# An ALB/NLB logs only with access_logs.enabled = true; on a classic ELB an
# access_logs block is enabled unless it says otherwise.
_access_logs_enabled(r) if {
	some logs in tf.blocks(r, ["access_logs"])
	tf.is_true(object.get(logs, "enabled", r.type == "aws_elb"))
}

# Whether a load balancer logs turns on access_logs.enabled alone (and on the
# block being there): an unknown bucket or prefix doesn't change it, so only an
# unknown `enabled` (or a block the scanner could not expand) is not judged.
_access_logs_unknown(r) if {
	some at in tf.block_paths(r, ["access_logs"])
	tf.is_unknown(r, array.concat(at, ["enabled"]))
}

# A trail counts unless logging is switched off; one whose enable_logging is
# unknown counts too (we don't guess it off).
_trail_present if {
	some r in input.resources
	r.type == "aws_cloudtrail"
	not tf.false_or(r, ["enable_logging"], true)
}

# The bucket that receives access logs does not log its own access (that
# would loop); it is recognised by what references it.
_log_target(bucket) if bucket.address in _log_destinations

_log_target(bucket) if {
	name := tf.value(bucket, ["bucket"])
	name in _log_destination_names
}

# Built once per document, so asking of every bucket stays linear.
_log_destinations contains address if {
	some other in input.resources
	some key, _ in object.get(other, "refs", {})
	_log_destination_key(key)
	some address in tf.targets(other, key)
}

_log_destination_names contains name if {
	some other in input.resources
	other.type == "aws_s3_bucket_logging"
	name := tf.value(other, ["target_bucket"])
}

_log_destination_key(key) if regex.match(`(^|\.)target_bucket$`, key)

_log_destination_key(key) if regex.match(`^access_logs(\.[0-9]+)?\.bucket$`, key)

_log_destination_key(key) if key == "s3_bucket_name"
