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

_ingress_types := {"aws_security_group", "aws_security_group_rule", "aws_vpc_security_group_ingress_rule"}

_cidr_grants(r) := {grant |
	some i, _ in tf.blocks(r, ["ingress"])
	some field in ["cidr_blocks", "ipv6_cidr_blocks"]
	some j, cidr in tf.list_value(r, ["ingress", i, field])
	is_string(cidr)
	not tf.is_unknown(r, ["ingress", i, field, j])
	grant := {
		"address": r.address,
		"where": sprintf("ingress block %d", [i]),
		"unknown_ports": _unknown_ports(r, ["ingress", i]),
		"security_groups": {r.address},
		"cidr": cidr,
		"protocol": _protocol(r, ["ingress", i, "protocol"]),
		"from_port": _port(r, ["ingress", i, "from_port"]),
		"to_port": _port(r, ["ingress", i, "to_port"]),
	}
} if r.type == "aws_security_group"

_cidr_grants(r) := {grant |
	tf.value(r, ["type"]) == "ingress"
	some field in ["cidr_blocks", "ipv6_cidr_blocks"]
	some j, cidr in tf.list_value(r, [field])
	is_string(cidr)
	not tf.is_unknown(r, [field, j])
	grant := {
		"address": r.address,
		"where": "",
		"unknown_ports": _unknown_ports(r, []),
		"security_groups": attached_groups(r),
		"cidr": cidr,
		"protocol": _protocol(r, ["protocol"]),
		"from_port": _port(r, ["from_port"]),
		"to_port": _port(r, ["to_port"]),
	}
} if r.type == "aws_security_group_rule"

_cidr_grants(r) := {grant |
	some field in ["cidr_ipv4", "cidr_ipv6"]
	cidr := tf.value(r, [field])
	is_string(cidr)
	grant := {
		"address": r.address,
		"where": "",
		"unknown_ports": _unknown_ports(r, []),
		"security_groups": attached_groups(r),
		"cidr": cidr,
		"protocol": _protocol(r, ["ip_protocol"]),
		"from_port": _port(r, ["from_port"]),
		"to_port": _port(r, ["to_port"]),
	}
} if r.type == "aws_vpc_security_group_ingress_rule"

# group_ingress: every ingress grant from another security group, when both
# groups are in this document:
#   {"address": the resource that declares it, "where",
#    "security_group": the group it applies to, "source": the admitted group}
group_ingress contains grant if {
	some r in input.resources
	r.type == "aws_security_group"
	tf.references_anything(r)
	some i, _ in tf.blocks(r, ["ingress"])
	some source in _groups_referenced(r, sprintf("ingress.%d.security_groups", [i]))
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

_groups_referenced(r, key) := {sg.address | some sg in tf.referenced(r, key, "aws_security_group")}

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

_protocol(r, path) := _normalize_protocol(p) if {
	p := tf.value(r, path)
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
