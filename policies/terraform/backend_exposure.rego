# App backends are reached only through the gateway: a security group of a
# catalogue app must not admit the internet, directly (a 0.0.0.0/0 or ::/0
# source) or one hop away (a source group that is itself open to the internet,
# like a public load balancer's). The gateway's own group is the intended path
# and never flagged.
package portcullis.terraform.backend_exposure

import rego.v1

# Rules of another package are imported by name: read through a package
# alias (network.world_ingress), regorus evaluates every rule of that package
# and copies them on each read, which cost seconds on large trees.
import data.portcullis.lib.network.group_ingress
import data.portcullis.lib.network.unknown_cidr_ingress
import data.portcullis.lib.network.world_ingress
import data.portcullis.lib.terraform.gateway_tags_text
import data.portcullis.lib.terraform.resource_at

import data.portcullis.lib.network
import data.portcullis.lib.terraform as tf

metadata := {
	"id": "PC-TF-001",
	"title": "App backends must be reachable only through the gateway",
	"severity": "critical",
	"remediation": sprintf(
		"Remove 0.0.0.0/0 and ::/0 sources from the app's security groups and admit only the gateway security group (tagged %s), e.g. source_security_group_id / referenced_security_group_id = the gateway group.",
		[gateway_tags_text],
	),
}

deny contains {"resource": grant.address, "message": msg} if {
	some [grant, address] in _open_app_groups
	sg := resource_at[address]
	not tf.may_be_gateway(sg)
	some app in tf.apps_of(sg)
	msg := sprintf(
		"%s (%s) allows ingress from %s on %s; only the gateway security group (tagged %s) may reach app backends",
		[_subject(grant, sg), tf.app_label(app), grant.cidr, network.describe_ports(grant), gateway_tags_text],
	)
}

deny contains {"resource": grant.address, "message": msg} if {
	some grant in _admitting_open_groups
	sg := resource_at[grant.security_group]
	not tf.may_be_gateway(sg)
	some app in tf.apps_of(sg)
	source := resource_at[grant.source]
	some open in world_ingress
	source.address in open.security_groups
	msg := sprintf(
		"%s (%s) admits security group %s, which is open to %s; only the gateway security group (tagged %s) may reach app backends",
		[_subject(grant, sg), tf.app_label(app), source.address, open.cidr, gateway_tags_text],
	)
}

# Grants opening a catalogue app's security group (not the gateway's) to the
# whole internet, as [grant, the group's address]: found, or not judged where
# the group's tags may make it the gateway's.
_open_app_groups contains [grant, address] if {
	some grant in world_ingress
	some address in grant.security_groups
	sg := resource_at[address]
	not tf.is_gateway(sg)
	count(tf.apps_of(sg)) > 0
}

# Grants admitting, into a catalogue app's security group (not the gateway's),
# a group of no app that is itself open to the internet (a public load
# balancer's). A source group whose tags are incomplete is judged as one whose
# tags are unknown: not the gateway.
_admitting_open_groups contains grant if {
	some grant in group_ingress
	sg := resource_at[grant.security_group]
	not tf.is_gateway(sg)
	count(tf.apps_of(sg)) > 0
	source := resource_at[grant.source]
	not tf.is_gateway(source)
	count(tf.apps_of(source)) == 0
	source.address in _open_to_world
}

# An ingress to an app's security group from a source CIDR the scanner could
# not resolve may admit the internet: not judged, and said so.
not_judged contains {"resource": grant.address, "path": grant.unknown_cidr} if {
	some grant in unknown_cidr_ingress
	some address in grant.security_groups
	sg := resource_at[address]
	not tf.is_gateway(sg)
	count(tf.apps_of(sg)) > 0
}

# An app's security group open to the internet, or admitting a group that is,
# whose tags may make the group the gateway (merge() with an unknown map):
# not judged, and said so.
not_judged contains {"resource": grant.address, "path": tf.gateway_unknown_at(sg), "reason": tf.gateway_unknown_reason(sg)} if {
	some [grant, address] in _open_app_groups
	sg := resource_at[address]
	tf.may_be_gateway(sg)
}

not_judged contains {"resource": grant.address, "path": tf.gateway_unknown_at(sg), "reason": tf.gateway_unknown_reason(sg)} if {
	some grant in _admitting_open_groups
	sg := resource_at[grant.security_group]
	tf.may_be_gateway(sg)
}

# A standalone rule open to the internet on a security group that isn't in this
# scan (an ID given as a literal or a variable, a group made elsewhere, a module
# output the scanner can't follow): it may be an app backend's. Not judged.
not_judged contains {"resource": grant.address, "path": "security_group_id", "reason": _outside} if {
	some grant in world_ingress
	count(grant.security_groups) == 0
}

_outside := "the security group it applies to is not in this scan, so whether it is an app backend's is unknown"

# The security groups some grant opens to the whole internet (a set, so the
# join above is a lookup, not a scan of every grant per group).
_open_to_world contains address if {
	some open in world_ingress
	some address in open.security_groups
}

_subject(grant, sg) := sprintf("security group %s", [sg.address]) if {
	grant.address == sg.address
} else := sprintf("rule %s on security group %s", [grant.address, sg.address])
