# The gateway's access decision: may this identity reach this route now?
#
# Input: the OPA-Envoy ext_authz shape plus input.route (the route the gateway
# matched), input.identity (verified claims) and input.now_ns. See README
# "Decision contract". The catalogue is indexed by input.route.app, so the
# cost of a decision doesn't grow with the number of apps; requirements are
# arrays, not sets of objects, and the allow path computes no deny reasons,
# which keeps a decision under 100 us on the embedded engine.
package portcullis.gateway

import rego.v1

decision := {
	"allow": allow,
	"reasons": reasons,
	"http_status": http_status,
	"headers": headers,
	"step_up": step_up,
}

default allow := false

allow if {
	authenticated
	not missing_group
	not missing_mfa
}

app := data.portcullis.catalogue.apps[input.route.app]

identity := input.identity

authenticated if {
	app
	identity.authenticated == true
}

# The request path without its query, lower-cased: overrides match whole
# segments and ignore case, so /POS/Refunds and /pos/refunds (no slash) are
# held to the refunds rule too, whatever the upstream's own routing does.
overrides := [override |
	path := lower(concat("/", input.parsed_path))
	some override in app.paths
	prefix := lower(trim(override.prefix, "/"))
	segment_prefix(path, prefix)
]

segment_prefix(path, prefix) if path == prefix

segment_prefix(path, prefix) if startswith(path, concat("", [prefix, "/"]))

# Groups: one of the app's, and one of each matching override's.
missing_group if not in_app_group

missing_group if {
	some override in overrides
	override.groups # first: the compiled VM lets `groups := <undefined>` through
	groups := override.groups
	not member_of_one(groups)
}

in_app_group if member_of_one(app.groups)

# A groups claim that isn't a list grants nothing.
member_of_one(groups) if {
	is_array(identity.groups)
	some group in identity.groups
	group in groups
}

# MFA: the app's own (unless the method is exempt, e.g. GET on analytics)
# and every matching override's.
mfa_requirements := array.concat(array.concat(app_mfa, [o.mfa | some o in overrides; o.mfa]), signal_mfa)

# Risk signals (input.signals, only with shared_state): a source address this
# subject has not used recently asks for what the app's new_source_ip_mfa says.
# Without signals, or with {"available": false}, nothing is added.
signal_mfa := [app.new_source_ip_mfa] if {
	input.signals.new_source_ip == true
	app.new_source_ip_mfa
} else := []

app_mfa := [app.mfa] if {
	app.mfa
	not mfa_exempt_method
} else := []

# A WebSocket upgrade is a GET but opens a two-way channel: never exempt.
mfa_exempt_method if {
	upper(input.attributes.request.http.method) in object.get(app, "mfa_exempt_methods", [])
	not websocket_upgrade
}

websocket_upgrade if contains(lower(input.attributes.request.http.headers.upgrade), "websocket")

missing_mfa if {
	some requirement in mfa_requirements
	not mfa_satisfied(requirement)
}

mfa_satisfied(requirement) if {
	method_satisfied(requirement)
	fresh_enough(requirement)
}

method_satisfied(requirement) if {
	is_array(identity.amr)
	some method in identity.amr
	method in requirement.amr
}

method_satisfied(requirement) if identity.acr in requirement.acr

method_satisfied(requirement) if {
	count(object.get(requirement, "amr", [])) == 0
	count(object.get(requirement, "acr", [])) == 0
}

# A helper rule, not `is_number(identity.auth_time)` under `not`: OPA treats
# `not f(x)` with x undefined as undefined (the rule fails), regorus as true.
has_auth_time if is_number(identity.auth_time)

fresh_enough(requirement) if object.get(requirement, "max_age", null) == null

# In whole nanoseconds: `now_ns / 1000000000` is rounded on regorus (a float)
# and exact on OPA, so the two disagreed one nanosecond past max_age.
fresh_enough(requirement) if {
	has_auth_time
	is_number(input.now_ns)
	is_number(requirement.max_age)
	age_ns := input.now_ns - (identity.auth_time * 1000000000)
	age_ns <= requirement.max_age * 1000000000
	age_ns >= -60000000000 # an auth_time in the future beyond clock skew is not trusted
}

unmet_mfa := [requirement |
	some requirement in mfa_requirements
	not mfa_satisfied(requirement)
]

# Reasons, status and step-up: computed only for a deny.
reasons := [] if allow else := sort(deny_reasons)

# json.marshal, not %q: regorus' sprintf refuses %q for anything but a string.
deny_reasons contains sprintf("no app %s in the catalogue", [json.marshal(object.get(object.get(input, "route", {}), "app", ""))]) if {
	not app
}

deny_reasons contains "authentication required" if {
	app
	not authenticated
}

deny_reasons contains sprintf("requires membership in one of: %s", [concat(", ", sort(app.groups))]) if {
	authenticated
	not in_app_group
}

deny_reasons contains sprintf("requires membership in one of: %s", [concat(", ", sort(override.groups))]) if {
	authenticated
	some override in overrides
	override.groups # first: the compiled VM lets `groups := <undefined>` through
	groups := override.groups
	not member_of_one(groups)
}

deny_reasons contains sprintf("requires MFA with one of: %s", [concat(", ", sort(requirement.amr))]) if {
	authenticated
	some requirement in unmet_mfa
	not method_satisfied(requirement)
}

deny_reasons contains "new source address: a fresh phishing-resistant sign-in is needed from an address not used before" if {
	authenticated
	some requirement in signal_mfa
	not mfa_satisfied(requirement)
}

deny_reasons contains message if {
	authenticated
	some requirement in unmet_mfa
	method_satisfied(requirement)
	has_auth_time
	is_number(input.now_ns)
	age := round((input.now_ns / 1000000000) - identity.auth_time)
	# %v, not %d: regorus prints a negative number under %d with two minus signs.
	message := sprintf("requires sign-in within the last %v s; last sign-in was %v s ago", [requirement.max_age, age])
}

deny_reasons contains message if {
	authenticated
	some requirement in unmet_mfa
	method_satisfied(requirement)
	not has_auth_time
	message := sprintf("requires sign-in within the last %v s; the session has no auth_time", [requirement.max_age])
}

http_status := 200 if allow
else := 404 if not app
else := 401 if not authenticated
else := 403

headers := {
	"x-portcullis-app": input.route.app,
	"x-portcullis-classification": app.classification,
} if allow
else := {}

# step_up: deny now, but a fresh sign-in with this acr/max_age would allow.
# Only when MFA is all that is missing: a new sign-in adds no group.
step_up := null if allow
else := {"acr": step_up_acr, "max_age": step_up_max_age} if {
	authenticated
	not missing_group
	missing_mfa
} else := null

# The strongest method asked for: phishing-resistant beats plain MFA.
step_up_acrs := {requirement.step_up_acr | some requirement in unmet_mfa}

step_up_acr := "phr" if "phr" in step_up_acrs

step_up_acr := min(step_up_acrs) if not "phr" in step_up_acrs

step_up_max_age := min(ages) if {
	ages := {age | some requirement in mfa_requirements; age := requirement.max_age; is_number(age)}
	count(ages) > 0
} else := null
