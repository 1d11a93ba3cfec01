# The gateway's access decision: may this identity reach this route now?
#
# Input: the OPA-Envoy ext_authz shape plus input.route (the route the gateway
# matched), input.identity (verified claims) and input.now_ns. See README
# "Decision contract". The catalogue is indexed by input.route.app, so the
# cost of a decision doesn't grow with the number of apps, and the allow path
# computes no deny reasons.
#
# Written for regorus' compiled VM, where every executed instruction costs
# (~380 machine instructions each before it does any work; a rule or function
# call more, a comprehension more still, a builtin call ~10,000): the overrides
# that match the path are found once, the MFA requirements are gathered once
# into one set; the allow path only asks whether one is unmet (missing_mfa),
# the reasons and step-up of a deny list them (unmet_mfa); no helper is called
# to match paths. Replaying a decision log runs this once per logged decision
# (bench/replay.py).
package portcullis.gateway

import rego.v1

decision := {
	"allow": true,
	"reasons": [],
	"http_status": 200,
	"headers": {
		"x-portcullis-app": input.route.app,
		"x-portcullis-classification": app.classification,
	},
	"step_up": null,
	"valid_until_ns": valid_until_ns, # memo.rego
} if allow
else := {
	"allow": false,
	"reasons": sort(deny_reasons),
	"http_status": deny_status,
	"headers": {},
	"step_up": step_up,
	"valid_until_ns": null,
}

default allow := false

allow if {
	input.identity.authenticated == true
	app
	in_app_group
	not missing_override_group
	not missing_mfa
	not from_another_site
}

app := data.portcullis.catalogue.apps[input.route.app]

authenticated if {
	app
	input.identity.authenticated == true
}

# The request path without its query, lower-cased, with a trailing slash:
# overrides match whole segments and ignore case, so /POS/Refunds and
# /pos/refunds (no slash) are held to the refunds rule too, whatever the
# upstream's own routing does. An override matches when this starts with its
# prefix, trimmed of slashes, lower-cased, plus "/" (the same path, or one
# below it) or plus "." (its last segment with a suffix: /pos/refunds.json is
# the refunds handler on Rails (`(.:format)`) and on Spring's suffix matching):
# one any_prefix_match, no helper call.
request_path := concat("", [lower(concat("/", input.parsed_path)), "/"])

# The app's path overrides that hold for this request, matched once.
matched_overrides := [override |
	some override in app.paths
	prefix := lower(trim(override.prefix, "/"))
	strings.any_prefix_match(request_path, [concat("", [prefix, "/"]), concat("", [prefix, "."])])
]

# Groups: one of the app's, and one of each matching override's.
missing_group if not in_app_group

missing_group if missing_override_group

missing_override_group if {
	some override in matched_overrides
	override.groups # first: the compiled VM lets `groups := <undefined>` through
	groups := override.groups
	not member_of_one(groups)
}

# A groups claim that isn't a list grants nothing. The loop runs over the app's
# few groups and `in` scans the claim in one VM instruction: a loop over the
# claim (a directory's groups, ~1,400 short ones fit a token) cost instructions
# per group, 4-5x a typical decision's CPU, and past the VM's 25,000 a second
# run on the interpreter (tests/test_attack_decision_cost.py).
in_app_group if {
	is_array(input.identity.groups)
	some group in app.groups
	group in input.identity.groups
}

member_of_one(groups) if {
	is_array(input.identity.groups)
	some group in groups
	group in input.identity.groups
}

# MFA: the app's own (unless the method is exempt, e.g. GET on analytics),
# every matching override's, and the risk signal's: a set, each requirement
# once: missing_mfa asks whether any is unmet, unmet_mfa lists them for a deny.
mfa_requirements contains app.mfa if {
	app.mfa
	not mfa_exempt_method
}

mfa_requirements contains override.mfa if {
	some override in matched_overrides
	override.mfa
}

# Risk signals (input.signals, only with shared_state): a source address this
# subject has not used recently asks for what the app's new_source_ip_mfa says.
# Without signals, or with {"available": false}, nothing is added.
mfa_requirements contains app.new_source_ip_mfa if new_source_ip_mfa_applies

new_source_ip_mfa_applies if {
	input.signals.new_source_ip == true
	app.new_source_ip_mfa
}

# A WebSocket upgrade is a GET but opens a two-way channel: never exempt.
# (An app without mfa_exempt_methods exempts nothing: `in` is undefined.)
mfa_exempt_method if {
	upper(input.attributes.request.http.method) in app.mfa_exempt_methods
	not websocket_upgrade
}

websocket_upgrade if contains(lower(input.attributes.request.http.headers.upgrade), "websocket")

# The requirements this sign-in doesn't meet: by its method (amr/acr), or met
# by its method but not recently enough (max_age). Each is checked once: the
# reasons below read these lists instead of calling the checks again.
method_unmet := [requirement |
	some requirement in mfa_requirements
	not method_satisfied(requirement)
]

stale := [requirement |
	some requirement in mfa_requirements
	not requirement in method_unmet
	not fresh_enough(requirement)
]

unmet_mfa := array.concat(method_unmet, stale)

# Whether any requirement is unmet (the same as count(unmet_mfa) > 0): the allow
# path, usually all met, builds no lists. Measured on the compiled VM (callgrind,
# a real gateway run's inputs): an allow ~10% fewer instructions, a deny for
# missing MFA a little more (it lists the unmet ones for its reasons anyway).
missing_mfa if {
	some requirement in mfa_requirements
	not method_satisfied(requirement)
}

missing_mfa if {
	some requirement in mfa_requirements
	not fresh_enough(requirement)
}

# The VM stops at the first definition that holds: the usual one comes first.
# Over the requirement's methods, not the token's amr (as in_app_group).
method_satisfied(requirement) if {
	is_array(input.identity.amr)
	some method in requirement.amr
	method in input.identity.amr
}

method_satisfied(requirement) if input.identity.acr in requirement.acr

method_satisfied(requirement) if {
	count(object.get(requirement, "amr", [])) == 0
	count(object.get(requirement, "acr", [])) == 0
}

# A helper rule, not `is_number(input.identity.auth_time)` under `not`: OPA
# treats `not f(x)` with x undefined as undefined (the rule fails), regorus as true.
has_auth_time if is_number(input.identity.auth_time)

fresh_enough(requirement) if object.get(requirement, "max_age", null) == null

# In whole nanoseconds: `now_ns / 1000000000` is rounded on regorus (a float)
# and exact on OPA, so the two disagreed one nanosecond past max_age.
fresh_enough(requirement) if {
	has_auth_time
	is_number(input.now_ns)
	is_number(requirement.max_age)
	age_ns := input.now_ns - (input.identity.auth_time * 1000000000)
	age_ns <= requirement.max_age * 1000000000
	age_ns >= -60000000000 # an auth_time in the future beyond clock skew is not trusted
}

# Cross-site request forgery. The session cookie is SameSite=Lax: another site's
# page can't have a browser send it with a POST, but a page on a sibling subdomain
# (a marketing site, a shop, a subdomain taken over) is the same *site*, and its
# auto-submitting form reaches the app as the user, with the gateway's assertion;
# apps behind the gateway trust it and often have no CSRF tokens of their own.
# The browser's Sec-Fetch-Site (no page can set or change it) says who made the
# request: a session's request whose method may change something is refused
# unless it says same-origin (the gateway's own pages) or none (the user), or its
# Origin is one of the app's allowed_origins: Go's net/http CrossOriginProtection
# rule, trusted origins included. same-site is refused as OWASP's CSRF cheat sheet
# advises unless every sibling subdomain is trusted (web.dev's resource isolation
# policy lets it through). No header, no refusal: browsers before Fetch Metadata
# and non-browser clients send none (web.dev, Go). A header sent twice arrives
# joined with "," (decision_input): no browser's, refused. A client certificate
# installed in a browser is presented with any page's request, another site's
# form POST too (TLS client authentication knows no SameSite), so a certificate
# is held to the same rule; a service's sends no Sec-Fetch-Site. A bearer token
# is never sent by a browser on a page's behalf.
# The allow path: a bearer request stops at the first line, a session's or a
# certificate's at the header (what the user and the gateway's pages send); the
# method only past it.
from_another_site if {
	browser_credentials[input.identity.method]
	site := input.attributes.request.http.headers["sec-fetch-site"]
	site != "same-origin"
	site != "none"
	not safe_method
	not allowed_origin
}

# A browser without Fetch Metadata (Safari before 16.4, Firefox before 90) still
# sends Origin with every POST, and Go's rule falls back to it: an Origin whose
# host is not the request's Host is another site's page ("null", a sandboxed
# frame's, included). No Origin either: not a browser's page, let through.
from_another_site if {
	browser_credentials[input.identity.method]
	not input.attributes.request.http.headers["sec-fetch-site"]
	origin_host(input.attributes.request.http.headers.origin) != input.attributes.request.http.host
	not safe_method
	not allowed_origin
}

# The host[:port] of an Origin (scheme://host[:port]), compared with the request's
# Host as Go compares them: the scheme is not the Host's to say. null for anything
# else ("null", a value sent twice). A comparison, not `origin := ...` and then
# `not same_host(origin)`: the compiled VM runs on past an assignment of an
# undefined value when nothing but a `not` uses it (gordon-to-regorus 0.13).
origin_host(origin) := parts[1] if {
	parts := split(origin, "://")
	count(parts) == 2
}

origin_host(origin) := null if count(split(origin, "://")) != 2

# The credentials a browser attaches by itself, and how a deny names them.
browser_credentials := {"session": "the session cookie", "mtls": "a client certificate"}

# RFC 9110's safe methods (9.2.1), in the case aiohttp's parser gives them (it
# refuses a method in lower case); TRACE never reaches the policy.
safe_method if input.attributes.request.http.method in {"GET", "HEAD", "OPTIONS", "TRACE"}

# The app's own front end on another host: its Origin, exactly as a browser sends
# it (scheme://host[:port], lower case, no default port, no path). "null" (a
# sandboxed frame, a data: URL: any site can make one) is never an allowed origin.
allowed_origin if {
	origin := input.attributes.request.http.headers.origin
	origin != "null"
	origin in app.allowed_origins
}

# Reasons, status and step-up: computed only for a deny (the decision's else).
reasons := [] if allow else := sort(deny_reasons)

# json.marshal, not %q: regorus' sprintf refuses %q for anything but a string.
deny_reasons contains sprintf("no app %s in the catalogue", [json.marshal(route_app)]) if {
	not app
}

# The route's app name as the request named it ("" when the route names none);
# input.route, not object.get(input, ...): the memo's check reads what it may.
default route_app := ""

route_app := input.route.app

deny_reasons contains "authentication required" if {
	app
	not authenticated
}

deny_reasons contains reason if {
	authenticated
	some reason in access_reasons
}

# Why an authenticated identity is denied.
access_reasons contains sprintf("requires membership in one of: %s", [concat(", ", sort(app.groups))]) if {
	not in_app_group
}

access_reasons contains sprintf("requires membership in one of: %s", [concat(", ", sort(override.groups))]) if {
	some override in matched_overrides
	override.groups # first: the compiled VM lets `groups := <undefined>` through
	groups := override.groups
	not member_of_one(groups)
}

access_reasons contains sprintf("requires MFA with one of: %s", [concat(", ", sort(requirement.amr))]) if {
	some requirement in method_unmet
}

access_reasons contains sprintf("requires a request from the app's own pages: the browser says a page on another site sent this one with %s (%s)", [browser_credentials[input.identity.method], another_site_evidence]) if {
	from_another_site
}

# Which header said so. json.marshal: the value is the client's, shown as it came.
# Two rules, not an else: the compiled VM leaves an else undefined when the first
# body's value is (gordon-to-regorus 0.13).
another_site_evidence := sprintf("Sec-Fetch-Site: %s", [json.marshal(site)]) if {
	site := input.attributes.request.http.headers["sec-fetch-site"]
}

another_site_evidence := sprintf("Origin: %s, no Sec-Fetch-Site", [json.marshal(origin)]) if {
	not input.attributes.request.http.headers["sec-fetch-site"]
	origin := input.attributes.request.http.headers.origin
}

access_reasons contains "new source address: a fresh phishing-resistant sign-in is needed from an address not used before" if {
	new_source_ip_mfa_applies
	app.new_source_ip_mfa in unmet_mfa
}

access_reasons contains message if {
	some requirement in stale
	has_auth_time
	is_number(input.now_ns)
	input.now_ns - (input.identity.auth_time * 1000000000) >= -60000000000
	age := round((input.now_ns / 1000000000) - input.identity.auth_time)
	# %v, not %d: regorus prints a negative number under %d with two minus signs.
	message := sprintf("requires sign-in within the last %v s; last sign-in was %v s ago", [requirement.max_age, age])
}

# An auth_time further ahead than clock skew allows (fresh_enough's -60 s): not a
# stale sign-in but the issuer's clock (or the token) to look at.
access_reasons contains message if {
	some requirement in stale
	has_auth_time
	is_number(input.now_ns)
	input.now_ns - (input.identity.auth_time * 1000000000) < -60000000000
	ahead := round(input.identity.auth_time - (input.now_ns / 1000000000))
	message := sprintf("requires sign-in within the last %v s; the session's auth_time is %v s in the future (more than the 60 s allowed for clock skew: check the issuer's clock)", [requirement.max_age, ahead])
}

access_reasons contains message if {
	some requirement in stale
	not has_auth_time
	message := sprintf("requires sign-in within the last %v s; the session has no auth_time", [requirement.max_age])
}

deny_status := 404 if not app
else := 401 if not authenticated
else := 403

http_status := 200 if allow else := deny_status

headers := {
	"x-portcullis-app": input.route.app,
	"x-portcullis-classification": app.classification,
} if allow
else := {}

# step_up: deny now, but a fresh sign-in with this acr/max_age would allow.
# Only when MFA is all that is missing: a new sign-in adds no group.
step_up := {"acr": step_up_acr, "max_age": step_up_max_age} if {
	authenticated
	not missing_group
	not from_another_site
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
