"""The GraphQL layer: thin resolvers over the domain services. Nothing below imports it."""
