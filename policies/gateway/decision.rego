# The gateway's access decision: may this identity reach this route now?
#
# Input: the OPA-Envoy ext_authz shape plus input.route (the route the gateway
# matched), input.identity (verified claims) and input.now_ns. See README
# "Decision contract". The catalogue is indexed by input.route.app, so the
# cost of a decision doesn't grow with the number of apps.
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
	app
	authenticated
	count(problems) == 0
}

app := data.portcullis.catalogue.apps[input.route.app]

http := input.attributes.request.http

identity := object.get(input, "identity", {})

authenticated if identity.authenticated == true

now_seconds := input.now_ns / 1000000000

method := upper(object.get(http, "method", ""))

# The request path, lower-cased, as segments: overrides match whole segments
# and ignore case, so /POS/Refunds and /pos/refunds (no slash) are held to
# the refunds rule too, whatever the upstream's own routing does.
path_segments := [lower(s) | some s in input.parsed_path]

overrides contains override if {
	some override in object.get(app, "paths", [])
	prefix := [lower(s) | some s in split(trim(override.prefix, "/"), "/")]
	array.slice(path_segments, 0, count(prefix)) == prefix
}

# Every MFA requirement that applies: the app's own (unless this method is
# exempt) and each matching override's.
mfa_requirements contains app.mfa if {
	not method in object.get(app, "mfa_exempt_methods", [])
	app.mfa != null
}

mfa_requirements contains override.mfa if {
	some override in overrides
	override.mfa
}

# Group requirements: one of the app's groups, and one of each override's.
group_requirements contains app.groups

group_requirements contains override.groups if {
	some override in overrides
	override.groups
}

identity_groups := {g | some g in list_claim("groups")}

identity_amr := {m | some m in list_claim("amr")}

# A claim that should be a list but isn't grants nothing.
list_claim(name) := value if {
	value := object.get(identity, name, [])
	is_array(value)
} else := []

missing_groups contains required if {
	some required in group_requirements
	count(identity_groups & {g | some g in required}) == 0
}

unmet_mfa contains requirement if {
	some requirement in mfa_requirements
	not mfa_satisfied(requirement)
}

mfa_satisfied(requirement) if {
	method_satisfied(requirement)
	fresh_enough(requirement)
}

method_satisfied(requirement) if {
	count(object.get(requirement, "amr", [])) == 0
	count(object.get(requirement, "acr", [])) == 0
}

method_satisfied(requirement) if {
	some m in requirement.amr
	m in identity_amr
}

method_satisfied(requirement) if {
	identity.acr in object.get(requirement, "acr", [])
}

fresh_enough(requirement) if object.get(requirement, "max_age", null) == null

fresh_enough(requirement) if {
	max_age := requirement.max_age
	is_number(max_age)
	age := now_seconds - identity.auth_time
	age <= max_age
	age >= -60 # an auth_time in the future beyond clock skew is not trusted
}

problems contains sprintf("requires membership in one of: %s", [concat(", ", sort(required))]) if {
	some required in missing_groups
}

problems contains message if {
	some requirement in unmet_mfa
	not method_satisfied(requirement)
	message := sprintf("requires MFA with one of: %s", [concat(", ", sort(requirement.amr))])
}

problems contains message if {
	some requirement in unmet_mfa
	method_satisfied(requirement)
	not identity.auth_time
	message := sprintf("requires sign-in within the last %d s; the session has no auth_time", [requirement.max_age])
}

problems contains message if {
	some requirement in unmet_mfa
	method_satisfied(requirement)
	age := round(now_seconds - identity.auth_time)
	message := sprintf("requires sign-in within the last %d s; last sign-in was %d s ago", [requirement.max_age, age])
}

deny_reasons contains sprintf("no app %q in the catalogue", [object.get(object.get(input, "route", {}), "app", "")]) if {
	not app
}

deny_reasons contains "authentication required" if {
	app
	not authenticated
}

deny_reasons contains problem if {
	app
	authenticated
	some problem in problems
}

reasons := sort(deny_reasons)

default http_status := 403

http_status := 200 if allow

http_status := 404 if not app

http_status := 401 if {
	app
	not authenticated
}

default headers := {}

headers := {
	"x-portcullis-app": input.route.app,
	"x-portcullis-classification": app.classification,
} if allow

# step_up: deny now, but a fresh sign-in with this acr/max_age would allow.
# Only when MFA is all that is missing: a new sign-in adds no group.
default step_up := null

step_up := {"acr": step_up_acr, "max_age": step_up_max_age} if {
	app
	authenticated
	count(missing_groups) == 0
	count(unmet_mfa) > 0
}

# The strongest method asked for: phishing-resistant beats plain MFA.
step_up_acr := "phr" if {
	some requirement in unmet_mfa
	requirement.step_up_acr == "phr"
} else := min(acrs) if {
	acrs := {requirement.step_up_acr | some requirement in unmet_mfa}
	count(acrs) > 0
}

step_up_max_age := min(ages) if {
	ages := {requirement.max_age | some requirement in mfa_requirements; is_number(requirement.max_age)}
	count(ages) > 0
} else := null
