"""The Terraform scanner: HCL and plans into one document, the policy set over it, reports."""
