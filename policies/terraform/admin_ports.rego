# Baseline, for every security group: SSH and RDP are never open to the whole
# internet. Administration goes through the gateway or a bastion / SSM.
package portcullis.terraform.admin_ports

import rego.v1

# Rules of another package are imported by name: read through a package
# alias (network.world_ingress), regorus evaluates every rule of that package
# and copies them on each read, which cost seconds on large trees.
import data.portcullis.lib.network.unknown_cidr_ingress
import data.portcullis.lib.network.world_ingress

import data.portcullis.lib.network

metadata := {
	"id": "PC-TF-005",
	"title": "SSH and RDP must not be open to the internet",
	"severity": "high",
	"remediation": "Remove 0.0.0.0/0 and ::/0 from ingress on ports 22 and 3389 (and from all-protocol or wide port-range rules); reach hosts through AWS Systems Manager Session Manager or a bastion restricted to known CIDRs.",
}

# RDP also runs over UDP 3389; SSH is TCP only.
_admin_ports := [
	{"port": 22, "service": "SSH", "protocols": {"tcp"}},
	{"port": 3389, "service": "RDP", "protocols": {"tcp", "udp"}},
]

deny contains {"resource": grant.address, "message": msg} if {
	some grant in world_ingress
	some admin in _admin_ports
	network.reaches(grant, admin.protocols, admin.port)
	msg := sprintf(
		"%s opens %s (port %d) to %s%s via %s; restrict the source to known CIDRs or use Session Manager",
		[grant.address, admin.service, admin.port, grant.cidr, _where(grant), network.describe_ports(grant)],
	)
}

_where(grant) := sprintf(" in %s", [grant.where]) if grant.where != ""

_where(grant) := "" if grant.where == ""

# A grant open to the internet whose ports or protocol are unknown may open
# SSH or RDP: not judged, and said so.
not_judged contains {"resource": grant.address, "path": path} if {
	some grant in world_ingress
	not _reaches_admin(grant)
	path := grant.unknown_ports
	path != null
}

_reaches_admin(grant) if {
	some admin in _admin_ports
	network.reaches(grant, admin.protocols, admin.port)
}

# An ingress from a source CIDR the scanner could not resolve may open SSH or
# RDP to the internet, unless its ports and protocol are known and reach
# neither: not judged, and said so.
not_judged contains {"resource": grant.address, "path": grant.unknown_cidr} if {
	some grant in unknown_cidr_ingress
	_may_reach_admin(grant)
}

_may_reach_admin(grant) if _reaches_admin(grant)

_may_reach_admin(grant) if grant.unknown_ports != null
