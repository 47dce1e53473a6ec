"""Subscription mixins, combined into the schema's Subscription type."""
