"""Query mixins, one per domain, combined into the schema's Query type."""
