"""Webhooks: subscriptions, Standard Webhooks signing, and the at-least-once deliverer."""
