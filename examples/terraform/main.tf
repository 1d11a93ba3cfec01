# A small POS deployment for trying `portcullis scan`: the gateway's security
# group, and a POS backend and database with mistakes the policy set catches:
# the backend is open to the internet (PC-TF-001, critical), the pci database
# is not encrypted at rest (PC-TF-002, high) and no CloudTrail records it
# (PC-TF-008, medium).

variable "environment" {
  type    = string
  default = "staging"
}

locals {
  tags = { app = "pos", environment = var.environment }
}

resource "aws_security_group" "gateway" {
  name = "portcullis-gateway"
  tags = merge(local.tags, { role = "portcullis-gateway" })

  ingress {
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_security_group" "pos_backend" {
  name = "pos-backend-${var.environment}"
  tags = local.tags

  ingress {
    from_port       = 8443
    to_port         = 8443
    protocol        = "tcp"
    security_groups = [aws_security_group.gateway.id]
  }

  # Someone opened it "just for testing".
  ingress {
    from_port   = 8443
    to_port     = 8443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_db_instance" "pos" {
  identifier        = "pos-${var.environment}"
  engine            = "postgres"
  instance_class    = "db.t3.medium"
  allocated_storage = 20
  tags              = local.tags
}
