# Security group ingress in one shape, whichever of the three ways Terraform
# declares it (inline ingress blocks, aws_security_group_rule,
# aws_vpc_security_group_ingress_rule), so network rules are written once.
package portcullis.lib.network

import rego.v1

import data.portcullis.lib.terraform as tf

# cidr_ingress: every ingress grant from a CIDR whose value the scanner saw:
#   {"address": the resource that declares it,
#    "where": "ingress block 0" | "",
#    "unknown_ports": the dotted path of its protocol or port that is unknown
#                     ("ingress.0.from_port"), or null,
#    "security_groups": addresses of the security groups it applies to (empty
#                       when the group is not in this document),
#    "cidr", "protocol": "all"|"tcp"|"udp"|"icmp"|...|null (unknown),
#    "from_port", "to_port": numbers, or null when unknown}
cidr_ingress contains grant if {
	some r in input.resources
	r.type in _ingress_types
	some grant in _cidr_grants(r)
}

# world_ingress: the grants of cidr_ingress from the whole internet (a /0
# CIDR), the only ones the rules judge. A resource's grants are described only
# when its configuration holds "/0" at all, a cheap test that never misses one,
# so a tree of private CIDRs doesn't pay for describing each of its grants.
world_ingress contains grant if {
	some r in input.resources
	r.type in _ingress_types
	contains(json.marshal(tf.config(r)), "/0")
	some grant in _cidr_grants(r)
	is_world_cidr(grant.cidr)
}

_ingress_types := _group_types | {"aws_security_group_rule", "aws_vpc_security_group_ingress_rule"}

# The resources that are a security group. aws_default_security_group adopts a
# VPC's default group (which every instance launched without a group of its
# own joins) and declares its ingress inline, as aws_security_group does.
_group_types := {"aws_security_group", "aws_default_security_group"}

_cidr_grants(r) := {grant |
	some ingress in _ingresses(r)
	some field in ingress.cidr_fields
	path := array.concat(ingress.at, [field])
	some j, cidr in tf.list_value(r, path)
	is_string(cidr)
	not tf.is_unknown(r, array.concat(path, [j]))
	grant := _grant(r, ingress, cidr)
}

# unknown_cidr_ingress: every ingress from a source CIDR the scanner could not
# resolve (the list, or one element of it: a variable without a value, a
# template directive), which may be the whole internet: described as
# cidr_ingress describes a grant, with "cidr": null and
#   "unknown_cidr": the dotted path of its first unknown source
#                   ("ingress.0.cidr_blocks", "cidr_blocks.1", "cidr_ipv4").
# Rules that judge world_ingress say these were not judged.
unknown_cidr_ingress contains object.union(_grant(r, ingress, null), {"unknown_cidr": path}) if {
	some r in input.resources
	r.type in _ingress_types
	tf.has_unknown_anywhere(r)
	some ingress in _ingresses(r)
	path := tf.unknown_at(r, [p |
		some field in ingress.cidr_fields
		some p in _cidr_paths(r, array.concat(ingress.at, [field]))
	])
}

# _cidr_paths(r, path): the CIDR list at path, then each of its elements.
_cidr_paths(r, path) := array.concat([path], [array.concat(path, [j]) | some j, _ in tf.list_value(r, path)])

# _ingresses(r): each ingress r declares, before its sources are read: "at",
# the path its fields are under; "cidr_fields", those that hold source CIDRs
# (a list, or one CIDR); "where" and "security_groups" as in a grant.
_ingresses(r) := [ingress |
	some i, at in tf.block_paths(r, ["ingress"])
	ingress := {
		"at": at,
		"cidr_fields": ["cidr_blocks", "ipv6_cidr_blocks"],
		"where": sprintf("ingress block %d", [i]),
		"security_groups": {r.address},
	}
] if r.type in _group_types

_ingresses(r) := [{
	"at": [],
	"cidr_fields": ["cidr_blocks", "ipv6_cidr_blocks"],
	"where": "",
	"security_groups": attached_groups(r),
}] if {
	r.type == "aws_security_group_rule"
	tf.value(r, ["type"]) == "ingress"
}

_ingresses(r) := [{
	"at": [],
	"cidr_fields": ["cidr_ipv4", "cidr_ipv6"],
	"where": "",
	"security_groups": attached_groups(r),
}] if r.type == "aws_vpc_security_group_ingress_rule"

_grant(r, ingress, cidr) := {
	"address": r.address,
	"where": ingress.where,
	"unknown_ports": _unknown_ports(r, ingress.at),
	"security_groups": ingress.security_groups,
	"cidr": cidr,
	"protocol": _protocol(r, ingress.at),
	"from_port": _port(r, array.concat(ingress.at, ["from_port"])),
	"to_port": _port(r, array.concat(ingress.at, ["to_port"])),
}

# group_ingress: every ingress grant from another security group, when both
# groups are in this document:
#   {"address": the resource that declares it, "where",
#    "security_group": the group it applies to, "source": the admitted group}
group_ingress contains grant if {
	some r in input.resources
	r.type in _group_types
	tf.references_anything(r)
	some i, at in tf.block_paths(r, ["ingress"])
	some source in _groups_referenced(r, tf.path_string(array.concat(at, ["security_groups"])))
	grant := {"address": r.address, "where": sprintf("ingress block %d", [i]), "security_group": r.address, "source": source}
}

group_ingress contains grant if {
	some r in input.resources
	r.type == "aws_security_group_rule"
	tf.value(r, ["type"]) == "ingress"
	some source in _groups_referenced(r, "source_security_group_id")
	some sg in attached_groups(r)
	grant := {"address": r.address, "where": "", "security_group": sg, "source": source}
}

group_ingress contains grant if {
	some r in input.resources
	r.type == "aws_vpc_security_group_ingress_rule"
	some source in _groups_referenced(r, "referenced_security_group_id")
	some sg in attached_groups(r)
	grant := {"address": r.address, "where": "", "security_group": sg, "source": source}
}

_groups_referenced(r, key) := {sg.address |
	some type in _group_types
	some sg in tf.referenced(r, key, type)
}

# attached_groups(rule): the security groups in this document that a
# standalone rule's security_group_id references.
attached_groups(rule) := _groups_referenced(rule, "security_group_id")

# _unknown_ports(r, at): the dotted path of the protocol or port the scanner
# could not resolve in r at path prefix at, or null when all are known.
_unknown_ports(r, at) := path if {
	fields := ["protocol", "ip_protocol", "from_port", "to_port"]
	path := tf.unknown_at(r, [array.concat(at, [f]) | some f in fields])
} else := null

# is_world_cidr: the whole IPv4 or IPv6 internet (0.0.0.0/0, ::/0, and any
# other spelling of a /0).
is_world_cidr(cidr) if endswith(trim_space(cidr), "/0")

# reaches(grant, protocols, port): the grant admits port over one of
# protocols. A grant whose protocol or ports are unknown reaches nothing we
# can name.
reaches(grant, _, _) if grant.protocol == "all"

reaches(grant, protocols, port) if {
	grant.protocol in protocols
	is_number(grant.from_port)
	is_number(grant.to_port)
	grant.from_port <= port
	port <= grant.to_port
}

# describe_ports(grant): "port 443/tcp", "ports 0-65535/tcp", "all ports and
# protocols (protocol -1)".
describe_ports(grant) := "all ports and protocols (protocol -1)" if {
	grant.protocol == "all"
} else := sprintf("port %v/%s", [grant.from_port, grant.protocol]) if {
	is_string(grant.protocol)
	is_number(grant.from_port)
	grant.from_port == grant.to_port
} else := sprintf("ports %v-%v/%s", [grant.from_port, grant.to_port, grant.protocol]) if {
	is_string(grant.protocol)
	is_number(grant.from_port)
	is_number(grant.to_port)
} else := sprintf("protocol %s", [grant.protocol]) if {
	is_string(grant.protocol)
} else := "ports the scanner could not resolve"

# _protocol(r, at): the protocol of the ingress at path prefix at ("protocol",
# or "ip_protocol" on aws_vpc_security_group_ingress_rule), or null.
_protocol(r, at) := _normalize_protocol(p) if {
	p := tf.value(r, array.concat(at, ["protocol"]))
} else := _normalize_protocol(p) if {
	p := tf.value(r, array.concat(at, ["ip_protocol"]))
} else := null

_normalize_protocol(p) := name if {
	name := _protocol_names[lower(format_protocol(p))]
} else := lower(format_protocol(p))

# format_protocol: protocols arrive as names or numbers, as strings or not.
format_protocol(p) := p if is_string(p)

format_protocol(p) := format_int(p, 10) if is_number(p)

_protocol_names := {
	"-1": "all",
	"all": "all",
	"6": "tcp",
	"tcp": "tcp",
	"17": "udp",
	"udp": "udp",
	"1": "icmp",
	"icmp": "icmp",
	"58": "icmpv6",
	"icmpv6": "icmpv6",
}

_port(r, path) := p if {
	p := tf.value(r, path)
	is_number(p)
} else := to_number(trim_space(p)) if {
	p := tf.value(r, path)
	is_string(p)
	regex.match(`^-?[0-9]+$`, trim_space(p))
} else := null
