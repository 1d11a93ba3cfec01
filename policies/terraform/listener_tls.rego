# Listeners speak TLS 1.2 or newer. HTTPS/TLS listeners (any load balancer)
# must use an ELB security policy whose minimum is TLS 1.2; HTTP listeners of
# catalogue-app load balancers must not serve plaintext: they redirect to HTTPS
# (or answer with a fixed response); a classic ELB cannot redirect, so an app's
# classic ELB must not have HTTP listeners at all. Classic ELB TLS versions are
# set by separate aws_load_balancer_policy resources and not checked here.
package portcullis.terraform.listener_tls

import rego.v1

# Rules of another package are imported by name: read through a package
# alias (network.world_ingress), regorus evaluates every rule of that package
# and copies them on each read, which cost seconds on large trees.
import data.portcullis.lib.terraform.resource_at

import data.portcullis.lib.terraform as tf

metadata := {
	"id": "PC-TF-004",
	"title": "Load balancer listeners must use TLS 1.2 or newer",
	"severity": "high",
	"remediation": "Set ssl_policy = \"ELBSecurityPolicy-TLS13-1-2-2021-06\" (TLS 1.2 and 1.3) on HTTPS/TLS listeners. Give HTTP listeners of app load balancers a default_action of type \"redirect\" with redirect { protocol = \"HTTPS\", port = \"443\", status_code = \"HTTP_301\" }.",
}

_listener_types := {"aws_lb_listener", "aws_alb_listener"}

_lb_types := {"aws_lb", "aws_alb"}

_recommended := "ELBSecurityPolicy-TLS13-1-2-2021-06"

# The policy AWS applies to an HTTPS/TLS listener created without ssl_policy.
default_policy := "ELBSecurityPolicy-2016-08"

deny contains {"resource": r.address, "message": msg} if {
	some r in input.resources
	r.type in _listener_types
	protocol := _protocol(r)
	protocol in {"HTTPS", "TLS"}
	not tf.is_unknown(r, ["ssl_policy"])
	policy := tf.value_or(r, ["ssl_policy"], default_policy)
	is_string(policy)
	not _accepted(policy)
	msg := sprintf("%s listener %s %s; set ssl_policy = %q", [protocol, r.address, _weakness(r, policy), _recommended])
}

deny contains {"resource": r.address, "message": msg} if {
	some [address, lb_address, at] in _plaintext_listeners
	r := resource_at[address]
	lb := resource_at[lb_address]
	not tf.may_be_gateway(lb)
	some app in tf.apps_of(lb)
	action := tf.value(r, at)
	msg := sprintf(
		"HTTP listener %s on load balancer %s (%s) serves plaintext (default action %q); redirect it to HTTPS: default_action { type = \"redirect\" redirect { protocol = \"HTTPS\" port = \"443\" status_code = \"HTTP_301\" } }",
		[r.address, lb.address, tf.app_label(app), object.get(action, "type", "unset")],
	)
}

deny contains {"resource": r.address, "message": msg} if {
	some [address, at] in _plaintext_classic_listeners
	r := resource_at[address]
	not tf.may_be_gateway(r)
	some app in tf.apps_of(r)
	msg := sprintf(
		"classic load balancer %s (%s) has a plaintext HTTP listener on port %v, and classic ELBs cannot redirect to HTTPS; keep only HTTPS listeners, or move to an ALB whose HTTP listener redirects",
		[r.address, tf.app_label(app), tf.value_or(r, array.concat(at, ["lb_port"]), "?")],
	)
}

# HTTP listeners of catalogue apps' load balancers (not the gateway's) whose
# default action serves plaintext, as [listener, load balancer, action path]:
# found, or not judged where the load balancer's tags may make it the gateway's.
_plaintext_listeners contains [r.address, lb.address, at] if {
	some r in input.resources
	r.type in _listener_types
	some address in tf.targets(r, "load_balancer_arn")
	lb := resource_at[address]
	lb.type in _lb_types
	not tf.is_gateway(lb)
	count(tf.apps_of(lb)) > 0
	_plain_http(r, lb)
	some at in tf.block_paths(r, ["default_action"])
	not tf.is_unknown(r, array.concat(at, ["type"]))
	action := tf.value(r, at)
	not _may_keep_traffic_off_plaintext(r, at, action)
}

# Plaintext HTTP listeners of catalogue apps' classic ELBs (not the gateway's),
# as [load balancer, listener path].
_plaintext_classic_listeners contains [r.address, at] if {
	some r in input.resources
	r.type == "aws_elb"
	not tf.is_gateway(r)
	count(tf.apps_of(r)) > 0
	some at in tf.block_paths(r, ["listener"])
	protocol := tf.value(r, array.concat(at, ["lb_protocol"]))
	is_string(protocol)
	lower(protocol) == "http"
}

# Known TLS 1.2+ policies. A helper, not `not minimum_tls(p) in {...}`: OPA treats
# that `not` as undefined (the rule fails) for an unrecognised name.
_accepted(policy) if minimum_tls(policy) in {"1.2", "1.3"}

# minimum_tls(policy): the oldest TLS version an ELB security policy accepts;
# undefined for a name this rule does not recognise (it is then reported, as
# only the known TLS 1.2+ policies are accepted).
minimum_tls(policy) := "1.3" if {
	regex.match(`^ELBSecurityPolicy-TLS13-1-3-`, policy)
} else := "1.2" if {
	regex.match(`^ELBSecurityPolicy-(TLS13-1-2|TLS-1-2|FS-1-2)-`, policy)
} else := "1.1" if {
	regex.match(`^ELBSecurityPolicy-(TLS13-1-1|TLS-1-1|FS-1-1)-`, policy)
} else := "1.0" if {
	regex.match(`^ELBSecurityPolicy-(TLS13-1-0-|FS-20[0-9][0-9]-|20[0-9][0-9]-[0-9][0-9]$)`, policy)
}

_weakness(r, policy) := sprintf("sets no ssl_policy, so AWS applies %s, which accepts TLS %s", [policy, minimum_tls(policy)]) if {
	tf.value_or(r, ["ssl_policy"], null) == null
} else := sprintf("uses ssl_policy %s, which accepts TLS %s", [policy, minimum_tls(policy)]) if {
	minimum_tls(policy)
} else := sprintf("uses ssl_policy %s, which is not a known TLS 1.2+ policy (ELBSecurityPolicy-TLS13-1-2-*, -TLS13-1-3-*, -TLS-1-2-*, -FS-1-2-*)", [policy])

_protocol(r) := upper(p) if {
	p := tf.value(r, ["protocol"])
	is_string(p)
}

# An Application Load Balancer listener without protocol speaks HTTP.
_plain_http(r, _) if _protocol(r) == "HTTP"

_plain_http(r, lb) if {
	not tf.is_unknown(r, ["protocol"])
	tf.value_or(r, ["protocol"], null) == null
	not tf.is_unknown(lb, ["load_balancer_type"])
	tf.value_or(lb, ["load_balancer_type"], "application") == "application"
}

# Judge what is known: a forward action whose target group ARN is unknown still
# forwards plaintext. Only a redirect whose target protocol is unknown may be
# a redirect to HTTPS, and is not judged.
_may_keep_traffic_off_plaintext(_, _, action) if _keeps_traffic_off_plaintext(action)

_may_keep_traffic_off_plaintext(r, at, action) if _redirect_unknown(r, at, action)

_redirect_unknown(r, at, action) if {
	object.get(action, "type", "") == "redirect"
	tf.has_unknown_within(r, array.concat(at, ["redirect"]))
}

# What the rules above skipped because a value they need is unknown.
not_judged contains {"resource": r.address, "path": "protocol"} if {
	some r in input.resources
	r.type in _listener_types
	tf.is_unknown(r, ["protocol"])
}

not_judged contains {"resource": r.address, "path": "ssl_policy"} if {
	some r in input.resources
	r.type in _listener_types
	_protocol(r) in {"HTTPS", "TLS"}
	tf.is_unknown(r, ["ssl_policy"])
}

not_judged contains {"resource": r.address, "path": path} if {
	some r in input.resources
	r.type in _listener_types
	some address in tf.targets(r, "load_balancer_arn")
	lb := resource_at[address]
	lb.type in _lb_types
	not tf.is_gateway(lb)
	count(tf.apps_of(lb)) > 0
	_plain_http(r, lb)
	some at in tf.block_paths(r, ["default_action"])
	path := _unknown_action_part(r, at)
}

_unknown_action_part(r, at) := tf.path_string(array.concat(at, ["type"])) if {
	tf.is_unknown(r, array.concat(at, ["type"]))
} else := tf.path_string(array.concat(at, ["redirect"])) if {
	action := tf.value(r, at)
	_redirect_unknown(r, at, action)
}

_keeps_traffic_off_plaintext(action) if object.get(action, "type", "") == "fixed-response"

_keeps_traffic_off_plaintext(action) if {
	object.get(action, "type", "") == "redirect"
	some redirect in tf.as_objects(object.get(action, "redirect", []))
	protocol := object.get(redirect, "protocol", "")
	is_string(protocol)
	upper(protocol) == "HTTPS"
}

# A plaintext listener the rules above would find, on an app load balancer
# whose tags may make it the gateway's (merge() with an unknown map): not
# judged, and said so.
not_judged contains {"resource": address, "path": tf.gateway_unknown_at(lb), "reason": tf.gateway_unknown_reason(lb)} if {
	some [address, lb_address, _] in _plaintext_listeners
	lb := resource_at[lb_address]
	tf.may_be_gateway(lb)
}

not_judged contains {"resource": address, "path": tf.gateway_unknown_at(r)} if {
	some [address, _] in _plaintext_classic_listeners
	r := resource_at[address]
	tf.may_be_gateway(r)
}
