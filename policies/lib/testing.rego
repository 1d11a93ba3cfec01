# Builders for the Terraform rule tests: a resource in the scanner's document
# shape (see DESIGN.md, "Terraform contract") with only what a test is about
# spelled out, so each test reads as the configuration it checks.
package portcullis.lib.testing

import rego.v1

# resource("aws_s3_bucket", "data", {...}) is aws_s3_bucket.data in the root
# module with every value known and no references.
resource(type, name, config) := {
	"address": concat(".", [type, name]),
	"type": type,
	"name": name,
	"module": "",
	"provider": "registry.terraform.io/hashicorp/aws",
	"file": "main.tf",
	"line": 1,
	"config": config,
	"unknown": [],
	"refs": {},
}

# resource_with(...,  {"unknown": [...], "refs": {...}}) overrides or adds
# top-level fields of the resource.
resource_with(type, name, config, extra) := object.union(resource(type, name, config), extra)

# document(resources) is a scanner document for resources parsed from HCL.
document(resources) := {"source": "hcl", "resources": resources}
