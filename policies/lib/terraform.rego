# Reading the scanner's normalized Terraform document: values the scanner could
# not resolve, tags matched against the app catalogue, and references between
# resources. Every Terraform rule reads its input through these helpers so that
# none of them judges a value it could not see.
package portcullis.lib.terraform

import rego.v1

catalogue := data.portcullis.catalogue

# --- Unknown values --------------------------------------------------------

# path_string(["ingress", 0, "cidr_blocks"]) is "ingress.0.cidr_blocks", the
# form the scanner lists in resource.unknown.
path_string(path) := concat(".", [segment |
	some p in path
	segment := _segment(p)
])

_segment(p) := p if is_string(p)

_segment(p) := format_int(p, 10) if is_number(p)

_unknown_paths(r) := {p | some p in _list(object.get(r, "unknown", []))}

# is_unknown(r, path) holds when the scanner could not resolve the value at
# path or any value containing it ("ingress.0" covers "ingress.0.cidr_blocks").
# Prefixes are compared segment by segment: "tags.application" does not cover
# "tags.app".
is_unknown(r, path) if {
	count(object.get(r, "unknown", [])) > 0
	paths := _unknown_paths(r)
	some n in numbers.range(1, count(path))
	path_string(array.slice(path, 0, n)) in paths
}

# A map or list the scanner knows only part of (merge() or concat() with an
# unknown argument) is listed in resource.incomplete: config holds what is
# certain of it (keys with their values, elements at positions of their own),
# and it may hold more. The collection itself is unknown (value(r, path) is
# undefined, so nothing concludes from the whole of it); what config holds
# under it is known; anything else under it is unknown, as it may be among
# what the scanner can't name.
is_unknown(r, path) if {
	count(object.get(r, "incomplete", [])) > 0
	_incomplete_at(r, path)
}

_incomplete_paths(r) := {p | some p in _list(object.get(r, "incomplete", []))}

# is_incomplete(r, path): the collection at path holds more than config shows.
is_incomplete(r, path) if {
	count(object.get(r, "incomplete", [])) > 0
	path_string(path) in _incomplete_paths(r)
}

_incomplete_at(r, path) if path_string(path) in _incomplete_paths(r)

_incomplete_at(r, path) if {
	count(path) > 1
	paths := _incomplete_paths(r)
	some n in numbers.range(1, count(path) - 1)
	path_string(array.slice(path, 0, n)) in paths
	not _has_child(r, path, n)
}

# _has_child(r, path, n): config holds path[n] under the first n segments of path.
_has_child(r, path, n) if {
	c := object.get(config(r), array.slice(path, 0, n), null)
	is_object(c)
	some k, _ in c
	k == path[n]
}

_has_child(r, path, n) if {
	c := object.get(config(r), array.slice(path, 0, n), null)
	is_array(c)
	key := path[n]
	is_number(key)
	key >= 0
	key < count(c)
}

# unknown_at(r, paths): the first of paths whose value is unknown, as a
# dotted string, for a rule's not_judged set ({"resource", "path"}): what the
# rule needed to judge r and could not see.
unknown_at(r, paths) := path_string(p) if {
	unknown := [q | some q in paths; is_unknown(r, q)]
	p := unknown[0]
}

# has_unknown_within(r, path) also holds when anything beneath path is unknown
# (a dynamic block, one element of a list). Use it before concluding that a
# block is absent or that no element of a list matches.
has_unknown_within(r, path) if is_unknown(r, path)

has_unknown_within(r, path) if {
	prefix := concat("", [path_string(path), "."])
	some u in _unknown_paths(r)
	startswith(u, prefix)
}

has_unknown_within(r, path) if {
	count(object.get(r, "incomplete", [])) > 0
	prefix := concat("", [path_string(path), "."])
	some u in _incomplete_paths(r)
	startswith(u, prefix)
}

# has_unknown_anywhere(r): some value of r is unknown or incomplete.
has_unknown_anywhere(r) if count(object.get(r, "unknown", [])) > 0

has_unknown_anywhere(r) if count(object.get(r, "incomplete", [])) > 0

# --- Configured values -----------------------------------------------------
#
# Negate helpers (`not string_at(r, p)`), never a builtin over a value that may
# be undefined (`not is_string(value(r, p))`): OPA treats such a `not` as
# undefined, so the rule fails, where regorus treats it as true.

config(r) := c if {
	c := r.config
	is_object(c)
} else := {}

# value(r, path) is the configured value at path. It is undefined when the
# value is unknown or unset, so a rule body that uses it simply doesn't match.
value(r, path) := v if {
	v := object.get(config(r), path, null)
	v != null
	not is_unknown(r, path)
}

# value_or(r, path, fallback): the configured value, or fallback when unset.
# Callers check is_unknown first: an unknown value is not "unset".
value_or(r, path, fallback) := v if {
	v := value(r, path)
} else := fallback

# string_at(r, path): the configured value at path is a string.
string_at(r, path) if is_string(value(r, path))

# true_or(r, path, fallback) / false_or: the configured value, or fallback when
# unset, is true / false (a bool or its string spelling).
true_or(r, path, fallback) if is_true(value_or(r, path, fallback))

false_or(r, path, fallback) if is_false(value_or(r, path, fallback))

# certain_or(r, path, fallback): value_or, except that for a list or map that
# is incomplete it is what is certain of it (is_unknown(r, path) holds: check
# it before concluding from the whole, e.g. that no element matches).
certain_or(r, path, fallback) := v if {
	is_incomplete(r, path)
	v := object.get(config(r), path, fallback)
} else := value_or(r, path, fallback)

# blocks(r, path) is the nested blocks at path as a list of objects (a block
# the scanner emitted as a single object becomes a one-element list); of an
# incomplete list, those certainly in it (check has_unknown_within before
# concluding that a block is absent).
blocks(r, path) := [] if {
	# Most blocks a rule asks about are absent: answered without the helpers below.
	object.get(config(r), path, null) == null
} else := [b | some b in as_objects(certain_or(r, path, []))]

# block_paths(r, path): where each nested block at path is, in order, to read
# its values with the helpers above (value, is_unknown, targets) at
# array.concat(at, ["cidr_blocks"]), never at path + [i]. Terraform's JSON
# syntax writes a nested block as a list of objects or as one object
# ("ingress": {...}) and, without a provider schema, the scanner keeps that
# shape: a list's i-th block is at path + [i]; one object is at path itself
# (block 0). A block the scanner could not expand (a dynamic block over an
# unknown collection, a whole value that is unknown) has a path too, with
# every value under it unknown; so do the blocks of an incomplete list that
# the scanner can't name (path itself, after those it can).
block_paths(r, path) := array.concat([array.concat(path, [i]) | some i, _ in found], _unnamed_blocks(r, path)) if {
	found := object.get(config(r), path, null)
	is_array(found)
} else := [path] if {
	is_object(object.get(config(r), path, null))
} else := [path] if {
	is_unknown(r, path)
} else := []

_unnamed_blocks(r, path) := [path] if {
	is_incomplete(r, path)
} else := []

# as_objects(x): x as a list of objects, whether it arrived as a list of
# blocks or as one block; anything else is an empty list.
as_objects(x) := [b | some b in x; is_object(b)] if is_array(x)

as_objects(x) := [x] if is_object(x)

as_objects(x) := [] if {
	not is_array(x)
	not is_object(x)
}

# list_value(r, path): a list attribute (a single string becomes a one-element
# list); empty when unknown or unset; of an incomplete list, the elements
# certainly in it. Check elements with is_unknown too, and is_unknown(r, path)
# before concluding from the whole list (that no element, or every one, matches).
list_value(r, path) := _list(certain_or(r, path, []))

is_true(v) if v == true

is_true(v) if {
	is_string(v)
	lower(v) == "true"
}

is_false(v) if v == false

is_false(v) if {
	is_string(v)
	lower(v) == "false"
}

_list(x) := x if {
	is_array(x)
} else := [y | some y in x] if {
	is_set(x)
} else := [x] if {
	x != null
	not is_object(x)
} else := []

_object(x) := x if {
	is_object(x)
} else := {}

# --- The app catalogue -----------------------------------------------------

# apps_of(r): names of the catalogue apps whose terraform_tags r carries (in
# tags, or in tags_all, where provider default_tags land in a plan). A tag
# whose value is unknown never matches: such a resource is not treated as app
# infrastructure.
apps_of(r) := {name |
	_has_catalogue_tag(r)
	some name, app in _object(object.get(catalogue, "apps", {}))
	tagged_with(r, object.get(app, "terraform_tags", {}))
}

# _has_catalogue_tag(r): r has a tag (in tags or tags_all) under some key the
# catalogue's terraform_tags use: without one no app can match, and checking
# that once is much cheaper than trying every app.
_has_catalogue_tag(r) if {
	some field in ["tags", "tags_all"]
	some key in _catalogue_tag_keys
	object.get(config(r), [field, key], null) != null
}

_catalogue_tag_keys contains key if {
	some app in _object(object.get(catalogue, "apps", {}))
	some key, _ in _object(object.get(app, "terraform_tags", {}))
}

is_gateway(r) if tagged_with(r, object.get(catalogue, ["gateway", "terraform_tags"], {}))

# may_be_gateway(r): r's tags (or tags_all) are incomplete (merge() with an
# unknown argument) and every gateway tag is either the gateway's or unknown
# in them: the unknown part may make r the gateway, which the rules exempt, so
# they say it was not judged rather than find it. gateway_unknown_at(r) is
# the first such tag's dotted path ("tags.role"), for the not_judged entry.
may_be_gateway(r) if count(_gateway_unknown_paths(r)) > 0

gateway_unknown_at(r) := min(_gateway_unknown_paths(r))

# The not_judged reason of a rule whose entry is on another resource than r
# (a listener of r, a grant into r), where the path alone would not say whose
# tags are unknown.
gateway_unknown_reason(r) := sprintf(
	"it is unknown: %s may be the gateway's, as its tags merge a map the scanner can't see",
	[r.address],
)

_gateway_unknown_paths(r) := {path_string([field, key]) |
	want := object.get(catalogue, ["gateway", "terraform_tags"], {})
	is_object(want)
	count(want) > 0
	some field in ["tags", "tags_all"]
	is_incomplete(r, [field])
	every k, expected in want {
		_may_be(r, [field, k], expected)
	}
	some key, _ in want
	is_unknown(r, [field, key])
}

_may_be(r, path, expected) if value(r, path) == expected

_may_be(r, path, _) if is_unknown(r, path)

tagged_with(r, want) if {
	is_object(want)
	count(want) > 0
	some field in ["tags", "tags_all"]
	every key, expected in want {
		value(r, [field, key]) == expected
	}
}

classification(app) := object.get(catalogue, ["apps", app, "classification"], "unclassified")

# app_label(app) is how findings name an app: "app pos, pci".
app_label(app) := sprintf("app %s, %s", [app, classification(app)])

# gateway_tags_text is "role=portcullis-gateway", for remediation messages.
gateway_tags_text := concat(", ", sort([sprintf("%s=%v", [k, v]) |
	some k, v in _object(object.get(catalogue, ["gateway", "terraform_tags"], {}))
]))

# --- References between resources -----------------------------------------

# refs(r, key): the addresses referenced by attribute key or anything beneath
# it ("ingress" also yields what "ingress.0.security_groups" references).
refs(r, key) := {a |
	some k, addresses in _object(object.get(r, "refs", {}))
	_key_within(k, key)
	some a in _list(addresses)
	is_string(a)
}

_key_within(k, key) if k == key

_key_within(k, key) if startswith(k, concat("", [key, "."]))

# references_anything(r): r references some resource (in refs, or in the
# targets the scanner resolved), a cheap test before looking for one.
references_anything(r) if count(_object(object.get(r, "refs", {}))) > 0

references_anything(r) if count(_object(object.get(r, "targets", {}))) > 0

# resource_at[address]: the resource at address (addresses are unique in a
# document: the scanner refuses duplicate resource blocks, as Terraform does).
resource_at := {r.address: r | some r in input.resources}

# targets(r, key): the addresses of this document's resources that attribute
# key of r (or anything beneath it) references. The scanner resolves them
# once, linearly, into r.targets; a document without targets (a hand-written
# test input) is matched here, comparing r's references with every resource.
targets(r, key) := {a |
	some k, addresses in _object(r.targets)
	_key_within(k, key)
	some a in _list(addresses)
	is_string(a)
} if {
	_has_targets(r)
} else := {target.address |
	some a in refs(r, key)
	some target in input.resources
	same_resource(r, a, target.address)
}

# referenced(r, key, type): the resources of type that attribute key of r references.
referenced(r, key, type) := [target |
	some a in targets(r, key)
	target := resource_at[a]
	target.type == type
]

_has_targets(r) if is_object(r.targets)

# refers_to(r, key, target): attribute key of r references resource target
# (which need not be in the document when r has no resolved targets).
refers_to(r, key, target) if {
	_has_targets(r)
	target.address in targets(r, key)
}

refers_to(r, key, target) if {
	not _has_targets(r)
	some a in refs(r, key)
	same_resource(r, a, target.address)
}

# resolves(r, key): some address that key references is in this document.
resolves(r, key) if count(targets(r, key)) > 0

# same_resource(from, ref, address): reference ref, written in from's module,
# names the resource at address. A reference inside a module is relative to
# it; it may name an attribute ("aws_s3_bucket.b.id"); and plan addresses carry
# instance keys ("[0]") that an HCL reference may leave out, or the reverse.
same_resource(from, ref, address) if {
	some candidate in _qualified(from, ref)
	_address_match(candidate, address)
}

_qualified(from, ref) := {ref} | {q |
	m := object.get(from, "module", "")
	is_string(m)
	m != ""
	q := concat(".", [_module_path(m), ref])
}

_module_path(m) := m if startswith(m, "module.")

_module_path(m) := concat("", ["module.", m]) if not startswith(m, "module.")

_address_match(ref, address) if _prefix_match(ref, address)

# The reference names no instance: it may mean any instance of the resource.
_address_match(ref, address) if {
	_strip_keys(ref) == ref
	_prefix_match(ref, _strip_keys(address))
}

# The document has no instance keys (HCL) but the reference does.
_address_match(ref, address) if {
	_strip_keys(address) == address
	_prefix_match(_strip_keys(ref), address)
}

_prefix_match(ref, address) if ref == address

_prefix_match(ref, address) if startswith(ref, concat("", [address, "."]))

_strip_keys(address) := regex.replace(address, `\[[^\]]*\]`, "")

# --- S3 bucket-level resources ---------------------------------------------

# attached_to_bucket(att, bucket): att (aws_s3_bucket_logging, _acl, ...)
# belongs to bucket, by reference or by the literal bucket name.
attached_to_bucket(att, bucket) if refers_to(att, "bucket", bucket)

attached_to_bucket(att, bucket) if {
	name := value(att, ["bucket"])
	is_string(name)
	name == value(bucket, ["bucket"])
}

# may_be_attached_to_bucket also holds when the scanner cannot tell which
# bucket att belongs to: reporting the bucket as lacking att would be a guess.
may_be_attached_to_bucket(att, bucket) if attached_to_bucket(att, bucket)

may_be_attached_to_bucket(att, _) if {
	not string_at(att, ["bucket"])
	not resolves(att, "bucket")
}

may_be_attached_to_bucket(att, bucket) if {
	is_string(value(att, ["bucket"]))
	not resolves(att, "bucket")
	not string_at(bucket, ["bucket"])
}

# bucket_has(bucket, type): some resource of type is (or may be) attached,
# as may_be_attached_to_bucket says; answered from sets built once per
# document, so asking it of every bucket stays linear.
bucket_has(bucket, type) if [type, bucket.address] in _attached_by_reference

bucket_has(bucket, type) if {
	name := value(bucket, ["bucket"])
	is_string(name)
	[type, name] in _attached_by_name
}

bucket_has(_, type) if type in _attached_to_unknown_bucket

bucket_has(bucket, type) if {
	not string_at(bucket, ["bucket"])
	type in _attached_by_unresolved_name
}

_attached_by_reference contains [att.type, address] if {
	some att in input.resources
	some address in targets(att, "bucket")
}

_attached_by_name contains [att.type, name] if {
	some att in input.resources
	name := value(att, ["bucket"])
	is_string(name)
}

_attached_to_unknown_bucket contains att.type if {
	some att in input.resources
	not string_at(att, ["bucket"])
	not resolves(att, "bucket")
}

_attached_by_unresolved_name contains att.type if {
	some att in input.resources
	is_string(value(att, ["bucket"]))
	not resolves(att, "bucket")
}
