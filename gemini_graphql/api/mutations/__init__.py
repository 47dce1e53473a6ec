"""Mutation mixins, one per domain, combined into the schema's Mutation type."""
