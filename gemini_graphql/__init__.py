"""gemini-graphql: a GraphQL backend for Gemini-style AI chat."""

__version__ = "0.1.0"
