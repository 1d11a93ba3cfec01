"""Portcullis: zero-trust access gateway and Terraform scanner on one Rego policy set."""

__version__ = "0.1.0"
