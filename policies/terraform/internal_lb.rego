# Load balancers in front of catalogue apps are internal: the only way in from
# outside is the gateway, so an app's own load balancer must not face the
# internet.
package portcullis.terraform.internal_lb

import rego.v1

# Rules of another package are imported by name (listener_tls.rego says why).
import data.portcullis.lib.terraform.resource_at

import data.portcullis.lib.terraform as tf

metadata := {
	"id": "PC-TF-003",
	"title": "Load balancers of catalogue apps must be internal",
	"severity": "high",
	"remediation": "Set internal = true on the app's load balancer (it is then replaced) and publish the app through the gateway instead.",
}

_lb_types := {"aws_lb", "aws_alb", "aws_elb"}

deny contains {"resource": r.address, "message": msg} if {
	some address in _facing_internet
	r := resource_at[address]
	not tf.may_be_gateway(r)
	some app in tf.apps_of(r)
	msg := sprintf(
		"load balancer %s (%s) is internet-facing (internal is not true); app backends are reached only through the gateway: set internal = true",
		[r.address, tf.app_label(app)],
	)
}

not_judged contains {"resource": r.address, "path": "internal"} if {
	some r in input.resources
	r.type in _lb_types
	not tf.is_gateway(r)
	count(tf.apps_of(r)) > 0
	tf.is_unknown(r, ["internal"])
}

# An internet-facing app load balancer whose tags may make it the gateway's
# (merge() with an unknown map): not judged, and said so.
not_judged contains {"resource": r.address, "path": tf.gateway_unknown_at(r)} if {
	some address in _facing_internet
	r := resource_at[address]
	tf.may_be_gateway(r)
}

# Catalogue apps' load balancers (not the gateway's) that face the internet: a
# finding, or not judged where their tags may make them the gateway's.
_facing_internet contains r.address if {
	some r in input.resources
	r.type in _lb_types
	not tf.is_gateway(r)
	count(tf.apps_of(r)) > 0
	not tf.is_unknown(r, ["internal"])
	not tf.true_or(r, ["internal"], false)
}
