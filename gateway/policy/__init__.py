"""Asking the policy: the decision input and call (decision), remembered allows
(memo), the live engine and its hot reload (reload), a candidate deciding beside
it (shadow, shadow_worker), and how two decisions differ (divergence)."""
